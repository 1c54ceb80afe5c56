//! `drove verify` end to end: every drill passes on a healthy three-instance drove (started
//! by verify, or already running), and each drill fails when it should — a balancer that
//! skips an instance (distribution), a sticky cookie that is not there (stickiness),
//! retries turned off while an instance is killed (failover). JSON and JUnit outputs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use drove_test_support::{demo, free_port, tempdir, Drove, Proc};
use serde_json::Value;

use crate::drove;

/// A whole verify run (ten drills of ~3 s, plus waits) ends well within this.
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

/// Three demo instances behind the balancer, with cookie stickiness, demo-style fast
/// health and retries, and Redis-backed sessions when redis-server is installed.
fn three_instance_config(dir: &Path) -> String {
    let redis = which("redis-server");
    let (session_env, redis_service) = match &redis {
        Some(r) => {
            let port = free_port();
            (
                format!("env = {{ REDIS_URL = \"redis://127.0.0.1:{port}/\" }}\ndepends_on = [\"redis\"]\n"),
                format!(
                    "[services.redis]\ncommand = [\"{}\", \"--port\", \"{port}\", \"--bind\", \"127.0.0.1\", \"--save\", \"\", \"--appendonly\", \"no\"]\nport = \"none\"\nready = {{ tcp = \"127.0.0.1:{port}\" }}\n",
                    r.display()
                ),
            )
        }
        None => (String::new(), String::new()),
    };
    format!(
        r#"[services.web]
command = ["{drove}", "demo"]
instances = 3
port = "auto"
ready = {{ http = "/ready", interval = "50ms" }}
stop = {{ signal = "TERM", grace = "5s" }}
restart = {{ initial_delay = "100ms", max_delay = "2s" }}
logs = {{ dir = "{logs}" }}
{session_env}
{redis_service}
[balancer]
service = "web"
workers = 2
instance_header = "X-Drove-Instance"
sticky = {{ cookie = "drove_sticky" }}
health = {{ http = "/health", interval = "250ms", timeout = "200ms", rise = 2, fall = 2 }}
passive = {{ max_fails = 2, fail_timeout = "5s" }}
retries = {{ attempts = 2, per_try_timeout = "5s" }}
"#,
        drove = drove().display(),
        logs = dir.join("logs").display(),
    )
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn write_config(tag: &str, text: impl FnOnce(&Path) -> String) -> PathBuf {
    let dir = tempdir(tag);
    let path = dir.join("drove.toml");
    std::fs::write(&path, text(&dir)).unwrap();
    path
}

/// Runs `drove verify ARGS` in `cwd`; (exit code, stdout lines).
fn verify(cwd: &Path, args: &[&str]) -> (i32, Vec<String>) {
    let mut cmd = Command::new(drove());
    cmd.arg("verify")
        .args(args)
        .current_dir(cwd)
        .env_remove("DROVE_ADMIN")
        .env_remove("DROVE_TOKEN");
    let mut p = Proc::spawn(cmd);
    let status = p.wait_exit(RUN_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "drove verify did not finish within {RUN_TIMEOUT:?}: {:?}",
            p.stdout.lock().unwrap()
        )
    });
    // Every line read (a fixed wait lost the whole --json document under load once).
    assert!(p.wait_stdout_closed(Duration::from_secs(10)));
    let lines = p.stdout.lock().unwrap().clone();
    for l in &lines {
        eprintln!("{l}");
    }
    (status.code().unwrap_or(-1), lines)
}

fn line<'a>(lines: &'a [String], drill: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.split_whitespace().nth(1) == Some(drill))
        .unwrap_or_else(|| panic!("no {drill} line in {lines:#?}"))
}

fn testcases(xml: &str) -> Vec<String> {
    xml.split("<testcase ")
        .skip(1)
        .map(|s| s.split("</testcase>").next().unwrap().to_string())
        .collect()
}

#[test]
fn verify_start_passes_every_drill_on_three_instances() {
    let cfg = write_config("verify-start", three_instance_config);
    let dir = cfg.parent().unwrap();
    let junit = dir.join("verify.xml");
    let (code, lines) = verify(
        dir,
        &[
            "--start",
            "-c",
            cfg.to_str().unwrap(),
            "--junit",
            junit.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{lines:#?}");
    for drill in [
        "health",
        "distribution",
        "metrics",
        "stickiness",
        "failover",
        "freeze",
        "restart",
        "scale",
    ] {
        assert!(line(&lines, drill).starts_with('✓'), "{drill}: {lines:#?}");
    }
    assert!(
        line(&lines, "failover").contains(" 0 failed of "),
        "{lines:#?}"
    );
    assert!(
        line(&lines, "stickiness").contains("16/16 clients (100%) pinned"),
        "{lines:#?}"
    );
    assert!(
        line(&lines, "metrics").contains("web.1 "),
        "per-backend counts compared: {lines:#?}"
    );
    let sessions = line(&lines, "sessions");
    if which("redis-server").is_some() {
        assert!(
            sessions.starts_with('✓') && sessions.contains("store=redis"),
            "{sessions}"
        );
    }
    assert_eq!(
        line(&lines, "limits"),
        "- limits       skipped: no [limits] configured"
    );
    assert!(lines.last().unwrap().starts_with("verify: "), "{lines:#?}");
    assert!(lines.last().unwrap().contains(" 0 failed"), "{lines:#?}");

    // JUnit: one testcase per drill, no failure, limits skipped.
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.starts_with("<?xml version=\"1.0\""), "{xml}");
    let cases = testcases(&xml);
    assert_eq!(cases.len(), 10, "{xml}");
    assert!(!xml.contains("<failure"), "{xml}");
    assert!(
        cases.iter().any(
            |c| c.starts_with("classname=\"drove.verify\" name=\"limits\"")
                && c.contains("<skipped ")
        ),
        "{xml}"
    );
    assert_eq!(xml.matches("<testsuite ").count(), 1);
    assert!(xml.trim_end().ends_with("</testsuites>"));
}

#[test]
fn verify_a_running_drove_by_admin_address_with_json() {
    let cfg = write_config("verify-admin", three_instance_config);
    let d = Drove::up_file(drove(), &cfg, &["--quiet"]);
    assert!(
        d.wait_in_rotation(3, Duration::from_secs(30)),
        "{:?}",
        d.status()
    );
    let admin = d.admin.to_string();
    // No config file in the working directory: everything comes from the admin API.
    let cwd = tempdir("verify-admin-cwd");
    let (code, lines) = verify(&cwd, &["--admin", &admin, "--json"]);
    assert_eq!(code, 0, "{lines:#?}");
    let v: Value =
        serde_json::from_str(&lines.join("\n")).expect("--json prints one JSON document");
    assert_eq!(v["passed"], true, "{v:#}");
    let drills = v["drills"].as_array().unwrap();
    assert_eq!(drills.len(), 10);
    for dr in drills {
        assert!(
            dr["status"] == "passed" || dr["status"] == "skipped",
            "{dr:#}"
        );
        assert!(dr["summary"].as_str().is_some_and(|s| !s.is_empty()));
    }
    let by_name = |n: &str| drills.iter().find(|d| d["name"] == n).unwrap();
    // Stickiness detected from the Set-Cookie (no config file was read).
    assert_eq!(by_name("stickiness")["status"], "passed", "{v:#}");
    assert_eq!(by_name("stickiness")["numbers"]["cookie"], "drove_sticky");
    assert_eq!(by_name("failover")["numbers"]["failed"], 0);
    assert_eq!(
        by_name("metrics")["numbers"]["drove_requests"],
        by_name("metrics")["numbers"]["client_requests"]
    );
    assert_eq!(v["counts"]["failed"], 0);
    // The drove it verified is still whole: three instances in rotation.
    assert!(
        d.wait_in_rotation(3, Duration::from_secs(20)),
        "{:?}",
        d.status()
    );
    d.stop();
}

#[test]
fn verify_with_no_config_and_no_drove_starts_the_demo_and_passes() {
    if std::net::TcpStream::connect("127.0.0.1:9900").is_ok() {
        eprintln!("skipped: something listens on 127.0.0.1:9900 (the default admin address)");
        return;
    }
    let cwd = tempdir("verify-fresh");
    let (code, lines) = verify(&cwd, &[]);
    assert_eq!(code, 0, "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("starting the built-in demo")),
        "{lines:#?}"
    );
    assert!(
        line(&lines, "health").starts_with("✓ health       3/3 instances ready and healthy"),
        "{lines:#?}"
    );
    for drill in [
        "distribution",
        "metrics",
        "failover",
        "freeze",
        "restart",
        "scale",
    ] {
        assert!(line(&lines, drill).starts_with('✓'), "{drill}: {lines:#?}");
    }
    // The demo has no sticky cookie, in-memory sessions and no limits: skipped, saying why.
    for drill in ["stickiness", "sessions", "limits"] {
        assert!(line(&lines, drill).starts_with("- "), "{drill}: {lines:#?}");
    }
    assert!(line(&lines, "sessions").contains("in memory"), "{lines:#?}");
    assert_eq!(
        lines.last().unwrap().split(" in ").next().unwrap(),
        "verify: 7 passed, 0 failed, 3 skipped"
    );
}

/// (a) A balancer that skips an instance: static backends, the third one `backup = true`,
/// so it never gets traffic while the others are up.
#[test]
fn distribution_fails_when_the_balancer_skips_an_instance() {
    let b: Vec<_> = (1..=3).map(|i| demo(drove(), &format!("b{i}"))).collect();
    let cfg = write_config("verify-backup", |_| {
        format!(
            "[balancer]\nlisten = \"127.0.0.1:0\"\nworkers = 1\ninstance_header = \"X-Drove-Instance\"\n\
             backends = [\"{}\", \"{}\", {{ addr = \"{}\", backup = true }}]\n\
             health = {{ http = \"/health\", interval = \"250ms\", rise = 1 }}\n",
            b[0].addr, b[1].addr, b[2].addr
        )
    });
    let d = Drove::up_file(drove(), &cfg, &["--quiet"]);
    let dir = cfg.parent().unwrap();
    let junit = dir.join("verify.xml");
    let admin = d.admin.to_string();
    let (code, lines) = verify(
        dir,
        &[
            "--admin",
            &admin,
            "--only",
            "health,distribution,failover",
            "--junit",
            junit.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{lines:#?}");
    assert!(line(&lines, "health").starts_with('✓'), "{lines:#?}");
    let dist = line(&lines, "distribution");
    assert!(
        dist.starts_with("✗ distribution 2/3 backends got traffic"),
        "{dist}"
    );
    assert!(
        dist.contains(&format!("{} (backup) got none", b[2].addr)),
        "{dist}"
    );
    // Drills that need the supervisor say why they are skipped.
    assert_eq!(
        line(&lines, "failover"),
        "- failover     skipped: instances are remote (static backends): nothing to kill, freeze, restart or scale"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    let cases = testcases(&xml);
    assert_eq!(cases.len(), 3, "{xml}");
    assert!(
        cases[1].contains("name=\"distribution\"")
            && cases[1].contains("<failure message=\"2/3 backends got traffic"),
        "{xml}"
    );
    assert!(
        cases[2].contains("name=\"failover\"")
            && cases[2].contains("<skipped message=\"instances are remote"),
        "{xml}"
    );
    assert!(
        xml.contains("tests=\"3\" failures=\"1\" errors=\"0\" skipped=\"1\""),
        "{xml}"
    );
    d.stop();
}

/// (b) Stickiness required but the balancer sets no sticky cookie: clients wander.
#[test]
fn stickiness_fails_without_a_sticky_cookie() {
    // With an admin token too: verify reads it from the config file.
    let cfg = write_config("verify-nosticky", |dir| {
        three_instance_config(dir).replace("sticky = { cookie = \"drove_sticky\" }\n", "")
            + "\n[admin]\ntoken = \"verify-secret\"\n"
    });
    let dir = cfg.parent().unwrap();
    let (code, lines) = verify(
        dir,
        &[
            "--start",
            "-c",
            cfg.to_str().unwrap(),
            "--only",
            "stickiness",
            "--expect-sticky",
        ],
    );
    assert_eq!(code, 1, "{lines:#?}");
    let l = line(&lines, "stickiness");
    assert!(
        l.starts_with("✗ stickiness   0/16 clients (0%) pinned"),
        "{l}"
    );
    assert!(l.contains("no sticky cookie set"), "{l}");
}

/// The control for (c): the same slow requests, retries on. Requests in flight on the
/// killed instance are retried elsewhere, none fails.
#[test]
fn failover_with_retries_on_fails_no_slow_request() {
    let cfg = write_config("verify-retry", |dir| {
        three_instance_config(dir).replace("sticky = { cookie = \"drove_sticky\" }\n", "")
    });
    let dir = cfg.parent().unwrap();
    let (code, lines) = verify(
        dir,
        &[
            "--start",
            "-c",
            cfg.to_str().unwrap(),
            "--only",
            "failover",
            "--path",
            "/slow?ms=200",
        ],
    );
    assert_eq!(code, 0, "{lines:#?}");
    let l = line(&lines, "failover");
    assert!(
        l.starts_with("✓ failover     SIGKILL web.") && l.contains(" 0 failed of "),
        "{l}"
    );
}

/// (c) Retries off, passive health off, slow active health: the requests in flight on a
/// killed instance fail, and the failover drill counts them. (Slow requests keep some in
/// flight on every instance; with retries on, the same run fails none: the test above.)
#[test]
fn failover_fails_with_retries_off_and_a_killed_instance() {
    let cfg = write_config("verify-noretry", |dir| {
        three_instance_config(dir)
            .replace("sticky = { cookie = \"drove_sticky\" }\n", "")
            .replace(
                "health = { http = \"/health\", interval = \"250ms\", timeout = \"200ms\", rise = 2, fall = 2 }",
                "health = { http = \"/health\", interval = \"5s\", timeout = \"1s\", rise = 1, fall = 3 }",
            )
            .replace("passive = { max_fails = 2, fail_timeout = \"5s\" }", "passive = { max_fails = 0 }")
            .replace("retries = { attempts = 2, per_try_timeout = \"5s\" }", "retries = { attempts = 0 }")
    });
    let dir = cfg.parent().unwrap();
    let (code, lines) = verify(
        dir,
        &[
            "--start",
            "-c",
            cfg.to_str().unwrap(),
            "--only",
            "failover",
            "--path",
            "/slow?ms=200",
            "--json",
        ],
    );
    assert_eq!(code, 1, "{lines:#?}");
    let start = lines
        .iter()
        .position(|l| l.starts_with('{'))
        .expect("JSON on stdout");
    let v: Value = serde_json::from_str(&lines[start..].join("\n")).unwrap();
    let f = &v["drills"][0];
    assert_eq!(f["name"], "failover");
    assert_eq!(f["status"], "failed", "{f:#}");
    assert!(f["numbers"]["failed"].as_u64().unwrap() > 0, "{f:#}");
    assert_eq!(f["numbers"]["retries"], 0, "{f:#}");
    let summary = f["summary"].as_str().unwrap();
    assert!(summary.starts_with("SIGKILL web."), "{summary}");
    assert!(!summary.contains(" 0 failed of "), "{summary}");
}

/// SIGTERM in the middle of the freeze drill: the frozen instance gets SIGCONT, the drove
/// verify started is stopped, and verify exits.
#[test]
fn interrupted_verify_stops_the_drove_it_started() {
    let cfg = write_config("verify-interrupt", three_instance_config);
    let dir = cfg.parent().unwrap();
    let mut cmd = Command::new(drove());
    cmd.args([
        "verify",
        "--start",
        "-c",
        cfg.to_str().unwrap(),
        "--only",
        "freeze",
        "--duration",
        "10s",
    ])
    .current_dir(dir);
    let mut p = Proc::spawn(cmd);
    let started = p
        .wait_line(Duration::from_secs(30), |l| {
            l.starts_with("verify: started drove (pid ")
        })
        .expect("verify starts a drove");
    let pid: u32 = started["verify: started drove (pid ".len()..]
        .split(')')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(drove_test_support::alive(pid));
    // The freeze drill is under way 0.5 s into its load; interrupt it while frozen.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(drove_test_support::signal(
        p.pid(),
        nix::sys::signal::Signal::SIGTERM
    ));
    let status = p
        .wait_exit(Duration::from_secs(45))
        .expect("verify exits after SIGTERM");
    assert_eq!(status.code(), Some(1));
    assert!(
        drove_test_support::wait_until(Duration::from_secs(5), || !drove_test_support::alive(pid)),
        "the drove verify started is gone"
    );
}

#[test]
fn limits_drill_counts_429s_against_rate_and_burst() {
    let cfg = write_config("vlimits", |_| {
        format!(
            r#"[services.web]
command = ["{drove}", "demo"]
instances = 2
port = "auto"
ready = {{ http = "/ready", interval = "100ms" }}

[balancer]
service = "web"
instance_header = "X-Drove-Instance"

[[balancer.routes]]
path = "/api/"
limit = "api"

[limits.api]
key = "header:X-API-Key"
rate = "40/s"
burst = 10
"#,
            drove = drove().display()
        )
    });
    let dir = cfg.parent().unwrap().to_path_buf();
    let (code, lines) = verify(
        &dir,
        &["--start", "-c", cfg.to_str().unwrap(), "--only", "limits"],
    );
    assert_eq!(code, 0, "{lines:#?}");
    let l = line(&lines, "limits");
    assert!(l.starts_with('✓') && l.contains("got 429"), "{l}");
}

/// A distribution that fails because a backend went away during the run says so (failed
/// connects, its failed tries and ejection), instead of a bare χ² that reads as "round
/// robin is broken".
#[test]
fn a_distribution_failure_from_a_backend_that_went_away_names_the_cause() {
    let mut b: Vec<_> = (1..=3).map(|i| demo(drove(), &format!("b{i}"))).collect();
    let cfg = write_config("verify-connect-errors", |_| {
        crate::static_config(
            &b.iter().map(|d| d.addr).collect::<Vec<_>>(),
            // Passive health finds the dead backend (a refused connect ejects it for the
            // rest of the run), not the active probe: on a starved machine a 250 ms probe
            // could take it out while the load generator stalls, before any request
            // failed, leaving nothing for verify to explain.
            "health = { http = \"/health\", interval = \"20s\", rise = 1, fall = 1 }\npassive = { max_fails = 1, fail_timeout = \"30s\" }",
        )
    });
    let d = Drove::up_file(drove(), &cfg, &["--quiet"]);
    assert!(d.wait_in_rotation(3, Duration::from_secs(20)));
    let dir = cfg.parent().unwrap().to_path_buf();
    let admin = d.admin.to_string();
    let runner = std::thread::spawn(move || {
        verify(
            &dir,
            &["--admin", &admin, "--only", "distribution", "-d", "6s"],
        )
    });
    // Well inside the 6 s run (verify starts within a fraction of a second): the third
    // backend dies; connects to it are refused, and it is ejected.
    std::thread::sleep(Duration::from_millis(2500));
    let gone = b.pop().unwrap();
    assert!(drove_test_support::signal(
        gone.proc.pid(),
        nix::sys::signal::Signal::SIGKILL
    ));
    let (code, lines) = runner.join().unwrap();
    assert_eq!(code, 1, "{lines:#?}");
    let l = line(&lines, "distribution");
    assert!(l.starts_with("✗ distribution"), "{l}");
    assert!(l.contains("round_robin: χ² p="), "{l}");
    let id = gone.addr.to_string();
    assert!(
        l.contains("not the algorithm: during the run drove saw ")
            && l.contains(" failed connects")
            && l.contains(&format!("tries: {id} "))
            && l.contains(&format!("out of rotation by the end: {id}")),
        "{l}"
    );
    d.stop();
}

/// A freeze drill that fails names the settings that decide it, with their values.
#[test]
fn a_failed_freeze_drill_names_the_settings_that_decide_it() {
    let cfg = write_config("verify-slow-eject", |dir| {
        three_instance_config(dir)
            .replace("sticky = { cookie = \"drove_sticky\" }\n", "")
            .replace(
                "health = { http = \"/health\", interval = \"250ms\", timeout = \"200ms\", rise = 2, fall = 2 }",
                "health = { http = \"/health\", interval = \"4s\", timeout = \"1s\", rise = 1, fall = 3 }",
            )
            .replace("passive = { max_fails = 2, fail_timeout = \"5s\" }", "passive = { max_fails = 0 }")
    });
    let dir = cfg.parent().unwrap();
    let (code, lines) = verify(
        dir,
        &["--start", "-c", cfg.to_str().unwrap(), "--only", "freeze"],
    );
    assert_eq!(code, 1, "{lines:#?}");
    let l = line(&lines, "freeze");
    assert!(
        l.starts_with("✗ freeze") && l.contains("not ejected within 5.00s"),
        "{l}"
    );
    assert!(
        l.contains("decided by: ejection by [balancer] health (http /health): interval × fall = 4s × 3 = 12.00s")
            && l.contains("passive ejection off (max_fails = 0)")
            && l.contains("retries.per_try_timeout = 5s"),
        "{l}"
    );
}

/// The supervisor replaces an instance whose liveness probe fails while it is frozen:
/// the drill reports the replacement, not "healthy again after never".
#[test]
fn a_frozen_instance_that_the_supervisor_replaced_is_reported_as_replaced() {
    let cfg = write_config("verify-replaced", |dir| {
        three_instance_config(dir)
            .replace("sticky = { cookie = \"drove_sticky\" }\n", "")
            .replace(
                "ready = { http = \"/ready\", interval = \"50ms\" }",
                "ready = { http = \"/ready\", interval = \"50ms\" }\nhealth = { http = \"/health\", interval = \"200ms\", timeout = \"100ms\", fall = 2 }",
            )
    });
    let dir = cfg.parent().unwrap();
    let (code, lines) = verify(
        dir,
        &[
            "--start",
            "-c",
            cfg.to_str().unwrap(),
            "--only",
            "freeze",
            "--json",
        ],
    );
    let start = lines
        .iter()
        .position(|l| l.starts_with('{'))
        .expect("JSON on stdout");
    let v: Value = serde_json::from_str(&lines[start..].join("\n")).unwrap();
    let f = &v["drills"][0];
    assert_eq!(code, 0, "{f:#}");
    let summary = f["summary"].as_str().unwrap();
    assert!(
        summary.contains("replaced by the supervisor (its health probe failed while frozen)")
            && !summary.contains("never"),
        "{summary}"
    );
    assert!(f["numbers"]["replaced_by"].is_string(), "{f:#}");
    assert_eq!(f["numbers"]["healthy_again_s"], Value::Null, "{f:#}");
}

/// `drove init`'s suggested probes, uncommented as a user would (with the demo as the
/// app), pass every drill.
#[test]
fn the_init_templates_suggested_probes_pass_verify() {
    let cfg = write_config("verify-init", |_| {
        let mut t = drove_config::INIT_TEMPLATE.replace(
            "command = \"node server.js\"",
            &format!("command = [\"{}\", \"demo\"]", drove().display()),
        );
        for key in ["ready", "health"] {
            let commented = t
                .lines()
                .find(|l| l.starts_with(&format!("# {key} = {{ http")))
                .unwrap_or_else(|| panic!("the template suggests a {key} probe"))
                .to_string();
            t = t.replacen(&commented, &commented[2..], 1);
        }
        t
    });
    let dir = cfg.parent().unwrap();
    let (code, lines) = verify(dir, &["--start", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{lines:#?}");
    for drill in [
        "health",
        "distribution",
        "failover",
        "freeze",
        "restart",
        "scale",
    ] {
        assert!(line(&lines, drill).starts_with('✓'), "{lines:#?}");
    }
}
