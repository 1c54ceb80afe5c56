//! Starting a drove to verify (`drove verify --start`, or no drove running and no
//! drove.toml): `DROVE up -c FILE --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --quiet`
//! in its own process group, addresses read from its announcement lines, SIGTERM to stop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// How long a started drove gets to announce its addresses.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// And to stop after SIGTERM (its instances drain and stop first) before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(40);
/// Lines of its stderr kept to explain a failed start.
const STDERR_LINES: usize = 40;

/// Why a drove could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The executable could not be run.
    #[error("cannot run {0}: {1}")]
    Spawn(String, std::io::Error),
    /// It exited or stayed silent instead of announcing its admin API.
    #[error("drove did not start ({0}); its last output:\n{1}")]
    NoStart(String, String),
}

/// A drove started by verify; stopped (SIGTERM, then SIGKILL of its group) on drop.
pub struct Launched {
    child: Child,
    /// Its admin API.
    pub admin: SocketAddr,
    /// Its balancer, if it has one.
    pub listen: Option<SocketAddr>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Launched {
    /// Runs `exe up -c config ...` and waits for its addresses.
    pub fn start(exe: &Path, config: &Path) -> Result<Launched, LaunchError> {
        let mut cmd = Command::new(exe);
        cmd.arg("up")
            .arg("-c")
            .arg(config)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--quiet",
            ])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| LaunchError::Spawn(exe.display().to_string(), e))?;
        let (tx, rx) = mpsc::channel::<String>();
        let out = child.stdout.take().expect("piped stdout");
        // Keeps reading until drove exits, so a chatty drove never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let err = child.stderr.take().expect("piped stderr");
        let keep = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut k = keep.lock().unwrap_or_else(|p| p.into_inner());
                if k.len() == STDERR_LINES {
                    k.remove(0);
                }
                k.push(line);
            }
        });
        let mut launched = Launched {
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            listen: None,
            stderr,
        };
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        let mut admin = None;
        let mut seen = Vec::new();
        while admin.is_none() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    if line.starts_with("drove: balancer on ") {
                        launched.listen = url_addr(&line);
                    } else if line.starts_with("drove: admin API") {
                        admin = url_addr(&line);
                    }
                    seen.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(st)) = launched.child.try_wait() {
                        return Err(launched.no_start(format!("it exited: {st}"), &seen));
                    }
                    if left.is_zero() {
                        return Err(launched.no_start(
                            format!("no admin API announced within {START_TIMEOUT:?}"),
                            &seen,
                        ));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let st = launched
                        .child
                        .wait()
                        .map(|s| s.to_string())
                        .unwrap_or_default();
                    return Err(launched.no_start(format!("it exited: {st}"), &seen));
                }
            }
        }
        launched.admin = admin.expect("loop ends with an address");
        // Drain the rest of stdout in the background (the reader thread owns the pipe).
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Ok(launched)
    }

    fn no_start(&self, why: String, stdout: &[String]) -> LaunchError {
        // Let the stderr reader catch up with a dying process.
        std::thread::sleep(Duration::from_millis(100));
        let err = self
            .stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut lines: Vec<String> = stdout.to_vec();
        lines.extend(err);
        LaunchError::NoStart(why, lines.join("\n"))
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, wait for a graceful exit (then SIGKILL the group); its exit status.
    pub fn stop(mut self) -> Option<ExitStatus> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(st)) = self.child.try_wait() {
            return Some(st);
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = std::time::Instant::now() + STOP_TIMEOUT;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = killpg(pid, Signal::SIGKILL);
        self.child.wait().ok()
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The address of the first `http://ADDR/` in a line.
fn url_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("http://")? + 7..];
    let end = rest.find('/').unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_from_announcements() {
        assert_eq!(
            url_addr("drove: balancer on http://127.0.0.1:8080/"),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            url_addr("drove: admin API, metrics and dashboard on http://[::1]:9900/ (token)"),
            Some("[::1]:9900".parse().unwrap())
        );
        assert_eq!(url_addr("nothing here"), None);
    }
}
