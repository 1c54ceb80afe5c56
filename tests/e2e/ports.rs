//! Ports drove can trust: drove never routes to a process it did not start, a second
//! drove cannot share a `listen` address, nothing outlives `kill -9` of drove, and
//! `drove down && drove up` does not race. Each case ends with a clear message.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use drove_api::InstanceState;
use drove_test_support::{alive, free_port, http, signal, tempdir, wait_until, Drove, Proc};
use nix::sys::signal::Signal;

use crate::drove;

/// A base port such that `base..base + n` are all free now.
fn free_ports(n: u16) -> u16 {
    for _ in 0..200 {
        let base = free_port();
        if base > u16::MAX - n {
            continue;
        }
        if (0..n).all(|k| TcpListener::bind(("0.0.0.0", base + k)).is_ok()) {
            return base;
        }
    }
    panic!("no {n} consecutive free ports");
}

/// `n` instances of `command` on fixed ports from `base`, plus `extra` TOML at the end.
fn fixed_config(base: u16, n: u32, command: &str, extra: &str) -> String {
    format!(
        r#"[services.web]
command = {command}
instances = {n}
port = {base}
ready = {{ http = "/ready", interval = "50ms" }}
stop = {{ signal = "TERM", grace = "5s" }}
restart = {{ initial_delay = "100ms", max_delay = "500ms" }}
logs = {{ dir = "logs" }}

[balancer]
service = "web"
workers = 1
instance_header = "X-Drove-Instance"
{extra}
"#
    )
}

/// The demo app as an argv command.
fn demo_argv() -> String {
    format!("[\"{}\", \"demo\"]", drove().display())
}

fn write_config(tag: &str, text: &str) -> PathBuf {
    let path = tempdir(tag).join("drove.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `drove up -c path` with the file's own addresses (no overrides), its stderr in a
/// file (the guardian's messages go there too).
fn up_as_configured(path: &Path) -> (Proc, PathBuf) {
    let err = path.with_file_name("stderr.txt");
    let mut cmd = Command::new(drove());
    cmd.arg("up")
        .arg("-c")
        .arg(path)
        .current_dir(path.parent().unwrap())
        .stderr(Stdio::from(File::create(&err).unwrap()));
    (Proc::spawn(cmd), err)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The address in a `drove: ... on http://ADDR/` line.
fn announced(p: &Proc, prefix: &str) -> SocketAddr {
    let line = p
        .wait_line(Duration::from_secs(20), |l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line: {:?}", p.stdout.lock().unwrap()));
    let rest = &line[line.find("http://").unwrap() + 7..];
    rest[..rest.find('/').unwrap()].parse().unwrap()
}

/// A process started outside drove (the test's own, in its own session): SIGKILLed on drop.
struct Foreign(u32);

impl Drop for Foreign {
    fn drop(&mut self) {
        signal(self.0 as i32, Signal::SIGKILL);
    }
}

fn demo_requests(addr: SocketAddr) -> u64 {
    http::get(addr, "/stats").unwrap().json()["requests"]
        .as_u64()
        .unwrap()
}

#[test]
fn an_instance_port_held_by_another_program_is_refused_and_never_gets_traffic() {
    let base = free_ports(2);
    // Another program on web.2's port, answering /ready like the app would.
    let mut cmd = Command::new(drove());
    cmd.arg("demo")
        .env("PORT", (base + 1).to_string())
        .env("DROVE_INSTANCE", "foreign");
    let foreign = Proc::spawn(cmd);
    let foreign_addr = SocketAddr::from(([127, 0, 0, 1], base + 1));
    assert!(wait_until(Duration::from_secs(10), || http::get(
        foreign_addr,
        "/ready"
    )
    .is_ok_and(|r| r.status == 200)));

    let d = Drove::up(drove(), &fixed_config(base, 2, &demo_argv(), ""));
    let refused = format!(
        "not started: port {} is in use by pid {} (",
        base + 1,
        foreign.pid()
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            let st = d.status();
            let web1 = st
                .instance("web.1")
                .is_some_and(|i| i.state == InstanceState::Ready);
            let web2 = st.instance("web.2").is_some_and(|i| {
                matches!(i.state, InstanceState::Backoff | InstanceState::Crashloop)
                    && i.pid.is_none()
                    && i.why.as_deref().is_some_and(|w| w.contains(&refused))
            });
            web1 && web2
        }),
        "{:?}",
        d.status()
    );
    // Said once per try in drove's output, naming the holder and its command.
    let line = d
        .proc
        .wait_line(Duration::from_secs(5), |l| {
            l.starts_with("web.2 | [drove] ") && l.contains(&refused)
        })
        .expect("the refusal is printed");
    assert!(line.contains("drove demo)"), "{line}");
    assert!(d.wait_in_rotation(1, Duration::from_secs(10)));

    // No request reaches the other program.
    let before = demo_requests(foreign_addr);
    for _ in 0..60 {
        let r = http::get(d.addr(), "/whoami").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-drove-instance"), Some("web.1"));
        assert_eq!(r.header("x-demo-instance"), Some("web.1"));
    }
    assert_eq!(
        demo_requests(foreign_addr),
        before + 1,
        "only this /stats call reached the other program"
    );

    // Once the port is free, web.2 starts there.
    drop(foreign);
    assert!(
        wait_until(Duration::from_secs(20), || d
            .status()
            .instance("web.2")
            .is_some_and(
                |i| i.state == InstanceState::Ready && i.port == Some(base + 1)
            )),
        "{:?}",
        d.status()
    );
    assert!(d.wait_in_rotation(2, Duration::from_secs(10)));
}

#[test]
fn a_probe_answered_by_a_process_outside_the_instance_does_not_make_it_ready() {
    let base = free_ports(1);
    // The app hands its port to a process in another session (setsid: outside the
    // instance's process group), which answers the ready probe; the instance itself
    // listens on nothing.
    let command = "\"setsid {drove} demo >/dev/null 2>&1 & echo $! > holder.pid; exec sleep 60\"";
    let path = write_config("probe-owner", &fixed_config(base, 1, command, ""));
    let d = Drove::up_file(drove(), &path, &[]);
    let pidfile = path.with_file_name("holder.pid");
    assert!(wait_until(Duration::from_secs(10), || read(&pidfile)
        .trim()
        .parse::<u32>()
        .is_ok()));
    let holder: u32 = read(&pidfile).trim().parse().unwrap();
    let _cleanup = Foreign(holder);
    let answered = format!("port {base} is in use by pid {holder} (");
    assert!(
        wait_until(Duration::from_secs(20), || {
            d.status().instance("web.1").is_some_and(|i| {
                i.state == InstanceState::Starting
                    && i.last_probe_error.as_deref().is_some_and(|e| {
                        e.contains(&answered) && e.contains("not by this instance")
                    })
                    && i.why
                        .as_deref()
                        .is_some_and(|w| w.starts_with("ready probe failing for"))
            })
        }),
        "{:?}",
        d.status()
    );
    assert!(d
        .proc
        .wait_line(Duration::from_secs(5), |l| l
            .starts_with("web.1 | [drove] not ready: ")
            && l.contains(&answered))
        .is_some());
    // Never in rotation: the balancer has nobody to send requests to.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(d.status().backends().len(), 0, "{:?}", d.status());
    assert_eq!(http::get(d.addr(), "/whoami").unwrap().status, 503);
}

#[test]
fn a_second_drove_on_the_same_listen_address_fails_at_startup() {
    let listen = free_port();
    let cfg = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        fixed_config(
            free_ports(2),
            2,
            &demo_argv(),
            &format!("listen = \"127.0.0.1:{listen}\"")
        )
    );
    let path = write_config("listen-twice", &cfg);
    let (first, _) = up_as_configured(&path);
    let addr = announced(&first, "drove: balancer on");
    assert_eq!(addr.port(), listen);
    let admin = announced(&first, "drove: admin API");
    let first_status = || -> drove_api::Status {
        serde_json::from_slice(&http::get(admin, "/api/status").unwrap().body).unwrap()
    };
    assert!(wait_until(Duration::from_secs(20), || first_status()
        .backends()
        .iter()
        .filter(|b| b.healthy && b.enabled)
        .count()
        == 2));

    let (mut second, err) = up_as_configured(&path);
    let status = second
        .wait_exit(Duration::from_secs(20))
        .expect("the second drove exits instead of sharing the address");
    assert!(!status.success());
    let err = read(&err);
    assert!(
        err.contains(&format!(
            "cannot listen on 127.0.0.1:{listen} (balancer.listen): port {listen} is in use by pid {}",
            first.pid()
        )) && err.contains("another drove"),
        "{err}"
    );
    // Every request is still answered by the first drove's instances.
    for _ in 0..30 {
        let r = http::get(addr, "/whoami").unwrap();
        assert_eq!(r.status, 200);
        let who = r.header("x-drove-instance").unwrap_or_default();
        assert!(who == "web.1" || who == "web.2", "{who}");
    }
    assert_eq!(first_status().pid, first.pid() as u32);
}

#[test]
fn kill_9_of_drove_leaves_no_process_and_the_next_up_starts_clean() {
    let base = free_ports(2);
    // Through `sh -c` (kept as the parent by `; true`): the app is drove's grandchild,
    // which PR_SET_PDEATHSIG does not reach.
    let command = "\"{drove} demo; true\"";
    let cfg = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        fixed_config(base, 2, command, "listen = \"127.0.0.1:0\"")
    );
    let path = write_config("kill9", &cfg);
    let (mut first, err) = up_as_configured(&path);
    let admin = announced(&first, "drove: admin API");
    let ready = |admin: SocketAddr| {
        serde_json::from_slice::<drove_api::Status>(&http::get(admin, "/api/status").unwrap().body)
            .unwrap()
            .instances
            .iter()
            .filter(|i| i.state == InstanceState::Ready)
            .count()
    };
    assert!(wait_until(Duration::from_secs(20), || ready(admin) == 2));
    let procs = crate::supervisor::tree(first.pid() as u32);
    // drove, its guardian, and per instance `sh` + the demo app.
    assert!(procs.len() >= 6, "{procs:?}");

    assert!(signal(first.pid(), Signal::SIGKILL));
    first
        .wait_exit(Duration::from_secs(5))
        .expect("drove is gone");
    for p in &procs {
        assert!(
            wait_until(Duration::from_secs(10), || !alive(*p)),
            "process {p} outlived kill -9 of drove"
        );
    }
    let said = read(&err);
    assert!(
        said.contains(&format!(
            "drove guardian: drove (pid {}) ended without stopping its instances; stopping web.",
            first.pid()
        )),
        "{said}"
    );

    // The next `drove up` gets the same ports, from processes of its own.
    let (second, _) = up_as_configured(&path);
    let admin = announced(&second, "drove: admin API");
    assert!(
        wait_until(Duration::from_secs(20), || ready(admin) == 2),
        "{}",
        read(&path.with_file_name("stderr.txt"))
    );
    let listen = announced(&second, "drove: balancer on");
    let r = http::get(listen, "/whoami").unwrap();
    assert_eq!(r.status, 200);
    let pid = r.json()["pid"].as_u64().unwrap() as u32;
    assert!(!procs.contains(&pid), "served by a new process");
}

#[test]
fn drove_down_waits_so_down_and_up_back_to_back_just_works() {
    let base = free_ports(2);
    let (listen, admin) = (free_port(), free_port());
    let cfg = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n",
        fixed_config(
            base,
            2,
            &demo_argv(),
            &format!("listen = \"127.0.0.1:{listen}\"")
        )
    );
    let path = write_config("down-up", &cfg);
    let (mut first, _) = up_as_configured(&path);
    let first_admin = announced(&first, "drove: admin API");
    let drove_status = |admin: SocketAddr| -> drove_api::Status {
        serde_json::from_slice(&http::get(admin, "/api/status").unwrap().body).unwrap()
    };
    assert!(wait_until(Duration::from_secs(20), || drove_status(
        first_admin
    )
    .instances
    .iter()
    .all(|i| i.state == InstanceState::Ready)
        && drove_status(first_admin).instances.len() == 2));
    let old: Vec<u32> = drove_status(first_admin)
        .instances
        .iter()
        .filter_map(|i| i.pid)
        .collect();

    let out = crate::output_ok(Command::new(drove()).arg("down").arg("-c").arg(&path));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("shutting down") && text.contains("stopped (drove and 2 instance(s) gone"),
        "{text}"
    );
    // When `drove down` returns, drove and its instances are gone.
    assert!(
        !alive(first.pid() as u32),
        "drove still runs after `drove down`"
    );
    for p in &old {
        assert!(!alive(*p), "instance {p} still runs after `drove down`");
    }
    assert!(first.wait_exit(Duration::from_secs(5)).unwrap().success());

    // So `drove up` right after gets every address and port.
    let (second, err) = up_as_configured(&path);
    let admin_addr = announced(&second, "drove: admin API");
    assert_eq!(admin_addr.port(), admin);
    assert!(
        wait_until(Duration::from_secs(20), || {
            let st = drove_status(admin_addr);
            st.instances.len() == 2
                && st
                    .instances
                    .iter()
                    .all(|i| i.state == InstanceState::Ready && i.restarts == Some(0))
        }),
        "{:?}\n{}",
        drove_status(admin_addr),
        read(&err)
    );
    let ports: Vec<u16> = drove_status(admin_addr)
        .instances
        .iter()
        .filter_map(|i| i.port)
        .collect();
    assert_eq!(ports, [base, base + 1]);
    let r = http::get(SocketAddr::from(([127, 0, 0, 1], listen)), "/whoami").unwrap();
    assert_eq!(r.status, 200);
    assert!(!old.contains(&(r.json()["pid"].as_u64().unwrap() as u32)));

    // --no-wait returns as soon as the shutdown has begun.
    let out = crate::output_ok(
        Command::new(drove())
            .args(["down", "--no-wait", "-c"])
            .arg(&path),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("shutting down") && !text.contains("stopped"),
        "{text}"
    );
    let mut second = second;
    assert!(second.wait_exit(Duration::from_secs(20)).unwrap().success());
}

#[test]
fn verify_start_refuses_a_file_whose_ports_another_drove_holds() {
    let base = free_ports(2);
    let path = write_config("verify-taken", &fixed_config(base, 2, &demo_argv(), ""));
    let d = Drove::up_file(drove(), &path, &[]);
    assert!(d.wait_in_rotation(2, Duration::from_secs(20)));
    let err = path.with_file_name("verify-stderr.txt");
    let mut cmd = Command::new(drove());
    cmd.args(["verify", "--start", "--only", "health", "-c"])
        .arg(&path)
        .stderr(Stdio::from(File::create(&err).unwrap()));
    let mut v = Proc::spawn(cmd);
    let status = v
        .wait_exit(Duration::from_secs(30))
        .expect("verify refuses at once");
    assert!(!status.success());
    let said = read(&err);
    assert!(
        said.contains(&format!(
            "cannot start a drove from {} to verify: web.1: port {base} is in use by pid ",
            path.display()
        )) && said.contains("Another drove seems to run this file"),
        "{said}"
    );
    assert!(
        v.stdout.lock().unwrap().iter().all(|l| !l.starts_with("✓")),
        "no drill ran"
    );
}

#[test]
fn a_scale_into_a_taken_port_sends_nothing_to_the_holder_and_says_so() {
    let base = free_ports(4);
    let cfg = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        fixed_config(base, 2, &demo_argv(), "listen = \"127.0.0.1:0\"")
    );
    let path = write_config("scale-taken", &cfg);
    let (d, err) = up_as_configured(&path);
    let admin = announced(&d, "drove: admin API");
    let listen = announced(&d, "drove: balancer on");
    let status = || -> drove_api::Status {
        serde_json::from_slice(&http::get(admin, "/api/status").unwrap().body).unwrap()
    };
    let serving = || {
        status()
            .backends()
            .iter()
            .filter(|b| b.enabled && b.healthy)
            .count()
    };
    assert!(wait_until(Duration::from_secs(20), || serving() == 2));

    // Another program takes web.3's port, then web scales to 3.
    let mut cmd = Command::new(drove());
    cmd.arg("demo")
        .env("PORT", (base + 2).to_string())
        .env("DROVE_INSTANCE", "foreign");
    let foreign = Proc::spawn(cmd);
    let foreign_addr = SocketAddr::from(([127, 0, 0, 1], base + 2));
    assert!(wait_until(Duration::from_secs(10), || http::get(
        foreign_addr,
        "/ready"
    )
    .is_ok_and(|r| r.status == 200)));
    let out = crate::output_ok(Command::new(drove()).args([
        "scale",
        "web=3",
        "--admin",
        &admin.to_string(),
    ]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("web: scaled to 3"));
    assert!(
        wait_until(Duration::from_secs(20), || serving() == 3),
        "{:?}",
        status()
    );
    let ports: Vec<u16> = status().instances.iter().filter_map(|i| i.port).collect();
    assert!(!ports.contains(&(base + 2)), "{ports:?}");
    // drove says why the new instance is not web.3.
    let said = read(&err);
    assert!(
        said.contains(&format!(
            "web.3 not started: port {} is in use by pid {} (",
            base + 2,
            foreign.pid()
        )),
        "{said}"
    );
    let before = demo_requests(foreign_addr);
    for _ in 0..60 {
        let r = http::get(listen, "/whoami").unwrap();
        assert_eq!(r.status, 200);
        assert_ne!(r.header("x-demo-instance"), Some("foreign"));
    }
    assert_eq!(demo_requests(foreign_addr), before + 1);
}
