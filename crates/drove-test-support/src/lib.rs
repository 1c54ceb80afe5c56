//! Test support for drove's end-to-end tests (dev only): real processes, real sockets.
//!
//! [`Proc`] runs a child in its own process group and kills the group when dropped, so
//! a failing test leaves nothing behind. [`Drove`] starts `drove up` on free ports and
//! reads its addresses from its output; [`demo`] starts a `drove demo` backend.
//! [`http`] is a small blocking HTTP/1.1 client that reports exactly what happened on
//! the wire, and [`load`] runs bounded steady load from threads and counts every outcome.

pub mod dns;
pub mod http;
pub mod load;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A port that was free a moment ago (bind 127.0.0.1:0, read, close).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A fresh, unique temporary directory.
pub fn tempdir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let p = std::env::temp_dir().join(format!("drove-test-{}-{}-{}", tag, std::process::id(), n));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).expect("create temp dir");
    p
}

/// Polls `f` every 20 ms until it is true or `timeout` passes; returns whether it became true.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends a signal to a pid (or, with a negative number, a process group).
pub fn signal(pid: i32, sig: nix::sys::signal::Signal) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).is_ok()
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // Field 3, after the parenthesised command name.
            let state = s
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

/// A child process in its own process group; the whole group is killed on drop.
pub struct Proc {
    /// The child.
    pub child: Child,
    /// Lines it printed on stdout (collected by a thread).
    pub stdout: Arc<Mutex<Vec<String>>>,
    /// Lines it printed on stderr, when spawned with [`Proc::spawn_capturing_stderr`]
    /// (empty otherwise).
    pub stderr: Arc<Mutex<Vec<String>>>,
    /// Set when its stdout reached EOF and every line is in `stdout`.
    stdout_done: Arc<std::sync::atomic::AtomicBool>,
}

impl Proc {
    /// Spawns `cmd` in a new process group with stdout captured (stderr as `cmd` says:
    /// inherited unless set).
    pub fn spawn(cmd: Command) -> Proc {
        Self::spawn_with(cmd, false)
    }

    /// Spawns `cmd` in a new process group with stdout and stderr captured (stderr is
    /// also copied to the test's own stderr, so a failing test still shows it).
    pub fn spawn_capturing_stderr(cmd: Command) -> Proc {
        Self::spawn_with(cmd, true)
    }

    fn spawn_with(mut cmd: Command, capture_stderr: bool) -> Proc {
        cmd.process_group(0)
            .stdout(Stdio::piped())
            .stdin(Stdio::null());
        if capture_stderr {
            cmd.stderr(Stdio::piped());
        }
        let mut child = cmd.spawn().expect("spawn child");
        let out = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = lines.clone();
        let stdout_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = stdout_done.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l2.lock().unwrap().push(line);
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let err_lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(err) = child.stderr.take() {
            let e2 = err_lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    eprintln!("{line}");
                    e2.lock().unwrap().push(line);
                }
            });
        }
        Proc {
            child,
            stdout: lines,
            stderr: err_lines,
            stdout_done,
        }
    }

    /// Waits until every line the process printed on stdout is in `stdout` (its stdout
    /// reached EOF: after it exited, as soon as the reader thread has caught up — a
    /// fixed sleep is not enough on a loaded machine). False after `timeout`.
    pub fn wait_stdout_closed(&self, timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.stdout_done.load(std::sync::atomic::Ordering::SeqCst)
        })
    }

    /// The pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for a stdout line matching `f`, returning it.
    pub fn wait_line(&self, timeout: Duration, f: impl Fn(&str) -> bool) -> Option<String> {
        let mut found = None;
        wait_until(timeout, || {
            found = self.stdout.lock().unwrap().iter().find(|l| f(l)).cloned();
            found.is_some()
        });
        found
    }

    /// Waits for exit up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(-self.pid(), nix::sys::signal::Signal::SIGTERM);
            if self.wait_exit(Duration::from_secs(10)).is_none() {
                signal(-self.pid(), nix::sys::signal::Signal::SIGKILL);
                let _ = self.child.wait();
            }
        }
        // Anything left in the group (a grandchild that ignored TERM) goes too.
        signal(-self.pid(), nix::sys::signal::Signal::SIGKILL);
    }
}

/// A `drove demo` backend on a free port.
pub struct Demo {
    /// The process.
    pub proc: Proc,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// Starts `drove demo` as instance `name` and waits until it answers /health.
pub fn demo(drove: &Path, name: &str) -> Demo {
    let port = free_port();
    let mut cmd = Command::new(drove);
    cmd.arg("demo")
        .env("PORT", port.to_string())
        .env("DROVE_INSTANCE", name);
    let proc = Proc::spawn(cmd);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || http::get(addr, "/health")
            .map(|r| r.status == 200)
            .unwrap_or(false)),
        "demo {name} did not come up on {addr}"
    );
    Demo { proc, addr }
}

/// A running `drove up`.
pub struct Drove {
    /// The process.
    pub proc: Proc,
    /// The balancer's address (None without a `[balancer]`).
    pub listen: Option<SocketAddr>,
    /// The admin API's address.
    pub admin: SocketAddr,
    /// The config file.
    pub config: PathBuf,
    /// The drove executable it runs.
    pub exe: PathBuf,
}

impl Drove {
    /// Writes `config` to a temp dir and runs `drove up -c` on it with free ports for the
    /// balancer and admin API; waits until both are announced.
    pub fn up(drove: &Path, config: &str) -> Drove {
        let dir = tempdir("up");
        let path = dir.join("drove.toml");
        std::fs::write(&path, config).unwrap();
        Self::up_file(drove, &path, &[])
    }

    /// [`Drove::up`] with extra environment variables for the drove process (test
    /// hooks such as `DROVE_TEST_PANIC`).
    pub fn up_env(drove: &Path, config: &str, env: &[(&str, &str)]) -> Drove {
        let dir = tempdir("up");
        let path = dir.join("drove.toml");
        std::fs::write(&path, config).unwrap();
        Self::up_file_env(drove, &path, &[], env)
    }

    /// Runs `drove up -c path` with extra arguments.
    pub fn up_file(drove: &Path, path: &Path, extra: &[&str]) -> Drove {
        Self::up_file_env(drove, path, extra, &[])
    }

    /// Runs `drove up -c path` with extra arguments and environment variables.
    pub fn up_file_env(drove: &Path, path: &Path, extra: &[&str], env: &[(&str, &str)]) -> Drove {
        let mut cmd = Command::new(drove);
        cmd.envs(env.iter().copied());
        cmd.arg("up")
            .arg("-c")
            .arg(path)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--admin-listen")
            .arg("127.0.0.1:0")
            .args(extra)
            .current_dir(path.parent().unwrap());
        let proc = Proc::spawn_capturing_stderr(cmd);
        let admin_line = proc
            .wait_line(Duration::from_secs(20), |l| {
                l.starts_with("drove: admin API")
            })
            .unwrap_or_else(|| panic!("drove did not start: {:?}", proc.stdout.lock().unwrap()));
        let admin = parse_url_addr(&admin_line);
        let listen = proc
            .stdout
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.starts_with("drove: balancer on"))
            .map(|l| parse_url_addr(l));
        Drove {
            proc,
            listen,
            admin,
            config: path.to_path_buf(),
            exe: drove.to_path_buf(),
        }
    }

    /// The balancer address (panics without one).
    pub fn addr(&self) -> SocketAddr {
        self.listen.expect("drove has a balancer")
    }

    /// Runs a CLI command against this drove (`drove ARGS --admin ADDR`).
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.exe)
            .args(args)
            .arg("--admin")
            .arg(self.admin.to_string())
            .output()
            .expect("run drove")
    }

    /// [`Drove::cli`] that must succeed; returns its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "drove {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// GET /api/status: the typed document of drove-api (a field renamed in the server
    /// is a compile error here too).
    pub fn status(&self) -> drove_api::Status {
        let r = http::get(self.admin, "/api/status").expect("admin status");
        serde_json::from_slice(&r.body).unwrap_or_else(|e| {
            panic!("status document: {e}: {}", String::from_utf8_lossy(&r.body))
        })
    }

    /// The status document, or None if the admin API did not answer (as while drove
    /// replaces itself in an upgrade: a request accepted at the instant of the exec is
    /// cut, the ones after it wait in the kept listening socket).
    pub fn try_status(&self) -> Option<drove_api::Status> {
        let r = http::get(self.admin, "/api/status").ok()?;
        serde_json::from_slice(&r.body).ok()
    }

    /// The balancer part of the status document (panics without a `[balancer]`).
    pub fn balancer_status(&self) -> drove_api::BalancerStatus {
        self.status().balancer.expect("drove has a balancer")
    }

    /// The value of one series on `/metrics`, named with its labels exactly as drove
    /// writes them (`drove_panics_total{where="request"}`); None if it is absent.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let text = http::get(self.admin, "/metrics").ok()?.text();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }

    /// POSTs JSON to the admin API.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> http::Response {
        http::post_json(self.admin, path, body).expect("admin call")
    }

    /// Waits until `n` instances of the balanced service are in rotation and healthy.
    pub fn wait_in_rotation(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.status()
                .backends()
                .iter()
                .filter(|b| b.enabled && b.healthy)
                .count()
                == n
        })
    }

    /// Pids of the supervised instances (from status).
    pub fn instance_pids(&self) -> Vec<u32> {
        self.status()
            .instances
            .iter()
            .filter_map(|i| i.pid)
            .collect()
    }

    /// SIGTERM and wait for exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        signal(self.proc.pid(), nix::sys::signal::Signal::SIGTERM);
        self.proc
            .wait_exit(Duration::from_secs(40))
            .expect("drove exits after SIGTERM")
    }
}

fn parse_url_addr(line: &str) -> SocketAddr {
    let start = line
        .find("http://")
        .map(|i| i + 7)
        .or_else(|| line.find("https://").map(|i| i + 8))
        .expect("a URL");
    let rest = &line[start..];
    let end = rest.find('/').unwrap_or(rest.len());
    rest[..end].parse().expect("an address")
}
