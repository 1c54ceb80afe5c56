//! `drove export k8s|compose` with drove in front: the Kubernetes YAML validated in
//! strict mode against the Kubernetes schemas (`kubernetes-validate`, PyPI, which ships
//! them), the Compose file against the Compose specification's JSON schema (the copy
//! `check-jsonschema`, PyPI, ships as `vendor.compose-spec`), and the drove.toml they
//! carry passing `drove check` and run for real: its DNS names answered by the test DNS
//! server, balancing three replicas on 127.0.0.1-3 with the source's stickiness and
//! limits. scripts/test installs both Python packages when missing.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use drove_test_support::dns::DnsServer;
use drove_test_support::{free_port, http, tempdir, wait_until, Drove, Proc};
use serde_json::Value;

use crate::{drove, output_ok};

/// A source drove.toml balancing `web` (replicas on `port`) with stickiness, a rate limit
/// and `extra` balancer keys.
fn source(port: u16, extra: &str) -> String {
    format!(
        r#"[services.web]
command = ["{drove}", "demo"]
instances = 3
port = {port}
ready = {{ http = "/health/ready" }}
health = {{ http = "/health", interval = "500ms" }}

[balancer]
listen = "127.0.0.1:8088"
service = "web"
algorithm = "least_conn"
sticky = {{ cookie = "srv" }}
instance_header = "X-Drove-Instance"
retries = {{ attempts = 2, budget = "25%" }}
passive = {{ max_fails = 4, fail_timeout = "20s" }}
{extra}

[[balancer.routes]]
path = "/status/"
limit = "tight"

[limits.tight]
rate = "1/m"
burst = 3

[admin]
listen = "127.0.0.1:9911"
"#,
        drove = drove().display()
    )
}

fn export(kind: &str, config: &Path, args: &[&str]) -> String {
    let out = output_ok(
        Command::new(drove())
            .args(["export", kind, "-c"])
            .arg(config)
            .args(args),
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every YAML document of `text`, through PyYAML, as JSON.
fn yaml_docs(text: &str) -> Vec<Value> {
    let mut py = Command::new("python3")
        .args([
            "-c",
            "import sys, yaml, json; print(json.dumps(list(yaml.safe_load_all(sys.stdin))))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    py.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(out.status.success(), "not YAML:\n{text}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs a validator over `file`; it must pass (its output shown if not).
fn validates(cmd: &mut Command, file: &Path) {
    let out = cmd.arg(file).output().unwrap_or_else(|e| {
        panic!("{cmd:?}: {e} (scripts/test installs kubernetes-validate and check-jsonschema)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} rejected {}:\n{}{}\n{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(file).unwrap()
    );
}

#[test]
fn k8s_validates_strictly_and_compose_against_the_compose_spec() {
    let dir = tempdir("export-schema");
    // TLS and a token too, so the Secret volume and the token paths are validated.
    std::fs::write(dir.join("cert.pem"), "x").unwrap();
    std::fs::write(dir.join("key.pem"), "x").unwrap();
    let cfg = source(5001, "tls = { cert = \"cert.pem\", key = \"key.pem\" }")
        + "token = \"t0k\"\n\n[services.redis]\ncommand = \"redis-server --port 6379\"\nport = 6379\nready = { tcp = true }\n";
    let path = dir.join("drove.toml");
    std::fs::write(&path, cfg).unwrap();

    let k8s = export(
        "k8s",
        &path,
        &[
            "--namespace",
            "shop",
            "--image",
            "web=registry.example/web:1.2",
        ],
    );
    let k8s_file = dir.join("k8s.yaml");
    std::fs::write(&k8s_file, &k8s).unwrap();
    validates(
        Command::new("python3").args(["-m", "kubernetes_validate", "--strict", "--quiet"]),
        &k8s_file,
    );
    let docs = yaml_docs(&k8s);
    let kinds: BTreeSet<(String, String)> = docs
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_string(),
                d["metadata"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for want in [
        ("Deployment", "web"),
        ("Deployment", "redis"),
        ("Deployment", "drove"),
        ("Service", "web-headless"),
        ("Service", "web"),
        ("Service", "drove-admin"),
        ("ConfigMap", "drove"),
    ] {
        assert!(
            kinds.contains(&(want.0.to_string(), want.1.to_string())),
            "{want:?} missing: {kinds:?}"
        );
    }
    assert!(docs.iter().all(|d| d["metadata"]["namespace"] == "shop"));
    let drove_pod = &docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "drove")
        .unwrap()["spec"]["template"]["spec"];
    let c = &drove_pod["containers"][0];
    assert_eq!(c["image"], "drove:latest");
    let ports: Vec<&Value> = c["ports"].as_array().unwrap().iter().collect();
    assert_eq!(ports[0]["containerPort"], 8088);
    assert_eq!(
        (&ports[1]["name"], &ports[1]["containerPort"]),
        (&"admin".into(), &9911.into())
    );
    assert_eq!(drove_pod["volumes"][1]["secret"]["secretName"], "drove-tls");

    // A balanced service that uses {instance} is a StatefulSet: its governing Service is
    // the headless Service drove resolves, one object (two `web-headless` would be one
    // overwriting the other on `kubectl apply`).
    let indexed = dir.join("indexed.toml");
    std::fs::write(
        &indexed,
        source(5001, "").replace(
            "instances = 3\n",
            "instances = 3\nenv = { NODE_NAME = \"web-{instance}\" }\n",
        ),
    )
    .unwrap();
    let k8s = export("k8s", &indexed, &["--namespace", "shop"]);
    let k8s_file = dir.join("k8s-indexed.yaml");
    std::fs::write(&k8s_file, &k8s).unwrap();
    validates(
        Command::new("python3").args(["-m", "kubernetes_validate", "--strict", "--quiet"]),
        &k8s_file,
    );
    let docs = yaml_docs(&k8s);
    let named = |kind: &str, name: &str| -> Vec<&Value> {
        docs.iter()
            .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .collect()
    };
    let web = named("StatefulSet", "web");
    assert_eq!(web.len(), 1, "{k8s}");
    assert_eq!(web[0]["spec"]["serviceName"], "web-headless");
    let headless = named("Service", "web-headless");
    assert_eq!(headless.len(), 1, "one web-headless Service:\n{k8s}");
    assert_eq!(headless[0]["spec"]["clusterIP"], "None");
    assert_eq!(
        headless[0]["spec"]["selector"],
        web[0]["spec"]["selector"]["matchLabels"]
    );
    let mut names: Vec<(&str, &str)> = docs
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    let n = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(
        names.len(),
        n,
        "no two objects of one kind and name: {names:?}"
    );

    let compose = export("compose", &path, &[]);
    let compose_file = dir.join("compose.yaml");
    std::fs::write(&compose_file, &compose).unwrap();
    validates(
        Command::new("python3").args([
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
        ]),
        &compose_file,
    );
    let doc = &yaml_docs(&compose)[0];
    let d = &doc["services"]["drove"];
    assert_eq!(
        d["ports"],
        serde_json::json!(["8088:8088", "127.0.0.1:9911:9911"])
    );
    assert_eq!(d["environment"]["DROVE_TOKEN"], "t0k");
    let toml = doc["configs"]["drove_toml"]["content"].as_str().unwrap();
    // The limit's Redis would be the redis service here: none set, so nothing rewritten;
    // the TLS files come from the mounted directory.
    assert!(toml.contains("cert = \"/etc/drove/tls/tls.crt\""), "{toml}");
}

/// Three demo replicas on the same port of 127.0.0.1, .2 and .3, as an orchestrator runs
/// them (one address each).
fn replicas(port: u16) -> Vec<Proc> {
    let procs: Vec<Proc> = (1..=3)
        .map(|k| {
            let mut cmd = Command::new(drove());
            cmd.arg("demo")
                .env("PORT", port.to_string())
                .env("HOST", format!("127.0.0.{k}"))
                .env("DROVE_INSTANCE", format!("replica-{k}"));
            Proc::spawn(cmd)
        })
        .collect();
    for k in 1..=3 {
        let addr: SocketAddr = format!("127.0.0.{k}:{port}").parse().unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || http::get(addr, "/health/ready")
                .is_ok_and(|r| r.status == 200)),
            "replica on {addr} did not come up"
        );
    }
    procs
}

/// Writes the exported drove.toml, checks it, runs it and sees it balance the three
/// replicas with the source's stickiness and limit.
fn run_exported(toml: &str, dns_name: &str, port: u16) {
    assert!(
        toml.contains(&format!("dns = \"{dns_name}:{port}\"")),
        "{toml}"
    );
    let dir = tempdir("exported");
    let path = dir.join("drove.toml");
    std::fs::write(&path, toml).unwrap();
    let check = output_ok(Command::new(drove()).arg("check").arg("-c").arg(&path));
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("ok (0 services, balancer)"),
        "{check:?}"
    );
    let d = Drove::up_file(drove(), &path, &["--quiet"]);
    let status = d.status();
    assert_eq!(
        status.balancer.as_ref().map(|b| b.algorithm.as_str()),
        Some("least_conn"),
        "{status:?}"
    );

    // Without a cookie: every replica serves, each answer names the backend drove picked.
    let mut seen = BTreeSet::new();
    let mut cookie = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            let r = http::get(d.addr(), "/whoami").unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            seen.insert(r.header("x-drove-instance").unwrap().to_string());
            if let Some(c) = r.header("set-cookie") {
                cookie = Some(c.split(';').next().unwrap().to_string());
            }
            seen.len() == 3
        }),
        "not every replica served: {seen:?}"
    );
    let want: BTreeSet<String> = (1..=3).map(|k| format!("web@127.0.0.{k}:{port}")).collect();
    assert_eq!(seen, want);

    // With the sticky cookie: always the same replica.
    let cookie = cookie.expect("a sticky cookie (sticky = { cookie = \"srv\" })");
    assert!(cookie.starts_with("srv="), "{cookie}");
    let mut c = http::Conn::open(d.addr(), Duration::from_secs(5)).unwrap();
    let sticky: BTreeSet<String> = (0..12)
        .map(|_| {
            let r = c
                .request("GET", "/whoami", &[("Cookie", &cookie)], b"")
                .unwrap();
            r.header("x-drove-instance").unwrap().to_string()
        })
        .collect();
    assert_eq!(sticky.len(), 1, "{sticky:?}");

    // The route's limit: a burst of 3, then 429.
    let codes: Vec<u16> = (0..5)
        .map(|_| http::get(d.addr(), "/status/200").unwrap().status)
        .collect();
    assert_eq!(codes, [200, 200, 200, 429, 429]);
    d.stop();
}

#[test]
fn exported_drove_toml_balances_three_replicas_found_through_dns() {
    let port = free_port();
    let _replicas = replicas(port);
    let dns = DnsServer::start();
    let ips: Vec<IpAddr> = (1..=3)
        .map(|k| format!("127.0.0.{k}").parse().unwrap())
        .collect();
    dns.set_ips("web", &ips);
    dns.set_ips("web-headless.default.svc.cluster.local", &ips);
    let dir = tempdir("export-run");
    let path = dir.join("drove.toml");
    // The source's resolver settings carry over: here, the test's name server.
    std::fs::write(
        &path,
        source(
            port,
            &format!(
                "resolver = {{ nameservers = [\"{}\"], interval = \"200ms\" }}",
                dns.addr
            ),
        ),
    )
    .unwrap();

    let compose = yaml_docs(&export("compose", &path, &[]));
    let toml = compose[0]["configs"]["drove_toml"]["content"]
        .as_str()
        .expect("configs.drove_toml.content");
    run_exported(toml, "web", port);

    let k8s = yaml_docs(&export("k8s", &path, &[]));
    let cm = k8s
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("a ConfigMap");
    let toml = cm["data"]["drove.toml"].as_str().unwrap();
    run_exported(toml, "web-headless.default.svc.cluster.local", port);
    assert!(dns.queries() > 0);
}

#[test]
fn export_dockerfile_is_the_repositorys() {
    let out = output_ok(Command::new(drove()).args(["export", "dockerfile"]));
    let repo =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile")).unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), repo);
    assert!(repo.contains("cargo build --release --locked --bin drove"));
    assert!(repo.contains("ENTRYPOINT [\"drove\"]"));
}
