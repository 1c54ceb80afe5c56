//! The CLI a new user meets: `drove up` with no config (the built-in demo), `drove init`,
//! `drove check` on the examples, `drove logs`.

use std::process::Command;
use std::time::Duration;

use drove_test_support::{http, tempdir, Drove, Proc};

use crate::drove;

#[test]
fn up_without_a_config_runs_the_builtin_demo() {
    let dir = tempdir("demo");
    let mut cmd = Command::new(drove());
    cmd.args([
        "up",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ])
    .current_dir(&dir);
    let proc = Proc::spawn(cmd);
    let line = proc
        .wait_line(Duration::from_secs(20), |l| {
            l.starts_with("drove: balancer on")
        })
        .expect("the demo starts");
    let addr: std::net::SocketAddr = line
        .trim_start_matches("drove: balancer on http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    assert!(drove_test_support::wait_until(
        Duration::from_secs(15),
        || {
            if let Ok(r) = http::get(addr, "/whoami") {
                if r.status == 200 {
                    seen.insert(r.header("x-drove-instance").unwrap_or("").to_string());
                }
            }
            seen.len() == 3
        }
    ));
    assert_eq!(
        seen,
        ["web.1", "web.2", "web.3"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    assert!(proc
        .stdout
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("built-in demo")));
}

#[test]
fn init_writes_a_config_that_checks_and_refuses_to_overwrite() {
    let dir = tempdir("init");
    let path = dir.join("drove.toml");
    let out = Command::new(drove())
        .args(["init", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("[services.web]") && text.contains("[balancer]"));
    crate::output_ok(Command::new(drove()).args(["check", "-c"]).arg(&path));
    let out = Command::new(drove())
        .args(["init", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success(), "init must not overwrite");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
}

#[test]
fn examples_check_clean() {
    for ex in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/examples")).unwrap() {
        let path = ex.unwrap().path().join("drove.toml");
        if !path.exists() {
            continue;
        }
        let out = Command::new(drove())
            .args(["check", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn logs_prints_each_instance_output() {
    let cfg = format!(
        "[services.web]\ncommand = [\"{}\", \"demo\"]\ninstances = 2\nport = \"auto\"\nready = {{ http = \"/ready\", interval = \"50ms\" }}\nlogs = {{ dir = \"logs\" }}\n\n[balancer]\nservice = \"web\"\n",
        drove().display()
    );
    let d = Drove::up(drove(), &cfg);
    assert!(d.wait_in_rotation(2, Duration::from_secs(20)));
    // The multiplexed output carries a `web.N |` prefix.
    assert!(d
        .proc
        .wait_line(Duration::from_secs(5), |l| l
            .contains("web.2 | demo web.2 listening"))
        .is_some());
    let out = crate::output_ok(
        Command::new(drove())
            .args(["logs", "web.2", "-c"])
            .arg(&d.config),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("demo web.2 listening"), "{text}");
    assert!(!text.contains("demo web.1 listening"), "{text}");
    let out = Command::new(drove())
        .args(["logs", "-c"])
        .arg(&d.config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("web.1 | ") && text.contains("web.2 | "),
        "{text}"
    );
}

#[test]
fn admin_token_is_required_when_set() {
    let b = drove_test_support::demo(drove(), "only");
    let cfg = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:9900\"\ntoken = \"s3cret\"\n",
        crate::static_config(&[b.addr], "")
    );
    let d = Drove::up(drove(), &cfg);
    let r = http::get(d.admin, "/api/status").unwrap();
    assert_eq!(r.status, 401);
    assert!(r.json()["error"].as_str().unwrap().contains("token"));
    let r = http::request(
        d.admin,
        "GET",
        "/api/status",
        &[("Authorization", "Bearer wrong")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 401);
    let r = http::request(
        d.admin,
        "GET",
        "/api/status",
        &[("Authorization", "Bearer s3cret")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    // The CLI passes --token (or DROVE_TOKEN).
    let admin = d.admin.to_string();
    let out = d.cli(&["status"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    crate::output_ok(
        Command::new(drove())
            .args(["status", "--admin", &admin])
            .env("DROVE_TOKEN", "s3cret"),
    );
    // Unknown endpoints and bad bodies are JSON errors.
    let r = http::request(
        d.admin,
        "GET",
        "/api/nope",
        &[("Authorization", "Bearer s3cret")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 404);
    let r = http::request(
        d.admin,
        "POST",
        "/api/scale",
        &[
            ("Authorization", "Bearer s3cret"),
            ("Content-Type", "application/json"),
        ],
        b"{\"service\":\"web\"}",
    )
    .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("instances"));
}

/// `drove export KIND -c FILE [ARGS]` parsed by PyYAML (every YAML document) as JSON.
fn export_yaml(kind: &str, config: &std::path::Path, args: &[&str]) -> Vec<serde_json::Value> {
    let out = crate::output_ok(
        Command::new(drove())
            .args(["export", kind, "-c"])
            .arg(config)
            .args(args),
    );
    let mut py = Command::new("python3")
        .args([
            "-c",
            "import sys, yaml, json; print(json.dumps(list(yaml.safe_load_all(sys.stdin))))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    py.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let parsed = py.wait_with_output().unwrap();
    assert!(
        parsed.status.success(),
        "not YAML:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&parsed.stdout).unwrap()
}

#[test]
fn export_k8s_and_compose_keep_replicas_probes_stop_and_dependencies() {
    let dir = tempdir("export");
    let path = dir.join("drove.toml");
    std::fs::write(
        &path,
        r#"[services.web]
command = "node server.js --port {port} --id {instance}"
instances = 4
port = 5001
env = { MODE = "prod" }
ready = { http = "/ready", interval = "1s", start_timeout = "30s" }
health = { http = "/health", interval = "2s", timeout = "1s", fall = 3 }
stop = { signal = "INT", grace = "12s" }
max_memory = "256MiB"
depends_on = ["redis"]

[services.redis]
command = ["redis-server", "--port", "6379"]
port = 6379

[balancer]
listen = "127.0.0.1:8088"
service = "web"
sticky = { cookie = "s" }
"#,
    )
    .unwrap();

    let docs = export_yaml("k8s", &path, &["--image", "web=registry.example/web:1.2"]);
    // web uses {instance}: a StatefulSet, whose pod ordinal gives INSTANCE_ID.
    let web = docs
        .iter()
        .find(|d| d["kind"] == "StatefulSet" && d["metadata"]["name"] == "web")
        .expect("a StatefulSet for web");
    assert_eq!(web["spec"]["replicas"], 4);
    assert_eq!(web["spec"]["serviceName"], "web-headless");
    assert_eq!(web["spec"]["podManagementPolicy"], "Parallel");
    assert!(docs.iter().any(|d| d["kind"] == "Service"
        && d["metadata"]["name"] == "web-headless"
        && d["spec"]["clusterIP"] == "None"));
    let pod = &web["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "registry.example/web:1.2");
    let cmd = c["command"].as_array().unwrap();
    assert_eq!(cmd[..2], [serde_json::json!("sh"), serde_json::json!("-c")]);
    let line = cmd[2].as_str().unwrap();
    assert!(
        line.ends_with("; node server.js --port 5001 --id ${INSTANCE_ID}"),
        "{line}"
    );
    // Pod web-1 is drove's instance 2, as the shell computes it.
    let shown = Command::new("sh")
        .args([
            "-c",
            &line.replace("node server.js", "echo $INSTANCE_ID $DROVE_INSTANCE"),
        ])
        .env("HOSTNAME", "web-1")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&shown.stdout).trim(),
        "2 web.2 --port 5001 --id 2"
    );
    assert_eq!(c["startupProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(c["startupProbe"]["failureThreshold"], 30);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], 5001);
    assert_eq!(c["readinessProbe"]["failureThreshold"], 3);
    // The service's health replaces a failing instance in drove: a liveness probe.
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(c["livenessProbe"]["failureThreshold"], 3);
    assert_eq!(c["livenessProbe"]["periodSeconds"], 2);
    assert!(c["livenessProbe"]["successThreshold"].is_null());
    assert_eq!(
        c["resources"]["limits"]["memory"],
        (256u64 << 20).to_string()
    );
    assert!(c["env"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!({"name": "MODE", "value": "prod"})));
    assert_eq!(pod["terminationGracePeriodSeconds"], 12);
    let redis = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "redis")
        .expect("a Deployment for redis");
    assert_eq!(
        redis["spec"]["template"]["spec"]["containers"][0]["image"],
        "redis:latest"
    );
    // Clients still call the Service `web` on the balancer's port; drove answers it.
    let svc = docs
        .iter()
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "web")
        .expect("a Service web");
    assert_eq!(svc["spec"]["ports"][0]["port"], 8088);
    assert_eq!(svc["spec"]["selector"]["app.kubernetes.io/name"], "drove");
    // One headless Service for web: drove's DNS backends and the StatefulSet's governing
    // Service are the same object (two of one name would not apply).
    let headless: Vec<&serde_json::Value> = docs
        .iter()
        .filter(|d| d["kind"] == "Service" && d["metadata"]["name"] == "web-headless")
        .collect();
    assert_eq!(headless.len(), 1, "one web-headless Service");
    assert_eq!(headless[0]["spec"]["clusterIP"], "None");
    assert_eq!(headless[0]["spec"]["ports"][0]["targetPort"], 5001);

    let compose = export_yaml("compose", &path, &[]);
    let web = &compose[0]["services"]["web"];
    assert_eq!(web["deploy"]["replicas"], 4);
    assert_eq!(web["stop_signal"], "SIGINT");
    assert_eq!(web["stop_grace_period"], "12s");
    assert_eq!(web["environment"]["PORT"], "5001");
    assert_eq!(web["depends_on"]["redis"]["condition"], "service_healthy");
    assert!(web["healthcheck"]["test"][1]
        .as_str()
        .unwrap()
        .contains("http://127.0.0.1:5001/health"));
    assert_eq!(compose[0]["services"]["redis"]["restart"], "always");
    assert_eq!(
        compose[0]["services"]["drove"]["ports"][0], "8088:8088",
        "drove in front: {}",
        compose[0]
    );

    // A service the config does not have is an error, not a silently ignored flag.
    let out = Command::new(drove())
        .args(["export", "k8s", "-c"])
        .arg(&path)
        .args(["--image", "wbe=x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no service `wbe`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// drove's output going to a file or pipe: no ANSI colour codes, and each instance event
/// once — as the `web.N | [drove] ...` line, or (with --quiet) as a log line on stderr.
#[test]
fn output_to_a_pipe_has_no_colour_and_each_event_once() {
    for quiet in [false, true] {
        let dir = tempdir("plain");
        let path = dir.join("drove.toml");
        std::fs::write(
            &path,
            format!(
                "[services.web]\ncommand = [\"{}\", \"demo\"]\ninstances = 2\nport = \"auto\"\nready = {{ http = \"/ready\", interval = \"50ms\" }}\n\n[balancer]\nservice = \"web\"\n",
                drove().display()
            ),
        )
        .unwrap();
        let err_path = dir.join("stderr.txt");
        let mut cmd = Command::new(drove());
        cmd.args(["up", "-c"])
            .arg(&path)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .current_dir(&dir)
            .stderr(std::fs::File::create(&err_path).unwrap());
        if quiet {
            cmd.arg("--quiet");
        }
        let mut p = Proc::spawn(cmd);
        p.wait_line(Duration::from_secs(20), |l| {
            l.starts_with("drove: admin API")
        })
        .expect("started");
        let all_ready = || {
            let out = [
                p.stdout.lock().unwrap().join("\n"),
                std::fs::read_to_string(&err_path).unwrap_or_default(),
            ]
            .join("\n");
            out.matches("ready after").count() >= 2
        };
        assert!(drove_test_support::wait_until(
            Duration::from_secs(20),
            all_ready
        ));
        std::thread::sleep(Duration::from_millis(300));
        assert!(drove_test_support::signal(
            p.pid(),
            nix::sys::signal::Signal::SIGTERM
        ));
        p.wait_exit(Duration::from_secs(20)).expect("drove stops");
        let stdout = p.stdout.lock().unwrap().join("\n");
        let stderr = std::fs::read_to_string(&err_path).unwrap();
        let both = format!("{stdout}\n{stderr}");
        assert!(
            !both.contains('\x1b'),
            "colour codes in a pipe (quiet={quiet}):\n{both}"
        );
        for id in ["web.1", "web.2"] {
            for event in ["started pid", "ready after", "stopped ("] {
                let n = both
                    .lines()
                    .filter(|l| l.contains(id) && l.contains(event))
                    .count();
                assert_eq!(
                    n, 1,
                    "`{id}` `{event}` printed {n} times (quiet={quiet}):\n{both}"
                );
            }
        }
        // Where the events go: the instance lines on stdout, or log lines with --quiet.
        let on_stderr = stderr.contains("ready after");
        assert_eq!(on_stderr, quiet, "quiet={quiet}:\n{both}");
    }
}
