//! The admin API as the drills see it: `GET /api/status` read into a [`Status`], and the
//! `POST` operations (scale, restart, drain, undrain).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde_json::{json, Value};

use crate::client;

/// Admin calls answer at once, except a rolling restart or a scale (which wait for new
/// instances to become ready and old ones to drain).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Long operations get this long: a rollout of a few slow-starting instances.
const LONG_CALL_TIMEOUT: Duration = Duration::from_secs(180);

/// Where the admin API is, and its token.
#[derive(Debug, Clone)]
pub(crate) struct Admin {
    pub addr: SocketAddr,
    pub token: Option<String>,
}

/// One backend of the balancer, from status.
#[derive(Debug, Clone)]
pub(crate) struct Backend {
    pub id: String,
    pub enabled: bool,
    pub healthy: bool,
    pub requests: u64,
    pub weight: u64,
    pub backup: bool,
}

/// One instance, from status.
#[derive(Debug, Clone)]
pub(crate) struct Instance {
    pub id: String,
    pub service: Option<String>,
    pub pid: Option<i32>,
    pub state: String,
}

/// The parts of `GET /api/status` the drills use.
#[derive(Debug, Clone)]
pub(crate) struct Status {
    /// Whether there is a `[balancer]` at all.
    pub has_balancer: bool,
    /// The balancer terminates TLS (the drills speak plain HTTP).
    pub tls: bool,
    pub listen: Option<SocketAddr>,
    pub algorithm: String,
    /// The balanced service; `None` for static backends.
    pub service: Option<String>,
    pub requests: u64,
    /// Responses of every status class.
    pub responses: u64,
    pub backends: Vec<Backend>,
    pub instances: Vec<Instance>,
}

impl Status {
    fn parse(v: &Value) -> Status {
        let b = &v["balancer"];
        let s = |v: &Value| v.as_str().map(str::to_string);
        let backends = b["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| Backend {
                id: s(&x["id"]).unwrap_or_default(),
                enabled: x["enabled"] == true,
                healthy: x["healthy"] == true,
                requests: x["requests"].as_u64().unwrap_or(0),
                weight: x["weight"].as_u64().unwrap_or(1).max(1),
                backup: x["backup"] == true,
            })
            .collect();
        let instances = v["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| Instance {
                id: s(&x["id"]).unwrap_or_default(),
                service: s(&x["service"]),
                pid: x["pid"].as_i64().map(|p| p as i32),
                state: s(&x["state"]).unwrap_or_default(),
            })
            .collect();
        Status {
            has_balancer: b.is_object(),
            tls: b["tls"] == true,
            listen: b["listen"]
                .as_str()
                .and_then(|a| a.parse().ok())
                .map(connectable),
            algorithm: s(&b["algorithm"]).unwrap_or_default(),
            service: s(&b["service"]),
            requests: b["requests"].as_u64().unwrap_or(0),
            responses: b["responses"]
                .as_object()
                .map_or(0, |m| m.values().filter_map(Value::as_u64).sum()),
            backends,
            instances,
        }
    }

    /// The balanced service's instances run under this drove's supervisor (not static
    /// `backends`).
    pub fn supervised(&self) -> bool {
        self.service.is_some() && !self.instances.iter().any(|i| i.state == "remote")
    }

    /// Instances of the balanced service.
    pub fn service_instances(&self) -> Vec<&Instance> {
        self.instances
            .iter()
            .filter(|i| i.service.is_some() && i.service == self.service)
            .collect()
    }

    /// Backends in rotation and healthy (backups included).
    pub fn serving(&self) -> Vec<&Backend> {
        self.backends
            .iter()
            .filter(|b| b.enabled && b.healthy)
            .collect()
    }

    pub fn backend(&self, id: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.id == id)
    }

    pub fn instance(&self, id: &str) -> Option<&Instance> {
        self.instances.iter().find(|i| i.id == id)
    }

    /// Every instance of the service is ready, and every backend is enabled and healthy.
    pub fn settled(&self) -> bool {
        !self.backends.is_empty()
            && self.backends.iter().all(|b| b.enabled && b.healthy)
            && self.service_instances().iter().all(|i| i.state == "ready")
            && (!self.supervised() || self.service_instances().len() == self.backends.len())
    }
}

/// A wildcard listen address (`0.0.0.0:8080`) is reached on loopback.
pub(crate) fn connectable(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), a.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), a.port())
        }
        _ => a,
    }
}

impl Admin {
    fn auth(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {t}"))
    }

    /// The raw status document.
    pub async fn status_json(&self) -> Result<Value, String> {
        let auth = self.auth();
        let mut headers = vec![("Accept", "application/json")];
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        let r = client::request(self.addr, "GET", "/api/status", &headers, b"", CALL_TIMEOUT)
            .await
            .map_err(|e| format!("admin API: {e}"))?;
        if r.status != 200 {
            return Err(format!(
                "admin API: GET /api/status answered {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
        }
        match r.json() {
            Value::Null => Err("admin API: GET /api/status did not answer JSON".into()),
            v => Ok(v),
        }
    }

    pub async fn status(&self) -> Result<Status, String> {
        self.status_json().await.map(|v| Status::parse(&v))
    }

    /// POSTs a JSON body; Ok(answer) on 2xx, Err(message) otherwise.
    pub async fn post(&self, path: &str, body: Value) -> Result<Value, String> {
        let auth = self.auth();
        let mut headers = vec![
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
        ];
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        let timeout = if path.ends_with("/restart") || path.ends_with("/scale") {
            LONG_CALL_TIMEOUT
        } else {
            CALL_TIMEOUT
        };
        let r = client::request(
            self.addr,
            "POST",
            path,
            &headers,
            body.to_string().as_bytes(),
            timeout,
        )
        .await
        .map_err(|e| format!("admin API: {e}"))?;
        let v = r.json();
        if (200..300).contains(&r.status) {
            Ok(v)
        } else {
            let why = v["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&r.body).into_owned());
            Err(format!("POST {path} answered {}: {why}", r.status))
        }
    }

    /// Undrain without a runtime (cleanup from `Drop`).
    pub fn undrain_blocking(&self, id: &str) {
        let auth = self.auth();
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        let body = json!({ "instance": id }).to_string();
        let _ = client::request_blocking(
            self.addr,
            "POST",
            "/api/undrain",
            &headers,
            body.as_bytes(),
            CALL_TIMEOUT,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state3: &str, healthy3: bool, service: Option<&str>) -> Status {
        Status::parse(&json!({
            "balancer": {
                "listen": "0.0.0.0:8080", "algorithm": "round_robin", "service": service,
                "requests": 10, "responses": {"1xx": 0, "2xx": 9, "3xx": 0, "4xx": 1, "5xx": 0},
                "backends": [
                    {"id": "web.1", "enabled": true, "healthy": true, "requests": 5, "weight": 1, "backup": false},
                    {"id": "web.3", "enabled": true, "healthy": healthy3, "requests": 5, "weight": 2, "backup": true},
                ],
            },
            "instances": [
                {"id": "web.1", "service": "web", "pid": 10, "state": "ready"},
                {"id": "web.3", "service": "web", "pid": 12, "state": state3},
                {"id": "redis.1", "service": "redis", "pid": 11, "state": "ready"},
            ],
        }))
    }

    #[test]
    fn reads_status() {
        let st = status("ready", true, Some("web"));
        assert!(st.has_balancer && st.supervised() && st.settled());
        assert_eq!(st.listen, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!((st.requests, st.responses), (10, 10));
        assert_eq!(st.service_instances().len(), 2, "redis is not balanced");
        let b = st.backend("web.3").unwrap();
        assert_eq!((b.weight, b.backup), (2, true));
        assert_eq!(st.instance("web.3").unwrap().pid, Some(12));
    }

    #[test]
    fn settled_needs_every_instance_ready_and_healthy() {
        assert!(!status("starting", true, Some("web")).settled());
        assert!(!status("ready", false, Some("web")).settled());
        assert_eq!(status("ready", false, Some("web")).serving().len(), 1);
    }

    #[test]
    fn static_backends_are_not_supervised() {
        let st = status("remote", true, None);
        assert!(!st.supervised());
        let none = Status::parse(&json!({"balancer": null, "instances": []}));
        assert!(!none.has_balancer && !none.settled());
    }
}
