//! `drove up` with supervised services, under load: rolling restart, scale, SIGKILL of
//! an instance, crashloop, max_memory, shutdown leaving no process, Redis sessions.

use std::time::{Duration, Instant};

use drove_api::InstanceState;
use drove_test_support::load::{Load, LoadSpec};
use drove_test_support::{alive, http, signal, wait_until, Drove};
use nix::sys::signal::Signal;
use serde_json::json;

use crate::{drove, now_ms};

/// A web service of `n` demo instances behind the balancer, plus `extra` TOML.
fn web_config(n: u32, extra_service: &str, extra: &str) -> String {
    format!(
        r#"[services.web]
command = ["{drove}", "demo"]
instances = {n}
port = "auto"
ready = {{ http = "/ready", interval = "50ms" }}
stop = {{ signal = "TERM", grace = "5s" }}
restart = {{ initial_delay = "100ms", max_delay = "2s" }}
logs = {{ dir = "logs" }}
{extra_service}

[balancer]
service = "web"
workers = 1
instance_header = "X-Drove-Instance"
health = {{ http = "/health", interval = "250ms", timeout = "200ms", rise = 1, fall = 2 }}
passive = {{ max_fails = 2, fail_timeout = "2s" }}
retries = {{ attempts = 2, per_try_timeout = "2s" }}
{extra}
"#,
        drove = drove().display()
    )
}

fn states(d: &Drove, service: &str) -> Vec<(String, String, u64)> {
    d.status()
        .instances_of(service)
        .map(|i| {
            (
                i.id.clone(),
                i.state.to_string(),
                u64::from(i.pid.unwrap_or(0)),
            )
        })
        .collect()
}

fn ready_count(d: &Drove, service: &str) -> usize {
    states(d, service)
        .iter()
        .filter(|(_, s, _)| s == "ready")
        .count()
}

#[test]
fn rolling_restart_under_load_fails_no_request() {
    let d = Drove::up(drove(), &web_config(3, "", ""));
    assert!(
        d.wait_in_rotation(3, Duration::from_secs(20)),
        "{:?}",
        d.status()
    );
    let before: Vec<u64> = states(&d, "web").iter().map(|s| s.2).collect();
    let load = Load::start(LoadSpec::get(d.addr(), "/whoami", 8));
    std::thread::sleep(Duration::from_millis(500));
    let r = d.post("/api/restart", &json!({"service": "web"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.doc::<drove_api::RestartAnswer>().replaced.len(), 3);
    std::thread::sleep(Duration::from_millis(500));
    let s = load.stop();
    assert_eq!(s.failed, 0, "failed: {:?}", s.failures);
    assert!(s.ok > 100);
    let after: Vec<u64> = states(&d, "web").iter().map(|s| s.2).collect();
    assert_eq!(after.len(), 3);
    for p in &before {
        assert!(
            !after.contains(p),
            "old instance {p} still there: {after:?}"
        );
        assert!(!alive(*p as u32), "old process {p} still alive");
    }
}

#[test]
fn scale_up_and_down_under_load_fails_no_request() {
    let d = Drove::up(drove(), &web_config(2, "", ""));
    assert!(d.wait_in_rotation(2, Duration::from_secs(20)));
    let load = Load::start(LoadSpec::get(d.addr(), "/whoami", 8));
    std::thread::sleep(Duration::from_millis(300));
    let r = d.post("/api/scale", &json!({"service": "web", "instances": 10}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        d.wait_in_rotation(10, Duration::from_secs(30)),
        "{:?}",
        d.status()
    );
    // Every new instance gets traffic within a second of joining.
    std::thread::sleep(Duration::from_secs(1));
    let mid = load.stop();
    assert_eq!(
        mid.per_instance.len(),
        10,
        "all 10 serve: {:?}",
        mid.per_instance
    );
    let load = Load::start(LoadSpec::get(d.addr(), "/whoami", 8));
    let r = d.post("/api/scale", &json!({"service": "web", "instances": 2}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(d.wait_in_rotation(2, Duration::from_secs(30)));
    std::thread::sleep(Duration::from_millis(300));
    let s = load.stop();
    assert_eq!(
        mid.failed + s.failed,
        0,
        "failed: {:?} {:?}",
        mid.failures,
        s.failures
    );
    assert!(wait_until(Duration::from_secs(10), || states(&d, "web")
        .len()
        == 2));
}

#[test]
fn a_killed_instance_fails_no_request_and_comes_back() {
    let d = Drove::up(drove(), &web_config(3, "", ""));
    assert!(d.wait_in_rotation(3, Duration::from_secs(20)));
    let load = Load::start(LoadSpec::get(d.addr(), "/whoami", 8));
    std::thread::sleep(Duration::from_millis(500));
    let (id, _, pid) = states(&d, "web")[1].clone();
    assert!(signal(pid as i32, Signal::SIGKILL));
    // Back after backoff, with a new pid and a restart counted.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let s = d.status();
            s.instance(&id).is_some_and(|i| {
                i.state == InstanceState::Ready
                    && i.pid.map(u64::from) != Some(pid)
                    && i.restarts == Some(1)
                    // The killed process's end is recorded: SIGKILL, a moment ago.
                    && i.last_exit.as_ref().is_some_and(|e| e.signal == Some(9) && e.at_ms > 0)
            })
        }),
        "{:?}",
        d.status()
    );
    std::thread::sleep(Duration::from_millis(500));
    let s = load.stop();
    assert_eq!(s.failed, 0, "failed: {:?}", s.failures);
    assert!(
        s.per_instance.contains_key(&id),
        "the restarted instance serves again"
    );
}

#[test]
fn a_crashing_service_shows_crashloop_while_web_keeps_serving() {
    let bad = r#"
[services.bad]
command = "echo starting; exit 3"
port = "none"
restart = { initial_delay = "50ms", max_delay = "400ms", reset_after = "10s", crashloop_after = 3 }
"#;
    let d = Drove::up(drove(), &web_config(2, bad, ""));
    assert!(d.wait_in_rotation(2, Duration::from_secs(20)));
    assert!(
        wait_until(Duration::from_secs(10), || states(&d, "bad")
            .iter()
            .any(|s| s.1 == "crashloop")),
        "{:?}",
        d.status()
    );
    let st = d.status();
    let bad1 = st.instance("bad.1").unwrap().clone();
    // Three quick exits (two restarts) make a crashloop; it is still retried, slowly.
    let restarts = bad1.restarts.unwrap();
    assert!(restarts >= 2, "{bad1:?}");
    // Status says how it last ended and when, why it is in crashloop and when it is
    // retried next.
    let exit = bad1.last_exit.clone().expect("last exit");
    assert_eq!((exit.code, exit.text.as_str()), (Some(3), "exit code 3"));
    let now = now_ms();
    assert!(exit.at_ms <= now && now - exit.at_ms < 10_000, "{exit:?}");
    let why = bad1.why.clone().unwrap_or_default();
    assert!(
        why.contains("exited (exit code 3)")
            && why.contains("crashloop: 3 failed runs in a row")
            && why.contains("max_delay (0.4s)")
            && why.contains("next try in"),
        "{why}"
    );
    let retry = bad1.retry_at_ms.expect("retry time");
    assert!(retry + 50 >= now && retry <= now + 450, "{retry} vs {now}");
    // `drove status` prints the reason under the table.
    let table = d.cli_ok(&["status"]);
    assert!(
        table.contains("LAST EXIT") && table.contains("exit 3, "),
        "{table}"
    );
    assert!(
        table.contains("bad.1 crashloop: exited (exit code 3)"),
        "{table}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || {
            d.status().instance("bad.1").unwrap().restarts.unwrap() > restarts
        }),
        "crashlooping instance is still retried"
    );
    for _ in 0..20 {
        assert_eq!(http::get(d.addr(), "/health").unwrap().status, 200);
    }
    assert_eq!(ready_count(&d, "web"), 2);
}

#[test]
fn max_memory_triggers_a_drained_restart_without_failures() {
    let d = Drove::up(drove(), &web_config(2, "max_memory = \"60MiB\"", ""));
    assert!(d.wait_in_rotation(2, Duration::from_secs(20)));
    let load = Load::start(LoadSpec::get(d.addr(), "/whoami", 4));
    std::thread::sleep(Duration::from_millis(300));
    // One instance leaks past the limit (the request itself succeeds).
    let r = http::get(d.addr(), "/leak?mb=80").unwrap();
    assert_eq!(r.status, 200);
    let leaker = r.header("x-drove-instance").unwrap().to_string();
    let old_pid = states(&d, "web").iter().find(|s| s.0 == leaker).unwrap().2;
    assert!(
        wait_until(Duration::from_secs(15), || !alive(old_pid as u32)
            && ready_count(&d, "web") == 2),
        "{:?}",
        d.status()
    );
    std::thread::sleep(Duration::from_millis(300));
    let s = load.stop();
    assert_eq!(s.failed, 0, "failed: {:?}", s.failures);
}

/// The pids of every process in drove's tree (children, grandchildren).
pub(crate) fn tree(root: u32) -> Vec<u32> {
    let mut all = vec![root];
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        // Children are listed per thread (drove spawns from a dedicated thread).
        let tasks = std::fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten()
            .flatten();
        for t in tasks {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                all.extend(s.split_whitespace().filter_map(|x| x.parse::<u32>().ok()));
            }
        }
        i += 1;
    }
    all
}

fn shutdown_leaves_nothing(how: &str) {
    let extra = r#"
[services.worker]
command = "sleep 1000 & sleep 1000"
port = "none"
stop = { grace = "1s" }
"#;
    let d = Drove::up(drove(), &web_config(2, extra, ""));
    assert!(d.wait_in_rotation(2, Duration::from_secs(20)));
    assert!(wait_until(Duration::from_secs(5), || tree(
        d.proc.pid() as u32
    )
    .len()
        >= 6));
    let procs = tree(d.proc.pid() as u32);
    assert!(procs.len() >= 6, "drove, 2 web, sh + 2 sleeps: {procs:?}");
    let t0 = Instant::now();
    match how {
        "down" => {
            d.cli_ok(&["down"]);
        }
        "int" => assert!(signal(d.proc.pid(), Signal::SIGINT)),
        _ => assert!(signal(d.proc.pid(), Signal::SIGTERM)),
    }
    let mut d = d;
    let status = d
        .proc
        .wait_exit(Duration::from_secs(30))
        .expect("drove exits");
    assert!(status.success(), "{status:?}");
    assert!(t0.elapsed() < Duration::from_secs(15));
    for p in procs {
        assert!(
            wait_until(Duration::from_secs(2), || !alive(p)),
            "process {p} survived `{how}`"
        );
    }
}

#[test]
fn drove_down_leaves_no_process() {
    shutdown_leaves_nothing("down");
}

#[test]
fn ctrl_c_leaves_no_process() {
    shutdown_leaves_nothing("int");
}

#[test]
fn sigterm_leaves_no_process() {
    shutdown_leaves_nothing("term");
}

#[test]
fn drain_and_undrain_an_instance() {
    let d = Drove::up(drove(), &web_config(3, "", ""));
    assert!(d.wait_in_rotation(3, Duration::from_secs(20)));
    d.cli_ok(&["drain", "web.2"]);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        seen.insert(
            http::get(d.addr(), "/whoami")
                .unwrap()
                .header("x-drove-instance")
                .unwrap()
                .to_string(),
        );
    }
    assert!(!seen.contains("web.2"), "{seen:?}");
    assert!(states(&d, "web")
        .iter()
        .any(|s| s.0 == "web.2" && s.1 == "drained"));
    d.cli_ok(&["undrain", "web.2"]);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        seen.insert(
            http::get(d.addr(), "/whoami")
                .unwrap()
                .header("x-drove-instance")
                .unwrap()
                .to_string(),
        );
    }
    assert!(seen.contains("web.2"));
    // `drove status` prints the table.
    let table = d.cli_ok(&["status"]);
    assert!(
        table.contains("INSTANCE") && table.contains("web.3") && table.contains("ready"),
        "{table}"
    );
}

#[test]
fn sessions_through_redis_survive_a_change_of_instance() {
    let Some(redis) = which("redis-server") else {
        panic!("redis-server is required (scripts/test installs it)");
    };
    let port = drove_test_support::free_port();
    let extra_service = format!(
        r#"env = {{ REDIS_URL = "redis://127.0.0.1:{port}/" }}
depends_on = ["redis"]

[services.redis]
command = ["{redis}", "--port", "{port}", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
port = "none"
ready = {{ tcp = "127.0.0.1:{port}" }}
"#,
        redis = redis.display()
    );
    let d = Drove::up(drove(), &web_config(3, &extra_service, ""));
    assert!(
        d.wait_in_rotation(3, Duration::from_secs(20)),
        "{:?}",
        d.status()
    );
    let mut c = drove_test_support::http::Conn::open(d.addr(), Duration::from_secs(5)).unwrap();
    let first = c.request("GET", "/session", &[], b"").unwrap();
    assert_eq!(first.status, 200, "{}", first.text());
    let cookie = first
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let mut instances = std::collections::BTreeSet::new();
    for n in 2..=12 {
        let r = c
            .request("GET", "/session", &[("Cookie", &cookie)], b"")
            .unwrap();
        let v = r.json();
        assert_eq!(v["count"], n, "{v}");
        assert_eq!(v["store"], "redis");
        instances.insert(r.header("x-drove-instance").unwrap().to_string());
    }
    assert_eq!(
        instances.len(),
        3,
        "requests landed on every instance: {instances:?}"
    );
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
}

#[test]
fn restarting_one_instance_restarts_only_it_in_place_without_failures() {
    let d = Drove::up(drove(), &web_config(3, "", ""));
    assert!(d.wait_in_rotation(3, Duration::from_secs(20)));
    let before = states(&d, "web");
    let (_, _, old_pid) = before.iter().find(|s| s.0 == "web.2").cloned().unwrap();
    let load = Load::start(LoadSpec::get(d.addr(), "/whoami", 8));
    std::thread::sleep(Duration::from_millis(300));
    d.cli_ok(&["restart", "web.2"]);
    std::thread::sleep(Duration::from_millis(300));
    let s = load.stop();
    assert_eq!(s.failed, 0, "failed: {:?}", s.failures);
    let after = states(&d, "web");
    assert_eq!(after.len(), 3, "{after:?}");
    let (_, state, new_pid) = after.iter().find(|x| x.0 == "web.2").cloned().unwrap();
    assert_eq!(state, "ready", "{after:?}");
    assert_ne!(new_pid, old_pid, "web.2 runs a new process: {after:?}");
    assert!(!alive(old_pid as u32));
    // The others kept their processes.
    for (id, _, pid) in before.iter().filter(|x| x.0 != "web.2") {
        assert!(
            after.iter().any(|x| &x.0 == id && x.2 == *pid),
            "{id} untouched"
        );
    }
    let r = d.post("/api/restart", &json!({"instance": "web.9"}));
    assert_eq!(r.status, 422, "{}", r.text());
}

#[test]
fn command_placeholders_escapes_and_shell_braces_reach_the_process_as_documented() {
    // `{port}`/`{instance}` substituted, `{{port}}` a literal `{port}`, `${...}` and
    // `{a,b}` left to the shell (bash-style expansions; sh prints them unexpanded).
    let cfg = r#"[services.echo]
command = '''echo "lit={{port}} port={port} id={instance} home=${HOME:+set} brace={a,b}"; sleep 30'''
port = 47311
ready = false
"#;
    let d = Drove::up(drove(), cfg);
    let line = d
        .proc
        .wait_line(Duration::from_secs(10), |l| l.contains("echo.1 | lit="))
        .expect("the service's output");
    assert!(
        line.ends_with("echo.1 | lit={port} port=47311 id=1 home=set brace={a,b}"),
        "{line}"
    );
}

#[test]
fn reload_applies_changed_settings_with_a_rolling_restart_and_refuses_a_bad_file() {
    let d = Drove::up(drove(), &web_config(2, "", ""));
    assert!(
        d.wait_in_rotation(2, Duration::from_secs(20)),
        "{:?}",
        d.status()
    );
    let before: Vec<u64> = states(&d, "web").iter().map(|s| s.2).collect();
    let load = Load::start(LoadSpec::get(d.addr(), "/whoami", 4));
    std::thread::sleep(Duration::from_millis(300));

    // New env for web and one more instance: a rolling restart and a scale, no failure.
    std::fs::write(&d.config, web_config(3, "env = { GREETING = \"v2\" }", "")).unwrap();
    let out = d.cli_ok(&["reload"]);
    assert!(
        out.contains("applied services.web: new settings, rolling restart of 2 instance(s)"),
        "{out}"
    );
    assert!(
        out.contains("applied services.web.instances: 2 -> 3"),
        "{out}"
    );
    assert!(
        d.wait_in_rotation(3, Duration::from_secs(20)),
        "{:?}",
        d.status()
    );
    std::thread::sleep(Duration::from_millis(300));
    let s = load.stop();
    assert_eq!(s.failed, 0, "failed: {:?}", s.failures);
    let after: Vec<u64> = states(&d, "web").iter().map(|s| s.2).collect();
    assert_eq!(after.len(), 3);
    for p in &before {
        assert!(
            !after.contains(p),
            "instance {p} was not replaced: {after:?}"
        );
    }

    // A file with an error changes nothing and says where the error is.
    std::fs::write(&d.config, web_config(2, "instances = \"two\"", "")).unwrap();
    let out = d.cli(&["reload"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("drove.toml:") && err.contains("instances"),
        "{err}"
    );
    assert_eq!(ready_count(&d, "web"), 3);

    // SIGHUP reloads too: back to 2 instances.
    std::fs::write(&d.config, web_config(2, "env = { GREETING = \"v2\" }", "")).unwrap();
    assert!(signal(d.proc.pid(), Signal::SIGHUP));
    assert!(
        wait_until(Duration::from_secs(20), || ready_count(&d, "web") == 2
            && states(&d, "web").len() == 2),
        "{:?}",
        d.status()
    );
}
