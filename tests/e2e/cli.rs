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
    let out = Command::new(drove())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    let out = Command::new(drove())
        .args(["logs", "web.2", "-c"])
        .arg(&d.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
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
    let out = Command::new(drove())
        .args(["status", "--admin", &admin])
        .env("DROVE_TOKEN", "s3cret")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
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
