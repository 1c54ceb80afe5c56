//! The commands that talk to a running drove through its admin API, and `drove logs`.

use std::io::{BufRead, Seek, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};

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

fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
    timeout: Duration,
) -> anyhow::Result<Value> {
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
        let msg = v
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string());
        anyhow::bail!("{msg} (HTTP {status})");
    }
    Ok(v)
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
            let v = call(addr, "GET", "/api/status", token, None, short)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", status_table(&v));
            }
        }
        Command::Scale { targets, .. } => {
            for t in targets {
                let (service, n) = t
                    .split_once('=')
                    .and_then(|(s, n)| Some((s, n.parse::<u32>().ok()?)))
                    .ok_or_else(|| anyhow::anyhow!("`{t}`: expected SERVICE=N, e.g. web=5"))?;
                call(
                    addr,
                    "POST",
                    "/api/scale",
                    token,
                    Some(json!({"service": service, "instances": n})),
                    long,
                )?;
                println!("{service}: scaled to {n}");
            }
        }
        Command::Restart { service, .. } => {
            let v = call(
                addr,
                "POST",
                "/api/restart",
                token,
                // `web.2` (an instance id) restarts one instance, `web` all of them.
                Some(if service.parse::<drove_supervisor::InstanceId>().is_ok() {
                    json!({"instance": service})
                } else {
                    json!({"service": service})
                }),
                long,
            )?;
            let n = v
                .get("replaced")
                .and_then(Value::as_array)
                .map(Vec::len)
                .unwrap_or(0);
            let secs = v.get("elapsed").and_then(Value::as_f64).unwrap_or(0.0);
            println!("{service}: rolling restart done, {n} instance(s) replaced in {secs:.1}s");
        }
        Command::Drain { instance, .. } => {
            call(
                addr,
                "POST",
                "/api/drain",
                token,
                Some(json!({"instance": instance})),
                long,
            )?;
            println!("{instance}: drained (out of rotation, still running)");
        }
        Command::Undrain { instance, .. } => {
            call(
                addr,
                "POST",
                "/api/undrain",
                token,
                Some(json!({"instance": instance})),
                short,
            )?;
            println!("{instance}: back in rotation");
        }
        Command::Reload { dry_run, .. } => {
            let path = if dry_run {
                "/api/reload?dry_run=true"
            } else {
                "/api/reload"
            };
            let v = call(addr, "POST", path, token, None, long)?;
            let report: drove_runtime::reload::ReloadReport = serde_json::from_value(v)
                .map_err(|e| anyhow::anyhow!("unexpected reload report: {e}"))?;
            drove_runtime::reload::print_report(&report);
            if !report.not_applied.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Down { .. } => {
            call(addr, "POST", "/api/down", token, None, short)?;
            println!("drove at {addr}: shutting down");
        }
        Command::Logs {
            follow, instance, ..
        } => return logs(config, instance.as_deref(), follow),
        _ => unreachable!("handled in main"),
    }
    Ok(ExitCode::SUCCESS)
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

/// The `drove status` table.
pub(crate) fn status_table(v: &Value) -> String {
    let mut out = String::new();
    if let Some(b) = v.get("balancer").filter(|b| !b.is_null()) {
        out.push_str(&format!(
            "balancer {} ({}), {} requests, {} req/s, {} retries\n",
            b["listen"].as_str().unwrap_or("-"),
            b["algorithm"].as_str().unwrap_or("-"),
            b["requests"],
            b["rps"]
                .as_f64()
                .map(human_rate)
                .unwrap_or_else(|| "-".into()),
            b["retries"]
        ));
    }
    let header = [
        "INSTANCE", "PID", "PORT", "STATE", "HEALTH", "INFLIGHT", "REQ/S", "P99", "REQUESTS",
        "RESTARTS", "RSS", "UPTIME",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for i in v["instances"].as_array().into_iter().flatten() {
        let s = |k: &str| match &i[k] {
            Value::Null => "-".to_string(),
            Value::String(s) => s.clone(),
            x => x.to_string(),
        };
        let health = match (&i["healthy"], &i["in_rotation"]) {
            (Value::Bool(true), Value::Bool(false)) => "drained",
            (Value::Bool(true), _) => "healthy",
            (Value::Bool(false), _) => "unhealthy",
            _ => "-",
        };
        let port = match &i["port"] {
            Value::Null => i["addr"].as_str().unwrap_or("-").to_string(),
            p => p.to_string(),
        };
        rows.push(vec![
            s("id"),
            s("pid"),
            port,
            s("state"),
            health.to_string(),
            s("in_flight"),
            i["rps"]
                .as_f64()
                .map(human_rate)
                .unwrap_or_else(|| "-".into()),
            i["p99_ms"]
                .as_f64()
                .map(human_ms)
                .unwrap_or_else(|| "-".into()),
            s("requests"),
            s("restarts"),
            i["rss_bytes"]
                .as_f64()
                .map(human_bytes)
                .unwrap_or_else(|| "-".into()),
            i["uptime"]
                .as_f64()
                .map(human_secs)
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
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
