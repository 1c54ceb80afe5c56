//! drove as a system service: the sd_notify messages a real Unix datagram socket given
//! as `NOTIFY_SOCKET` receives, in order, and the unit `drove export systemd` writes,
//! checked by `systemd-analyze verify`.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use drove_test_support::{signal, tempdir, Drove};
use nix::sys::signal::Signal;

use crate::{drove, output_ok};

fn config(stop_grace: &str) -> String {
    format!(
        r#"[services.web]
command = ["{drove}", "demo"]
instances = 3
port = "auto"
ready = {{ http = "/ready", interval = "50ms" }}
stop = {{ grace = "{stop_grace}" }}
logs = {{ dir = "logs" }}

[balancer]
service = "web"
workers = 1
timeouts = {{ shutdown_grace = "10s" }}
"#,
        drove = drove().display()
    )
}

/// Reads every datagram as it arrives (as systemd does: an unread socket's queue
/// fills up and drove drops messages rather than block), until the test ends.
fn reader(sock: UnixDatagram) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            if tx
                .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                .is_err()
            {
                return;
            }
        }
    });
    rx
}

/// The next message that is not a watchdog ping; pings are counted.
fn next(rx: &std::sync::mpsc::Receiver<String>, pings: &mut u32) -> String {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let m = rx.recv_timeout(left).expect("a notification from drove");
        if m == "WATCHDOG=1" {
            *pings += 1;
        } else {
            return m;
        }
    }
}

#[test]
fn sd_notify_messages_arrive_in_order() {
    let dir = tempdir("notify");
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let sock = reader(sock);
    let socket = path.display().to_string();
    let d = Drove::up_env(
        drove(),
        &config("5s"),
        &[
            ("NOTIFY_SOCKET", socket.as_str()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let mut pings = 0;

    // READY=1 only once every instance is ready.
    let ready = next(&sock, &mut pings);
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    assert!(ready.contains("STATUS=3 instance(s) ready"), "{ready}");
    assert!(
        ready.contains(&format!("MAINPID={}", d.proc.pid())),
        "{ready}"
    );
    let st = d.status();
    let states: Vec<drove_api::InstanceState> = st.instances.iter().map(|i| i.state).collect();
    assert_eq!(states, [drove_api::InstanceState::Ready; 3], "{st:?}");

    // Pings at half the watchdog period (100 ms) from the runtime.
    std::thread::sleep(Duration::from_millis(600));
    std::fs::write(&d.config, config("6s")).unwrap();
    d.cli_ok(&["reload"]);
    let reloading = next(&sock, &mut pings);
    assert!(pings >= 3, "{pings} watchdog pings in 600 ms");
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(usec > 0);
    let again = next(&sock, &mut pings);
    assert!(again.starts_with("READY=1\n"), "{again}");
    assert!(again.contains("reloaded: 1 change(s) applied"), "{again}");

    // A dry run changes nothing and says nothing to systemd.
    d.cli_ok(&["reload", "--dry-run"]);
    assert!(signal(d.proc.pid(), Signal::SIGTERM));
    let stopping = next(&sock, &mut pings);
    assert!(stopping.starts_with("STOPPING=1"), "{stopping}");
    let mut d = d;
    assert!(d.proc.wait_exit(Duration::from_secs(40)).is_some());
}

#[test]
fn the_exported_unit_is_a_valid_notify_service() {
    let dir = tempdir("unit");
    let path = dir.join("drove.toml");
    std::fs::write(&path, config("20s")).unwrap();
    let out = output_ok(
        std::process::Command::new(drove())
            .args(["export", "systemd", "-c"])
            .arg(&path),
    );
    let unit = String::from_utf8(out.stdout).unwrap();
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "KillMode=mixed",
        "WatchdogSec=30s",
        // shutdown_grace 10s + stop grace 20s + 15s.
        "TimeoutStopSec=45s",
    ] {
        assert!(unit.lines().any(|l| l == line), "no `{line}` in\n{unit}");
    }
    let exe = std::fs::canonicalize(drove()).unwrap();
    let file = std::fs::canonicalize(&path).unwrap();
    assert!(unit.contains(&format!(
        "ExecReload={} reload -c {}",
        exe.display(),
        file.display()
    )));
    let unit_path = dir.join("drove.service");
    std::fs::write(&unit_path, &unit).unwrap();
    match std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_path)
        .output()
    {
        Ok(o) => assert!(
            o.status.success() && o.stderr.is_empty(),
            "systemd-analyze verify: {}\n{unit}",
            String::from_utf8_lossy(&o.stderr)
        ),
        // Not installable everywhere (containers without systemd): the content checks
        // above still hold.
        Err(e) => eprintln!("systemd-analyze not available ({e}); unit content checked only"),
    }
}

/// What systemd does for a socket unit, in Python (always there for the tests, unlike
/// systemd itself in a container): listen on each address, put the sockets at
/// descriptors 3, 4, ..., set `LISTEN_PID` (this very process: exec keeps it),
/// `LISTEN_FDS` and `LISTEN_FDNAMES`, and exec the command.
const ACTIVATE: &str = r#"
import os, socket, sys
addrs, names, cmd = sys.argv[1].split(","), sys.argv[2], sys.argv[3:]
socks = []
for a in addrs:
    host, port = a.rsplit(":", 1)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(port)))
    s.listen(128)
    socks.append(s)
# Duplicates above the target range first: a socket may itself sit at 3 or 4.
tmp = [os.dup(s.fileno()) for s in socks]
for i, t in enumerate(tmp):
    os.dup2(t, 3 + i, inheritable=True)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(addrs)), LISTEN_FDNAMES=names)
os.execv(cmd[0], cmd)
"#;

/// Socket activation: drove serves on the sockets systemd passes (`LISTEN_FDS`): the
/// balancer's and, named `admin`, the admin API's; the config's `listen` addresses are
/// not bound; the instances inherit neither the sockets nor the `LISTEN_*` variables.
#[test]
fn socket_activation_serves_on_the_sockets_systemd_passes() {
    let dir = tempdir("activation");
    let path = dir.join("drove.toml");
    // The config's own addresses would fail if drove bound them (ports 1 and 2 need
    // root, and are not what the test connects to).
    let text = config("5s").replace("[balancer]\n", "[balancer]\nlisten = \"127.0.0.1:1\"\n")
        + "\n[admin]\nlisten = \"127.0.0.1:2\"\n";
    std::fs::write(&path, text).unwrap();
    let (bal, adm) = (
        drove_test_support::free_port(),
        drove_test_support::free_port(),
    );
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-c", ACTIVATE])
        .arg(format!("127.0.0.1:{bal},127.0.0.1:{adm}"))
        .arg("balancer:admin")
        .arg(drove())
        .args(["up", "-c"])
        .arg(&path)
        .current_dir(&dir);
    let proc = drove_test_support::Proc::spawn_capturing_stderr(cmd);
    let balancer: std::net::SocketAddr = format!("127.0.0.1:{bal}").parse().unwrap();
    let d = Drove {
        proc,
        listen: Some(balancer),
        admin: format!("127.0.0.1:{adm}").parse().unwrap(),
        config: path.clone(),
        exe: drove().to_path_buf(),
    };
    assert!(
        d.proc
            .wait_line(Duration::from_secs(20), |l| l
                .starts_with("drove: admin API"))
            .is_some(),
        "drove did not start: {:?}",
        d.proc.stdout.lock().unwrap()
    );
    assert!(d.wait_in_rotation(3, Duration::from_secs(20)));
    let st = d.status();
    assert_eq!(st.admin.port(), adm);
    assert_eq!(st.balancer.as_ref().unwrap().listen, Some(balancer));
    let r = drove_test_support::http::request(balancer, "GET", "/whoami", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    let drove_sockets = crate::upgrade::sockets_of(d.proc.pid() as u32);
    for i in &st.instances {
        let pid = i.pid.unwrap();
        let shared: Vec<_> = crate::upgrade::sockets_of(pid)
            .intersection(&drove_sockets)
            .cloned()
            .collect();
        assert!(
            shared.is_empty(),
            "{} inherited drove's sockets {shared:?}",
            i.id
        );
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&env).contains("LISTEN_FDS"),
            "{} sees LISTEN_FDS",
            i.id
        );
    }
    d.stop();
}
