//! `drove export k8s|compose`: drove.toml as Kubernetes manifests or a Docker Compose
//! file with the same semantics where the orchestrator has them: replicas = `instances`,
//! the ready probe gates first traffic (a startup probe), the service's `health` probe
//! replaces a replica that keeps failing it (a liveness probe), the balancer's health
//! check (else the service's `health`) takes a replica out of rotation while it fails (a
//! readiness probe), stop signal and grace, restart policy, memory limit, dependencies.
//!
//! What does not carry over is said in comments in the output: an image must be named
//! (`--image web=registry/web:1.2`, default `SERVICE:latest`); every replica listens on
//! the same port in its own network namespace (the base port, 8080 for `port =
//! "auto"`); the orchestrator's load balancing replaces drove's algorithm, retries and
//! stickiness. Instance numbers: a Kubernetes service that uses `{instance}` becomes a
//! StatefulSet, whose pod ordinal gives `INSTANCE_ID` (ordinal + 1, as drove counts);
//! a Deployment's or a Compose service's replicas have no index, so there `INSTANCE_ID`
//! is not set and `{instance}` becomes the container's hostname.
//!
//! YAML is written by a small emitter over `serde_json::Value` (strings JSON-quoted,
//! which YAML reads the same) so that the output can carry explanatory comments and no
//! YAML library is needed for this one direction.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use drove_config::{
    Backends, CommandSpec, Config, PortSpec, ProbeConfig, ProbeKind, RestartPolicy, ServiceConfig,
};
use serde_json::{json, Map, Value};

/// The container port of a service (see the module doc), `None` for a worker.
fn container_port(s: &ServiceConfig) -> Option<u16> {
    match s.port {
        PortSpec::Base(p) => Some(p),
        PortSpec::Auto => Some(8080),
        PortSpec::None => None,
    }
}

fn uses_instance(t: &str) -> bool {
    drove_template::placeholders(t).contains(&"instance")
}

/// Whether the service needs its instance number (`{instance}` in its command or env):
/// exported to Kubernetes as a StatefulSet, whose pods are numbered.
fn needs_index(s: &ServiceConfig) -> bool {
    let in_command = match &s.command {
        CommandSpec::Shell(c) => uses_instance(c),
        CommandSpec::Argv(v) => v.iter().any(|a| uses_instance(a)),
    };
    in_command || s.env.iter().any(|(_, v)| uses_instance(v))
}

/// Shell that sets `INSTANCE_ID` (and `DROVE_INSTANCE`, and the env values that use
/// `{instance}`) from a StatefulSet pod's ordinal (`web-0` → 1), then runs the command.
fn ordinal_prelude(s: &ServiceConfig) -> String {
    let port = container_port(s).map(|p| p.to_string()).unwrap_or_default();
    let values = [("port", port.as_str()), ("instance", "${INSTANCE_ID}")];
    let mut out = format!(
        "INSTANCE_ID=$(( ${{HOSTNAME##*-}} + 1 )); export INSTANCE_ID DROVE_INSTANCE=\"{}.$INSTANCE_ID\"",
        s.name
    );
    for (k, v) in s.env.iter().filter(|(_, v)| uses_instance(v)) {
        let v = drove_template::render(v, &values)
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('`', "\\`");
        let _ = write!(out, " {k}=\"{v}\"");
    }
    out.push_str("; ");
    out
}

/// The command as argv for a container: placeholders rendered. `{instance}` becomes
/// `${INSTANCE_ID}` after [`ordinal_prelude`] with `indexed` (a StatefulSet), else the
/// container's `${HOSTNAME}` (no replica index); either needs a shell.
fn container_command(s: &ServiceConfig, indexed: bool) -> Vec<String> {
    let port = container_port(s).map(|p| p.to_string()).unwrap_or_default();
    let instance = if indexed {
        "${INSTANCE_ID}"
    } else {
        "${HOSTNAME}"
    };
    let values = [
        ("port", port.as_str()),
        ("drove", "drove"),
        ("instance", instance),
    ];
    let prelude = if indexed {
        ordinal_prelude(s)
    } else {
        String::new()
    };
    match &s.command {
        CommandSpec::Shell(c) => vec![
            "sh".into(),
            "-c".into(),
            format!("{prelude}{}", drove_template::render(c, &values)),
        ],
        CommandSpec::Argv(v) if indexed || v.iter().any(|a| uses_instance(a)) => {
            let line: Vec<String> = v
                .iter()
                .map(|a| {
                    let a = drove_template::render(a, &values);
                    // Double quotes keep ${HOSTNAME} expanding; escape what they would not.
                    let escaped = a
                        .replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('`', "\\`");
                    format!("\"{escaped}\"")
                })
                .collect();
            vec![
                "sh".into(),
                "-c".into(),
                format!("{prelude}exec {}", line.join(" ")),
            ]
        }
        CommandSpec::Argv(v) => v
            .iter()
            .map(|a| drove_template::render(a, &values))
            .collect(),
    }
}

/// The environment drove gives an instance, as far as it means something in a replica
/// (with `indexed`, values that use `{instance}` are set by [`ordinal_prelude`]).
fn container_env(s: &ServiceConfig, indexed: bool) -> BTreeMap<String, String> {
    let port = container_port(s).map(|p| p.to_string()).unwrap_or_default();
    let values = [("port", port.as_str()), ("instance", "")];
    let mut env: BTreeMap<String, String> = s
        .env
        .iter()
        .filter(|(_, v)| !(indexed && uses_instance(v)))
        .map(|(k, v)| (k.clone(), drove_template::render(v, &values)))
        .collect();
    if let Some(p) = container_port(s) {
        env.insert("PORT".into(), p.to_string());
    }
    env.insert("DROVE_SERVICE".into(), s.name.clone());
    env
}

fn secs(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

/// The probe the orchestrator runs for readiness (in rotation or not): the balancer's
/// active check when it balances this service (as drove does; it defaults to the
/// service's `health`), else the service's `health`, else the ready probe.
fn readiness<'a>(s: &'a ServiceConfig, c: &'a Config) -> Option<&'a ProbeConfig> {
    c.balancer
        .as_ref()
        .and_then(|b| match &b.backends {
            Backends::Service(name) if *name == s.name => b.health.as_ref(),
            _ => None,
        })
        .or(s.health.as_ref())
        .or(s.ready.as_ref())
}

/// Which Kubernetes probe a drove probe becomes.
#[derive(Clone, Copy, PartialEq)]
enum K8sProbe {
    /// The ready probe: given up on (restarted) after `start_timeout`.
    Startup,
    /// In rotation while it passes (`rise`, `fall`).
    Readiness,
    /// The service's `health`: restarted after `fall` failures, as drove replaces it.
    Liveness,
}

/// A Kubernetes probe handler.
fn k8s_handler(p: &ProbeConfig, port: Option<u16>) -> Value {
    match &p.kind {
        ProbeKind::Http { path } => {
            json!({"httpGet": {"path": path, "port": port.unwrap_or(8080)}})
        }
        ProbeKind::Tcp { addr: None } => json!({"tcpSocket": {"port": port.unwrap_or(8080)}}),
        ProbeKind::Tcp { addr: Some(a) } => json!({"exec": {"command": [
            "sh", "-c", format!("nc -z {} {}", a.ip(), a.port())
        ]}}),
        ProbeKind::Command { cmd } => json!({"exec": {"command": ["sh", "-c", cmd]}}),
    }
}

fn k8s_probe(p: &ProbeConfig, port: Option<u16>, kind: K8sProbe) -> Value {
    let mut v = k8s_handler(p, port);
    let o = v.as_object_mut().expect("an object");
    o.insert("periodSeconds".into(), json!(secs(p.interval)));
    o.insert("timeoutSeconds".into(), json!(secs(p.timeout)));
    match kind {
        K8sProbe::Startup => {
            // Given up on (restarted) after `start_timeout`, like drove's ready probe.
            let tries = (p.start_timeout.as_secs_f64() / p.interval.as_secs_f64().max(1.0)).ceil();
            o.insert("failureThreshold".into(), json!((tries as u64).max(1)));
        }
        K8sProbe::Readiness => {
            o.insert("successThreshold".into(), json!(p.rise.max(1)));
            o.insert("failureThreshold".into(), json!(p.fall.max(1)));
        }
        // Kubernetes requires successThreshold 1 for liveness probes.
        K8sProbe::Liveness => {
            o.insert("failureThreshold".into(), json!(p.fall.max(1)));
        }
    }
    v
}

fn image_of(s: &ServiceConfig, images: &BTreeMap<String, String>) -> String {
    images
        .get(&s.name)
        .cloned()
        .unwrap_or_else(|| format!("{}:latest", s.name))
}

/// Kubernetes manifests: a Deployment per service (a StatefulSet with its headless
/// Service for one that uses `{instance}`), a Service for the balanced one.
pub fn k8s(c: &Config, images: &BTreeMap<String, String>) -> String {
    let mut docs: Vec<(String, Value)> = Vec::new();
    for s in &c.services {
        let port = container_port(s);
        let indexed = needs_index(s);
        let mut container = Map::new();
        container.insert("name".into(), json!(s.name));
        container.insert("image".into(), json!(image_of(s, images)));
        container.insert("command".into(), json!(container_command(s, indexed)));
        let env: Vec<Value> = container_env(s, indexed)
            .into_iter()
            .map(|(k, v)| json!({"name": k, "value": v}))
            .collect();
        container.insert("env".into(), json!(env));
        if let Some(p) = port {
            container.insert(
                "ports".into(),
                json!([{"containerPort": p, "name": "http"}]),
            );
        }
        if let Some(r) = &s.ready {
            container.insert("startupProbe".into(), k8s_probe(r, port, K8sProbe::Startup));
        }
        if let Some(h) = readiness(s, c) {
            container.insert(
                "readinessProbe".into(),
                k8s_probe(h, port, K8sProbe::Readiness),
            );
        }
        if let Some(h) = &s.health {
            container.insert(
                "livenessProbe".into(),
                k8s_probe(h, port, K8sProbe::Liveness),
            );
        }
        if let Some(m) = s.max_memory {
            container.insert(
                "resources".into(),
                json!({"limits": {"memory": m.to_string()}}),
            );
        }
        let mut pod = Map::new();
        pod.insert(
            "containers".into(),
            Value::Array(vec![Value::Object(container)]),
        );
        pod.insert(
            "terminationGracePeriodSeconds".into(),
            json!(secs(s.stop.grace)),
        );
        pod.insert(
            "restartPolicy".into(),
            // A Deployment's pods always restart; `never`/`on-failure` services are jobs
            // in Kubernetes terms (see the comment above the Deployment).
            json!("Always"),
        );
        let labels = json!({"app.kubernetes.io/name": s.name, "app.kubernetes.io/managed-by": "drove-export"});
        let mut spec = json!({
            "replicas": s.instances,
            "selector": {"matchLabels": {"app.kubernetes.io/name": s.name}},
            "template": {"metadata": {"labels": labels}, "spec": Value::Object(pod)},
        });
        let kind = if indexed {
            // Pods web-0..web-N-1, all started at once as drove does (not one by one).
            let headless = format!("{}-headless", s.name);
            spec["serviceName"] = json!(headless);
            spec["podManagementPolicy"] = json!("Parallel");
            let mut hspec = json!({
                "clusterIP": "None",
                "selector": {"app.kubernetes.io/name": s.name},
            });
            if let Some(p) = port {
                hspec["ports"] = json!([{"name": "http", "port": p, "targetPort": p}]);
            }
            docs.push((
                format!(
                    "services.{}: the StatefulSet's governing headless Service (pod DNS names)",
                    s.name
                ),
                json!({
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": headless, "labels": {"app.kubernetes.io/managed-by": "drove-export"}},
                    "spec": hspec,
                }),
            ));
            "StatefulSet"
        } else {
            "Deployment"
        };
        let workload = json!({
            "apiVersion": "apps/v1",
            "kind": kind,
            "metadata": {"name": s.name, "labels": labels},
            "spec": spec,
        });
        let mut notes = format!(
            "services.{}: {} instance(s); stop = SIG{} then {}s",
            s.name,
            s.instances,
            s.stop.signal.name(),
            secs(s.stop.grace)
        );
        if indexed {
            notes.push_str(
                &format!("\n# uses {{instance}}: a StatefulSet, INSTANCE_ID = pod ordinal + 1 ({}-0 is 1), as drove numbers instances", s.name),
            );
        } else {
            notes.push_str(
                "\n# INSTANCE_ID is not set: a Deployment's replicas have no index (a service that uses {instance} is exported as a StatefulSet)",
            );
        }
        if s.health.is_some() {
            notes.push_str(
                "\n# health -> livenessProbe: Kubernetes restarts the container after `fall` failures (drove replaces the instance, new one ready first)",
            );
        }
        if s.stop.signal.name() != "TERM" {
            let _ = write!(
                notes,
                " (Kubernetes sends SIGTERM: make the image's STOPSIGNAL {}",
                s.stop.signal.name()
            );
            notes.push(')');
        }
        if s.restart.policy != RestartPolicy::Always {
            notes.push_str(
                "\n# restart policy is not `always`: consider a Job instead of a Deployment",
            );
        }
        if s.max_memory.is_some() {
            notes.push_str("\n# max_memory -> memory limit: Kubernetes OOM-kills instead of drove's drained restart");
        }
        if !s.depends_on.is_empty() {
            let _ = write!(
                notes,
                "\n# depends_on {:?}: Kubernetes has no start order; the startup probe and retries must cover it",
                s.depends_on
            );
        }
        docs.push((notes, workload));
    }
    if let Some(b) = &c.balancer {
        if let Backends::Service(name) = &b.backends {
            let target = c.service(name).and_then(container_port).unwrap_or(8080);
            let mut spec = json!({
                "selector": {"app.kubernetes.io/name": name},
                "ports": [{"name": "http", "port": b.listen.port(), "targetPort": target}],
            });
            let mut notes = format!(
                "[balancer]: kube-proxy spreads connections instead of drove's {} (no retries, no passive ejection)",
                b.algorithm.name()
            );
            if b.sticky.is_some() {
                spec["sessionAffinity"] = json!("ClientIP");
                notes.push_str("\n# sticky cookie -> sessionAffinity: ClientIP (per client address, not per cookie)");
            }
            docs.push((
                notes,
                json!({
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "drove-export"}},
                    "spec": spec,
                }),
            ));
        }
    }
    let mut out = String::from(
        "# Kubernetes manifests from drove.toml (`drove export k8s`).\n\
         # Images: --image SERVICE=IMAGE (default SERVICE:latest). A service that uses\n\
         # {instance} is a StatefulSet (INSTANCE_ID = pod ordinal + 1); others are Deployments,\n\
         # whose replicas have no index. Services reach each other through Kubernetes\n\
         # Services, not 127.0.0.1: edit such addresses. `kubectl apply -f` it.\n",
    );
    for (notes, doc) in docs {
        out.push_str("---\n# ");
        out.push_str(&notes);
        out.push('\n');
        yaml(&mut out, &doc, 0);
    }
    out
}

/// A Docker Compose file with one service per drove service.
pub fn compose(c: &Config, images: &BTreeMap<String, String>) -> String {
    let mut services = Map::new();
    let mut notes = Vec::new();
    for s in &c.services {
        let port = container_port(s);
        let mut svc = Map::new();
        svc.insert("image".into(), json!(image_of(s, images)));
        svc.insert("command".into(), json!(container_command(s, false)));
        svc.insert("environment".into(), json!(container_env(s, false)));
        let mut deploy = json!({"replicas": s.instances});
        if let Some(m) = s.max_memory {
            deploy["resources"] = json!({"limits": {"memory": format!("{}b", m)}});
        }
        svc.insert("deploy".into(), deploy);
        svc.insert(
            "restart".into(),
            json!(match s.restart.policy {
                RestartPolicy::Always => "always",
                RestartPolicy::OnFailure => "on-failure",
                RestartPolicy::Never => "no",
            }),
        );
        svc.insert(
            "stop_signal".into(),
            json!(format!("SIG{}", s.stop.signal.name())),
        );
        svc.insert(
            "stop_grace_period".into(),
            json!(format!("{}s", secs(s.stop.grace))),
        );
        if let Some(p) = port {
            svc.insert("expose".into(), json!([p.to_string()]));
        }
        if let Some(h) = readiness(s, c) {
            let test = match &h.kind {
                ProbeKind::Http { path } => format!(
                    "wget -q -O /dev/null http://127.0.0.1:{}{path} || curl -fsS -o /dev/null http://127.0.0.1:{}{path}",
                    port.unwrap_or(8080),
                    port.unwrap_or(8080)
                ),
                ProbeKind::Tcp { addr: None } => format!("nc -z 127.0.0.1 {}", port.unwrap_or(8080)),
                ProbeKind::Tcp { addr: Some(a) } => format!("nc -z {} {}", a.ip(), a.port()),
                ProbeKind::Command { cmd } => cmd.clone(),
            };
            let start = s.ready.as_ref().map_or(Duration::ZERO, |r| r.start_timeout);
            svc.insert(
                "healthcheck".into(),
                json!({
                    "test": ["CMD-SHELL", test],
                    "interval": format!("{}s", secs(h.interval)),
                    "timeout": format!("{}s", secs(h.timeout)),
                    "retries": h.fall.max(1),
                    "start_period": format!("{}s", start.as_secs()),
                }),
            );
        }
        if !s.depends_on.is_empty() {
            let deps: Map<String, Value> = s
                .depends_on
                .iter()
                .map(|d| {
                    let healthy = c.service(d).is_some_and(|ds| readiness(ds, c).is_some());
                    let cond = if healthy {
                        "service_healthy"
                    } else {
                        "service_started"
                    };
                    (d.clone(), json!({"condition": cond}))
                })
                .collect();
            svc.insert("depends_on".into(), Value::Object(deps));
        }
        services.insert(s.name.clone(), Value::Object(svc));
    }
    if let Some(b) = &c.balancer {
        if let Backends::Service(name) = &b.backends {
            notes.push(format!(
                "# [balancer] on {} for `{name}`: Compose has no load balancer for replicas (other\n\
                 # containers reach them as `{name}` by DNS round robin). Put one in front, or publish\n\
                 # a single replica's port.",
                b.listen
            ));
        }
    }
    let mut out = String::from(
        "# Docker Compose file from drove.toml (`drove export compose`).\n\
         # Images: --image SERVICE=IMAGE (default SERVICE:latest). Health checks run wget or\n\
         # curl (or nc) inside the container: the image must have one; a failing one marks\n\
         # the container unhealthy but Docker does not replace it (drove does). Replicas have\n\
         # no index: INSTANCE_ID is not set and {instance} is the container's hostname.\n\
         # Services reach each other by name (redis:6379), not 127.0.0.1: edit such\n\
         # addresses in commands and env.\n",
    );
    for n in notes {
        out.push_str(&n);
        out.push('\n');
    }
    yaml(&mut out, &json!({ "services": services }), 0);
    out
}

/// Block-style YAML for `v` at `indent` (an object or array at the top).
fn yaml(out: &mut String, v: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let _ = write!(out, "{pad}{}:", key(k));
                block_value(out, v, indent);
            }
        }
        Value::Array(a) => {
            for v in a {
                let _ = write!(out, "{pad}-");
                match v {
                    Value::Object(m) if !m.is_empty() => {
                        // The first key on the dash's line, the rest aligned under it.
                        let mut inner = String::new();
                        yaml(&mut inner, v, indent + 2);
                        out.push(' ');
                        out.push_str(inner.trim_start());
                    }
                    _ => block_value(out, v, indent),
                }
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{}", scalar(other));
        }
    }
}

fn block_value(out: &mut String, v: &Value, indent: usize) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            yaml(out, v, indent + 2);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            yaml(out, v, indent + 2);
        }
        Value::Object(_) => out.push_str(" {}\n"),
        Value::Array(_) => out.push_str(" []\n"),
        scalar_value => {
            let _ = writeln!(out, " {}", scalar(scalar_value));
        }
    }
}

/// A mapping key: plain when YAML reads it back as the same string, else quoted.
fn key(k: &str) -> String {
    const SPECIAL: &[&str] = &["y", "n", "yes", "no", "on", "off", "true", "false", "null"];
    let plain = k
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-'))
        && !SPECIAL.contains(&k.to_ascii_lowercase().as_str());
    if plain {
        k.to_string()
    } else {
        scalar(&Value::String(k.to_string()))
    }
}

/// A scalar: numbers and booleans bare, strings JSON-quoted (a valid YAML double-quoted
/// scalar, so `"on"`, `"8080"` or `"${HOSTNAME}"` stay strings).
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => serde_json::to_string(s).expect("a string serialises"),
        other => other.to_string(),
    }
}
