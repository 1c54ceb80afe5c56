//! The commands that talk to a running drove through its admin API, and `drove logs`.

use std::io::{BufRead, Seek, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use drove_api as api;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::Command;

/// Where the admin API is: --admin, else the config's `[admin] listen`, else the default.
fn admin_addr(config: &Path, admin: Option<SocketAddr>) -> SocketAddr {
    if let Some(a) = admin {
        return a;
    }
    if config.exists() {
        if let Ok(c) = drove_config::load(config) {
            return c.admin.listen;
        }
    }
    drove_config::AdminConfig::default().listen
}

/// One admin call: `body` as JSON in, the answer as `T` out; a non-2xx answer is an
/// error carrying the API's message.
fn call<T: DeserializeOwned>(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
    timeout: Duration,
) -> anyhow::Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, v) = rt.block_on(drove_runtime::admin_client::request(
        addr,
        method,
        path,
        token,
        body.as_ref(),
        timeout,
    ))?;
    if !(200..300).contains(&status) {
        let msg = serde_json::from_value::<api::ApiError>(v.clone())
            .map(|e| e.error)
            .unwrap_or_else(|_| v.to_string());
        anyhow::bail!("{msg} (HTTP {status})");
    }
    serde_json::from_value(v).with_context(|| {
        format!("{method} {path}: the answer is not what this drove CLI expects (a different drove version?)")
    })
}

fn to_json(v: impl serde::Serialize) -> Option<Value> {
    serde_json::to_value(v).ok()
}

pub(crate) fn run(
    cmd: Command,
    config: &Path,
    admin: Option<SocketAddr>,
    token: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let addr = admin_addr(config, admin);
    // Rolling restarts and drains wait for real work: allow them time.
    let long = Duration::from_secs(600);
    let short = Duration::from_secs(10);
    match cmd {
        Command::Status { json, .. } => {
            let st: api::Status = call(addr, "GET", "/api/status", token, None, short)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print!("{}", status_table(&st, now_ms()));
            }
        }
        Command::Scale { targets, .. } => {
            for t in targets {
                let (service, n) = t
                    .split_once('=')
                    .and_then(|(s, n)| Some((s, n.parse::<u32>().ok()?)))
                    .ok_or_else(|| anyhow::anyhow!("`{t}`: expected SERVICE=N, e.g. web=5"))?;
                let req = api::ScaleRequest {
                    service: service.to_string(),
                    instances: n,
                };
                let a: api::ScaleAnswer =
                    call(addr, "POST", "/api/scale", token, to_json(&req), long)?;
                println!("{}: scaled to {}", a.service, a.instances);
            }
        }
        Command::Restart { service, .. } => {
            // `web.2` (an instance id) restarts one instance, `web` all of them.
            let req = if service.parse::<drove_supervisor::InstanceId>().is_ok() {
                api::RestartRequest {
                    instance: Some(service.clone()),
                    ..Default::default()
                }
            } else {
                api::RestartRequest {
                    service: Some(service.clone()),
                    ..Default::default()
                }
            };
            let a: api::RestartAnswer =
                call(addr, "POST", "/api/restart", token, to_json(&req), long)?;
            let surge = a
                .surge
                .as_deref()
                .map_or(String::new(), |s| format!(" behind surge instance {s}"));
            println!(
                "{service}: rolling restart done, {} instance(s) restarted in place (same ids and ports){surge} in {:.1}s",
                a.replaced.len(),
                a.elapsed
            );
        }
        Command::Drain { instance, .. } => {
            let req = api::DrainRequest { instance };
            let a: api::DrainAnswer = call(addr, "POST", "/api/drain", token, to_json(&req), long)?;
            println!("{}: drained (out of rotation, still running)", a.instance);
        }
        Command::Undrain { instance, .. } => {
            let req = api::DrainRequest { instance };
            let a: api::DrainAnswer =
                call(addr, "POST", "/api/undrain", token, to_json(&req), short)?;
            println!("{}: back in rotation", a.instance);
        }
        Command::Reload { dry_run, .. } => {
            let path = if dry_run {
                "/api/reload?dry_run=true"
            } else {
                "/api/reload"
            };
            // A file with errors answers 422 with the report, whose `error` says where.
            let report: api::ReloadReport = call(addr, "POST", path, token, None, long)?;
            drove_runtime::reload::print_report(&report);
            if !report.not_applied.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Down {
            no_wait, timeout, ..
        } => {
            // Whether drove's processes can be watched from here is decided before it
            // stops: afterwards a pid that is gone and one never visible look the same.
            let here = !no_wait && {
                let st: api::Status = call(addr, "GET", "/api/status", token, None, short)?;
                crate::down_wait::is_drove_here(st.pid)
            };
            let a: api::DownAnswer = call(addr, "POST", "/api/down", token, None, short)?;
            println!("drove at {addr} (pid {}): shutting down", a.pid);
            if here {
                return crate::down_wait::wait(addr, &a, timeout);
            }
            if !no_wait {
                println!(
                    "drove at {addr}: pid {} is not a drove process on this host (another host or container?): not waiting for it",
                    a.pid
                );
            }
        }
        Command::Upgrade {
            binary, timeout, ..
        } => {
            let req = api::UpgradeRequest {
                binary: binary.map(|b| {
                    std::fs::canonicalize(&b)
                        .unwrap_or(b)
                        .to_string_lossy()
                        .into_owned()
                }),
            };
            // A refused check answers 422 with the reason: an error here, exit 1.
            let a: api::UpgradeAnswer =
                call(addr, "POST", "/api/upgrade", token, to_json(&req), long)?;
            println!(
                "drove at {addr}: {} (drove {}) checked; replacing the running drove",
                a.binary, a.version
            );
            return wait_upgraded(addr, token, a.count_before, timeout);
        }
        Command::Logs {
            follow, instance, ..
        } => return logs(config, instance.as_deref(), follow),
        _ => unreachable!("handled in main"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Now, in unix milliseconds (to show `last_exit.at_ms` and `retry_at_ms` as "ago"/"in").
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn human_bytes(b: f64) -> String {
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1}G", b / (1024.0 * 1024.0 * 1024.0))
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.1}M", b / (1024.0 * 1024.0))
    } else {
        format!("{:.0}K", b / 1024.0)
    }
}

/// Requests per second: whole numbers from 10 up, one decimal below.
fn human_rate(r: f64) -> String {
    if r >= 10.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

fn human_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2}s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.0}ms")
    } else {
        format!("{ms:.1}ms")
    }
}

fn human_secs(s: f64) -> String {
    let s = s as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// `exit 1, 12s ago`, `SIGKILL, 3m05s ago`.
fn last_exit(e: &api::LastExit, now_ms: u64) -> String {
    let what = match (e.code, &e.text) {
        (Some(c), _) => format!("exit {c}"),
        (None, t) => t.trim_start_matches("signal ").to_string(),
    };
    if e.at_ms == 0 {
        return what;
    }
    let ago = now_ms.saturating_sub(e.at_ms) as f64 / 1000.0;
    format!("{what}, {} ago", human_secs(ago))
}

/// The `drove status` table, then one line per instance that has something to explain
/// (why it is starting, backing off, crash-looping or exited).
pub(crate) fn status_table(v: &api::Status, now_ms: u64) -> String {
    let mut out = String::new();
    if let Some(b) = &v.balancer {
        out.push_str(&format!(
            "balancer {} ({}), {} requests, {} req/s, {} retries\n",
            b.listen.map_or("-".into(), |a| a.to_string()),
            b.algorithm,
            b.requests,
            b.rps.map(human_rate).unwrap_or_else(|| "-".into()),
            b.retries
        ));
    }
    let header = [
        "INSTANCE",
        "PID",
        "PORT",
        "STATE",
        "HEALTH",
        "INFLIGHT",
        "REQ/S",
        "P99",
        "REQUESTS",
        "RESTARTS",
        "LAST EXIT",
        "RSS",
        "UPTIME",
    ];
    let dash = || "-".to_string();
    let opt = |x: Option<String>| x.unwrap_or_else(dash);
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    let mut notes = Vec::new();
    for i in &v.instances {
        let health = match (i.healthy, i.in_rotation) {
            (Some(true), Some(false)) => "drained",
            (Some(true), _) => "healthy",
            (Some(false), _) => "unhealthy",
            _ => "-",
        };
        let port = match (i.port, i.addr) {
            (Some(p), _) => p.to_string(),
            (None, Some(a)) => a.to_string(),
            (None, None) => dash(),
        };
        rows.push(vec![
            i.id.clone(),
            opt(i.pid.map(|p| p.to_string())),
            port,
            i.state.to_string(),
            health.to_string(),
            opt(i.in_flight.map(|n| n.to_string())),
            opt(i.rps.map(human_rate)),
            opt(i.p99_ms.map(human_ms)),
            opt(i.requests.map(|n| n.to_string())),
            opt(i.restarts.map(|n| n.to_string())),
            opt(i.last_exit.as_ref().map(|e| last_exit(e, now_ms))),
            opt(i.rss_bytes.map(|b| human_bytes(b as f64))),
            opt(i.uptime.map(human_secs)),
        ]);
        if let Some(why) = &i.why {
            notes.push(format!("{} {}: {why}", i.id, i.state));
        }
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, x)| format!("{x:<w$}", w = widths[c]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            out.push_str(&n);
            out.push('\n');
        }
    }
    out
}

/// `drove logs`: the per-instance files `<logs.dir>/<service>.<index>.log`.
fn logs(config: &Path, which: Option<&str>, follow: bool) -> anyhow::Result<ExitCode> {
    let dirs: Vec<PathBuf> = if config.exists() {
        match drove_config::load(config) {
            Ok(c) => c.services.iter().map(|s| s.logs.dir.clone()).collect(),
            Err(e) => {
                eprintln!("{e}");
                return Ok(ExitCode::from(crate::EXIT_CONFIG));
            }
        }
    } else {
        vec![PathBuf::from(".drove/logs")]
    };
    let mut files: Vec<PathBuf> = Vec::new();
    for d in dirs.iter().collect::<std::collections::BTreeSet<_>>() {
        let Ok(rd) = std::fs::read_dir(d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_string();
            let Some(stem) = name.strip_suffix(".log") else {
                continue;
            };
            let keep = match which {
                None => true,
                Some(w) if w.contains('.') => stem == w,
                Some(w) => stem.split('.').next() == Some(w),
            };
            if keep {
                files.push(p);
            }
        }
    }
    files.sort();
    if files.is_empty() {
        anyhow::bail!(
            "no log files found{} in {:?}",
            which.map(|w| format!(" for {w}")).unwrap_or_default(),
            dirs
        );
    }
    let many = files.len() > 1;
    let mut readers = Vec::new();
    let stdout = std::io::stdout();
    for f in &files {
        let label = f
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("?")
            .to_string();
        let mut r = std::io::BufReader::new(std::fs::File::open(f)?);
        let mut line = String::new();
        let mut out = stdout.lock();
        while r.read_line(&mut line)? > 0 {
            if many {
                write!(out, "{label} | {line}")?;
            } else {
                write!(out, "{line}")?;
            }
            line.clear();
        }
        readers.push((label, r));
    }
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        std::thread::sleep(Duration::from_millis(200));
        for (label, r) in &mut readers {
            // A rotated file shrinks: start again from its beginning.
            let pos = r.stream_position()?;
            if r.get_ref().metadata().map(|m| m.len()).unwrap_or(0) < pos {
                r.seek(std::io::SeekFrom::Start(0))?;
            }
            let mut line = String::new();
            let mut out = stdout.lock();
            while r.read_line(&mut line)? > 0 {
                if many {
                    write!(out, "{label} | {line}")?;
                } else {
                    write!(out, "{line}")?;
                }
                line.clear();
            }
            out.flush()?;
        }
    }
}

/// Polls the status until the new drove reports the upgrade (or the old one reports
/// that it failed and goes on).
fn wait_upgraded(
    addr: SocketAddr,
    token: Option<&str>,
    before: u32,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let end = std::time::Instant::now() + timeout;
    let mut last_err = String::new();
    while std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
        // During the exchange the admin socket queues the request: a slow answer or a
        // reset is normal for a moment.
        match call::<api::Status>(
            addr,
            "GET",
            "/api/status",
            token,
            None,
            Duration::from_secs(5),
        ) {
            Ok(st) if st.upgrades.count > before => {
                if let Some(r) = &st.upgrades.last {
                    println!(
                        "drove at {addr}: upgraded {} -> {} in {} ms (pid {} unchanged): {} instance(s) kept, {} connection(s) handed over, {} closed",
                        r.from_version, r.to_version, r.took_ms, st.pid, r.instances_kept,
                        r.connections_handed, r.connections_closed
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            Ok(st) => {
                if let Some(why) = st.upgrades.failed {
                    eprintln!("drove at {addr}: upgrade failed, the running drove goes on: {why}");
                    return Ok(ExitCode::FAILURE);
                }
            }
            Err(e) => last_err = e.to_string(),
        }
    }
    anyhow::bail!(
        "no upgraded drove answered at {addr} within {}s{}",
        timeout.as_secs(),
        if last_err.is_empty() {
            String::new()
        } else {
            format!(" (last: {last_err})")
        }
    )
}
