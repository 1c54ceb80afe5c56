//! `drove export k8s|compose`: drove.toml as Kubernetes manifests or a Docker Compose
//! file with the same semantics where the orchestrator has them: replicas = `instances`,
//! the ready probe gates first traffic (a startup probe), the service's `health` probe
//! replaces a replica that keeps failing it (a liveness probe), the balancer's health
//! check (else the service's `health`) takes a replica out of rotation while it fails (a
//! readiness probe), stop signal and grace, restart policy, memory limit, dependencies.
//!
//! The balanced service keeps drove in front: a `drove` service (Compose) or Deployment
//! (Kubernetes) runs `drove up` with a generated drove.toml (`export_balancer.rs`) whose
//! backends are the replicas as the orchestrator's DNS publishes them — the Compose
//! service name, or a headless Service in Kubernetes — with the same algorithm,
//! stickiness, limits, retries, health and admin settings; its admin/metrics port is
//! exposed. So stickiness, rate limits, retries, passive health, metrics and `drove
//! verify` survive the move.
//!
//! What does not carry over is said in comments in the output: an image must be named
//! (`--image web=registry/web:1.2`, default `SERVICE:latest`; `drove:latest` for drove
//! itself and for services that run `{drove}`); every replica listens on the same port in
//! its own network namespace (the base port, 8080 for `port = "auto"`), on every interface
//! (`HOST=0.0.0.0` unless `env` sets `HOST`). Instance numbers: a Kubernetes service that
//! uses `{instance}` becomes a StatefulSet, whose pod ordinal gives `INSTANCE_ID` (the
//! ordinal plus one, as drove counts); its governing Service is the headless one that
//! publishes the replicas to drove when it is the balanced service (one `NAME-headless`
//! per service). A Deployment's or a Compose service's replicas have no index, so there
//! `INSTANCE_ID` is not set and `{instance}` becomes the container's hostname.
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

use crate::export_balancer::{self, Front};

/// Where the exported drove's config is mounted in its container.
const DROVE_CONFIG_DIR: &str = "/etc/drove";
/// Where its TLS files are mounted (from a Secret / a bind mount) when `[balancer] tls`.
const DROVE_TLS_DIR: &str = "/etc/drove/tls";

/// Name of drove's own service/Deployment: `drove`, unless a service has that name.
fn balancer_name(c: &Config) -> &'static str {
    if c.service("drove").is_some() {
        "drove-balancer"
    } else {
        "drove"
    }
}

/// The balanced service, if drove balances one of the config's services.
fn balanced(c: &Config) -> Option<&ServiceConfig> {
    match &c.balancer.as_ref()?.backends {
        Backends::Service(name) => c.service(name),
        Backends::Static(_) => None,
    }
}

/// Seconds drove may take to stop: its in-flight requests' grace and a margin.
fn drove_grace(c: &Config) -> u64 {
    c.balancer
        .as_ref()
        .map_or(30, |b| secs(b.timeouts.shutdown_grace))
        + 5
}

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
        // 127.0.0.1 in a container is unreachable from drove's container.
        env.entry("HOST".into()).or_insert_with(|| "0.0.0.0".into());
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

/// drove's image: `--image drove=...`, default `drove:latest` (build it with the
/// repository's Dockerfile, or `drove export dockerfile`).
fn drove_image(images: &BTreeMap<String, String>) -> String {
    images
        .get("drove")
        .cloned()
        .unwrap_or_else(|| "drove:latest".into())
}

fn image_of(s: &ServiceConfig, images: &BTreeMap<String, String>) -> String {
    let runs_drove = match &s.command {
        CommandSpec::Argv(v) => v.first().is_some_and(|p| p == "{drove}" || p == "drove"),
        CommandSpec::Shell(c) => c.trim_start().starts_with("{drove}"),
    };
    match images.get(&s.name) {
        Some(i) => i.clone(),
        None if runs_drove => drove_image(images),
        None => format!("{}:latest", s.name),
    }
}

/// The headless Service of a service's replicas: drove's DNS backends when it is the
/// balanced service, a StatefulSet's governing Service (pod DNS names) when it uses
/// `{instance}`; one object when it is both.
fn headless_name(s: &ServiceConfig) -> String {
    format!("{}-headless", s.name)
}

/// Kubernetes manifests: a Deployment per service (a StatefulSet for one that uses
/// `{instance}`, with its headless Service); for the balanced one, drove in front
/// (headless Service, ConfigMap, Deployment, Services), all in `namespace`.
pub fn k8s(c: &Config, images: &BTreeMap<String, String>, namespace: &str) -> String {
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
            let headless = headless_name(s);
            spec["serviceName"] = json!(headless);
            spec["podManagementPolicy"] = json!("Parallel");
            // The balanced service's headless Service comes with drove in front
            // (k8s_drove) and governs the StatefulSet too: a second object of the same
            // name would replace it on `kubectl apply`.
            if balanced(c).is_none_or(|b| b.name != s.name) {
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
                        "metadata": {"name": headless, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": "drove-export"}},
                        "spec": hspec,
                    }),
                ));
            }
            "StatefulSet"
        } else {
            "Deployment"
        };
        let workload = json!({
            "apiVersion": "apps/v1",
            "kind": kind,
            "metadata": {"name": s.name, "namespace": namespace, "labels": labels},
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
    if let (Some(b), Some(svc)) = (&c.balancer, balanced(c)) {
        docs.extend(k8s_drove(c, b, svc, images, namespace));
    }
    let mut out = String::from(
        "# Kubernetes manifests from drove.toml (`drove export k8s`).\n\
         # Images: --image SERVICE=IMAGE (default SERVICE:latest; drove:latest for drove).\n\
         # A service that uses {instance} is a StatefulSet (INSTANCE_ID = pod ordinal + 1);\n\
         # others are Deployments, whose replicas have no index. Services reach each other\n\
         # through Kubernetes Services, not 127.0.0.1: edit such addresses.\n",
    );
    let _ = writeln!(
        out,
        "# Namespace {namespace} (--namespace): drove finds the replicas by the DNS name of\n\
         # their headless Service in it. `kubectl apply -f` it."
    );
    for (notes, doc) in docs {
        out.push_str("---\n# ");
        out.push_str(&notes);
        out.push('\n');
        yaml(&mut out, &doc, 0);
    }
    out
}

/// drove in front of the balanced service's replicas: a headless Service publishing every
/// ready replica in DNS, the generated drove.toml in a ConfigMap, a Deployment running
/// `drove up` on it, a Service named like the balanced service (what clients used to
/// call) and one for the admin API and `/metrics`.
fn k8s_drove(
    c: &Config,
    b: &drove_config::BalancerConfig,
    svc: &ServiceConfig,
    images: &BTreeMap<String, String>,
    namespace: &str,
) -> Vec<(String, Value)> {
    let name = balancer_name(c);
    let target = container_port(svc).unwrap_or(8080);
    let headless = headless_name(svc);
    let dns_name = format!("{headless}.{namespace}.svc.cluster.local");
    let toml = export_balancer::drove_toml(
        c,
        &Front {
            dns_name: &dns_name,
            port: target,
            tls_dir: DROVE_TLS_DIR,
        },
    )
    .unwrap_or_default();
    let (listen, admin) = export_balancer::ports(c);
    let managed = "drove-export";
    let drove_labels = json!({
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/component": "balancer",
        "app.kubernetes.io/managed-by": managed,
    });
    let mut docs = Vec::new();
    let mut notes = format!(
        "Every ready replica of {0} in DNS ({dns_name}): drove's backends. A replica\n\
         # leaves DNS when its readinessProbe fails, and drove re-resolves every resolver.interval.",
        svc.name
    );
    if needs_index(svc) {
        notes.push_str("\n# Also the StatefulSet's governing Service (pod DNS names).");
    }
    docs.push((
        notes,
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": headless, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": managed}},
            "spec": {
                "clusterIP": "None",
                "selector": {"app.kubernetes.io/name": svc.name},
                "ports": [{"name": "http", "port": target, "targetPort": target}],
            },
        }),
    ));
    docs.push((
        format!(
            "drove.toml of drove in front of {}: the source's [balancer], [limits] and [admin]\n\
             # with backends = [{{ dns = \"{dns_name}:{target}\" }}]",
            svc.name
        ),
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": managed}},
            "data": {"drove.toml": toml},
        }),
    ));
    let mut mounts =
        vec![json!({"name": "config", "mountPath": DROVE_CONFIG_DIR, "readOnly": true})];
    let mut volumes = vec![json!({"name": "config", "configMap": {"name": name}})];
    if b.tls.is_some() {
        mounts.push(json!({"name": "tls", "mountPath": DROVE_TLS_DIR, "readOnly": true}));
        volumes.push(json!({"name": "tls", "secret": {"secretName": format!("{name}-tls")}}));
    }
    let admin_probe = |period: u64| json!({"httpGet": {"path": "/health", "port": "admin"}, "periodSeconds": period, "timeoutSeconds": 1});
    let mut pod_meta = Map::new();
    pod_meta.insert("labels".into(), drove_labels.clone());
    pod_meta.insert(
        "annotations".into(),
        json!({"prometheus.io/scrape": "true", "prometheus.io/port": admin.to_string(), "prometheus.io/path": "/metrics"}),
    );
    let mut notes = format!(
        "drove itself, balancing {} ({}{}, retries, passive health, limits, metrics).\n\
         # One replica; more share rate limits only through [limits] redis.",
        svc.name,
        b.algorithm.name(),
        if b.sticky.is_some() {
            ", sticky cookie"
        } else {
            ""
        }
    );
    if b.tls.is_some() {
        let _ = write!(
            notes,
            "\n# TLS: create the Secret {name}-tls (kubectl create secret tls {name}-tls --cert=... --key=...)"
        );
    }
    docs.push((
        notes,
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "labels": drove_labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
                "template": {
                    "metadata": Value::Object(pod_meta),
                    "spec": {
                        "containers": [{
                            "name": "drove",
                            "image": drove_image(images),
                            "command": ["drove", "up", "-c", format!("{DROVE_CONFIG_DIR}/drove.toml")],
                            "ports": [
                                {"containerPort": listen, "name": "http"},
                                {"containerPort": admin, "name": "admin"},
                            ],
                            "readinessProbe": admin_probe(2),
                            "livenessProbe": admin_probe(10),
                            "volumeMounts": mounts,
                        }],
                        "volumes": volumes,
                        "terminationGracePeriodSeconds": drove_grace(c),
                    },
                },
            },
        }),
    ));
    docs.push((
        format!(
            "Clients call {0} as before; drove answers and picks a replica.",
            svc.name
        ),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": svc.name, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": managed}},
            "spec": {
                "selector": {"app.kubernetes.io/name": name},
                "ports": [{"name": "http", "port": listen, "targetPort": "http"}],
            },
        }),
    ));
    docs.push((
        format!(
            "drove's admin API, /metrics and dashboard (cluster-internal; {}).",
            if c.admin.token.is_some() {
                "the API and /metrics need the bearer token"
            } else {
                "no token: keep it internal or set [admin] token"
            }
        ),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": format!("{name}-admin"), "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": managed}},
            "spec": {
                "selector": {"app.kubernetes.io/name": name},
                "ports": [{"name": "admin", "port": admin, "targetPort": "admin"}],
            },
        }),
    ));
    docs
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
    let mut top = Map::new();
    if let (Some(b), Some(svc)) = (&c.balancer, balanced(c)) {
        let name = balancer_name(c);
        let target = container_port(svc).unwrap_or(8080);
        let toml = export_balancer::drove_toml(
            c,
            &Front {
                dns_name: &svc.name,
                port: target,
                tls_dir: DROVE_TLS_DIR,
            },
        )
        .unwrap_or_default();
        let (listen, admin) = export_balancer::ports(c);
        let mut d = Map::new();
        d.insert("image".into(), json!(drove_image(images)));
        d.insert(
            "command".into(),
            json!([
                "drove",
                "up",
                "-c",
                format!("{DROVE_CONFIG_DIR}/drove.toml")
            ]),
        );
        d.insert(
            "configs".into(),
            json!([{"source": "drove_toml", "target": format!("{DROVE_CONFIG_DIR}/drove.toml")}]),
        );
        d.insert(
            "ports".into(),
            json!([
                format!("{listen}:{listen}"),
                format!("127.0.0.1:{admin}:{admin}")
            ]),
        );
        if let Some(t) = &c.admin.token {
            d.insert("environment".into(), json!({"DROVE_TOKEN": t}));
        }
        if b.tls.is_some() {
            d.insert(
                "volumes".into(),
                json!([format!("./tls:{DROVE_TLS_DIR}:ro")]),
            );
            notes.push(format!(
                "# TLS: put tls.crt and tls.key in ./tls (mounted at {DROVE_TLS_DIR})."
            ));
        }
        // Started, not healthy: drove's own health checks gate each replica, and it must
        // not wait on a health check that runs a tool the app's image may lack.
        d.insert(
            "depends_on".into(),
            json!({ svc.name.clone(): {"condition": "service_started"} }),
        );
        d.insert(
            "healthcheck".into(),
            json!({
                "test": ["CMD", "drove", "status", "--admin", format!("127.0.0.1:{admin}")],
                "interval": "5s", "timeout": "2s", "retries": 3, "start_period": "5s",
            }),
        );
        d.insert("restart".into(), json!("always"));
        d.insert(
            "stop_grace_period".into(),
            json!(format!("{}s", drove_grace(c))),
        );
        services.insert(name.into(), Value::Object(d));
        top.insert("configs".into(), json!({"drove_toml": {"content": toml}}));
        notes.push(format!(
            "# drove balances `{0}` ({1}): its backends are {{ dns = \"{0}:{target}\" }}, every replica\n\
             # as Compose's DNS lists them, re-resolved every resolver.interval. Clients call port\n\
             # {listen}; the admin API and /metrics are on 127.0.0.1:{admin}.",
            svc.name,
            b.algorithm.name()
        ));
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
    let mut doc = Map::new();
    doc.insert("services".into(), Value::Object(services));
    doc.extend(top);
    yaml(&mut out, &Value::Object(doc), 0);
    out
}

/// Block-style YAML for `v` at `indent` (an object or array at the top).
pub(crate) fn yaml(out: &mut String, v: &Value, indent: usize) {
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
        Value::String(text) if literal_block_ok(text) => {
            // A literal block keeps a multi-line text (a drove.toml) readable.
            let chomp = match text.len() - text.trim_end_matches('\n').len() {
                0 => "-",
                1 => "",
                _ => "+",
            };
            let _ = writeln!(out, " |{chomp}");
            let pad = " ".repeat(indent + 2);
            for line in text.strip_suffix('\n').unwrap_or(text).split('\n') {
                if line.is_empty() {
                    out.push('\n');
                } else {
                    let _ = writeln!(out, "{pad}{line}");
                }
            }
        }
        scalar_value => {
            let _ = writeln!(out, " {}", scalar(scalar_value));
        }
    }
}

/// Whether `text` can be a YAML literal block: several lines, printable characters only,
/// and a first line that does not start with a space (that would need an indentation
/// indicator).
fn literal_block_ok(text: &str) -> bool {
    text.contains('\n')
        && !text.starts_with([' ', '\n'])
        && text
            .chars()
            .all(|c| c == '\n' || c == '\t' || !c.is_control())
        && !text.contains('\u{feff}')
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
