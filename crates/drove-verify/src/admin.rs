//! The admin API as the drills see it: `GET /api/status` (the typed [`api::Status`] of
//! drove-api) read into a [`Status`], and the `POST` operations (scale, restart, drain,
//! undrain) with drove-api's request and answer types.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use drove_api as api;
use serde::de::DeserializeOwned;
use serde::Serialize;

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
    pub failures: u64,
    pub ejections: u64,
    pub weight: u64,
    pub backup: bool,
}

/// One instance, from status.
#[derive(Debug, Clone)]
pub(crate) struct Instance {
    pub id: String,
    pub service: Option<String>,
    pub pid: Option<i32>,
    pub state: api::InstanceState,
    /// Why it is not ready, as drove explains it.
    pub why: Option<String>,
}

/// The parts of `GET /api/status` the drills use, read from the typed document.
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
    /// Retries made so far.
    pub retries: u64,
    /// Failed connects to backends so far.
    pub connect_errors: u64,
    /// Backend tries that timed out so far.
    pub timeouts: u64,
    /// The settings that decide ejection and retries.
    pub settings: Option<api::BalancerSettings>,
    pub backends: Vec<Backend>,
    pub instances: Vec<Instance>,
}

impl Status {
    pub(crate) fn from_doc(v: &api::Status) -> Status {
        let b = v.balancer.as_ref();
        let backends = v
            .backends()
            .iter()
            .map(|x| Backend {
                id: x.id.clone(),
                enabled: x.enabled,
                healthy: x.healthy,
                requests: x.requests,
                failures: x.failures,
                ejections: x.ejections,
                weight: u64::from(x.weight).max(1),
                backup: x.backup,
            })
            .collect();
        let instances = v
            .instances
            .iter()
            .map(|x| Instance {
                id: x.id.clone(),
                service: x.service.clone(),
                pid: x.pid.map(|p| p as i32),
                state: x.state,
                why: x.why.clone(),
            })
            .collect();
        Status {
            has_balancer: b.is_some(),
            tls: b.is_some_and(|b| b.tls),
            listen: b.and_then(|b| b.listen).map(connectable),
            algorithm: b.map(|b| b.algorithm.clone()).unwrap_or_default(),
            service: b.and_then(|b| b.service.clone()),
            requests: b.map_or(0, |b| b.requests),
            responses: b.map_or(0, |b| b.responses.total()),
            retries: b.map_or(0, |b| b.retries),
            connect_errors: b.map_or(0, |b| b.connect_errors),
            timeouts: b.map_or(0, |b| b.timeouts),
            settings: b.map(|b| b.settings.clone()),
            backends,
            instances,
        }
    }

    /// The balanced service's instances run under this drove's supervisor (not static
    /// `backends`).
    pub fn supervised(&self) -> bool {
        self.service.is_some()
            && !self
                .instances
                .iter()
                .any(|i| i.state == api::InstanceState::Remote)
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
            && self
                .service_instances()
                .iter()
                .all(|i| i.state == api::InstanceState::Ready)
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

    /// The status document.
    pub async fn doc(&self) -> Result<api::Status, String> {
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
        serde_json::from_slice(&r.body).map_err(|e| {
            format!("admin API: GET /api/status did not answer a drove status document: {e}")
        })
    }

    pub async fn status(&self) -> Result<Status, String> {
        self.doc().await.map(|v| Status::from_doc(&v))
    }

    /// POSTs `body`; Ok(answer) on 2xx, Err(message) otherwise.
    pub async fn post<Req: Serialize, Ans: DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
    ) -> Result<Ans, String> {
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
        let body = serde_json::to_vec(body).map_err(|e| e.to_string())?;
        let r = client::request(self.addr, "POST", path, &headers, &body, timeout)
            .await
            .map_err(|e| format!("admin API: {e}"))?;
        if (200..300).contains(&r.status) {
            serde_json::from_slice(&r.body)
                .map_err(|e| format!("POST {path}: unexpected answer: {e}"))
        } else {
            let why = serde_json::from_slice::<api::ApiError>(&r.body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&r.body).into_owned());
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
        let body = serde_json::to_vec(&api::DrainRequest {
            instance: id.to_string(),
        })
        .unwrap_or_default();
        let _ = client::request_blocking(
            self.addr,
            "POST",
            "/api/undrain",
            &headers,
            &body,
            CALL_TIMEOUT,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(id: &str, healthy: bool, weight: u32, backup: bool) -> api::BackendRow {
        api::BackendRow {
            id: id.into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            enabled: true,
            healthy,
            probe_up: healthy,
            in_flight: 0,
            requests: 5,
            failures: 0,
            ejections: 0,
            weight,
            backup,
        }
    }

    fn instance(id: &str, service: &str, pid: u32, state: api::InstanceState) -> api::InstanceRow {
        let mut r = api::InstanceRow::new(id, Some(service.into()), state);
        r.pid = Some(pid);
        r
    }

    fn status(state3: api::InstanceState, healthy3: bool, service: Option<&str>) -> Status {
        let remote = state3 == api::InstanceState::Remote;
        let mut instances = vec![
            instance("web.1", "web", 10, api::InstanceState::Ready),
            instance("web.3", "web", 12, state3),
            instance("redis.1", "redis", 11, api::InstanceState::Ready),
        ];
        if remote {
            instances[1].service = None;
        }
        Status::from_doc(&api::Status {
            upgrades: Default::default(),
            version: "0".into(),
            pid: 1,
            uptime_s: 1.0,
            admin: "127.0.0.1:9900".parse().unwrap(),
            balancer: Some(api::BalancerStatus {
                listen: Some("0.0.0.0:8080".parse().unwrap()),
                tls: false,
                rps: None,
                errors_per_s: None,
                algorithm: "round_robin".into(),
                service: service.map(str::to_string),
                requests: 10,
                responses: api::Responses {
                    c2xx: 9,
                    c4xx: 1,
                    ..Default::default()
                },
                retries: 0,
                retry_budget_exhausted: 0,
                connect_errors: 0,
                timeouts: 0,
                no_backend: 0,
                rejected: 0,
                rate_limited: 0,
                active_connections: 0,
                active_tunnels: 0,
                settings: api::BalancerSettings {
                    health: None,
                    retry_attempts: 2,
                    per_try_timeout_s: None,
                    response_timeout_s: 60.0,
                    connect_timeout_s: 1.0,
                    passive_max_fails: 3,
                    passive_fail_timeout_s: 10.0,
                    max_ejected: 0.5,
                },
                backends: vec![
                    backend("web.1", true, 1, false),
                    backend("web.3", healthy3, 2, true),
                ],
            }),
            services: vec!["web".into()],
            instances,
        })
    }

    #[test]
    fn reads_status() {
        let st = status(api::InstanceState::Ready, true, Some("web"));
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
        assert!(!status(api::InstanceState::Starting, true, Some("web")).settled());
        assert!(!status(api::InstanceState::Ready, false, Some("web")).settled());
        assert_eq!(
            status(api::InstanceState::Ready, false, Some("web"))
                .serving()
                .len(),
            1
        );
    }

    #[test]
    fn static_backends_are_not_supervised() {
        let st = status(api::InstanceState::Remote, true, None);
        assert!(!st.supervised());
    }
}
