//! The access log: off, NCSA combined with upstream fields, or JSON lines.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::AccessLogFormat;

pub(crate) struct AccessLog {
    format: AccessLogFormat,
    out: Option<Mutex<Box<dyn Write + Send>>>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("format", &self.format)
            .finish()
    }
}

/// One finished request, as logged.
pub(crate) struct Entry<'a> {
    pub client: IpAddr,
    pub method: &'a str,
    pub target: &'a str,
    pub version: &'a str,
    pub status: u16,
    /// Response body bytes sent to the client.
    pub bytes: u64,
    pub referer: &'a str,
    pub user_agent: &'a str,
    pub upstream: Option<SocketAddr>,
    pub upstream_id: Option<&'a str>,
    pub upstream_status: Option<u16>,
    pub upstream_time: Option<Duration>,
    pub total_time: Duration,
    pub retries: u32,
    pub request_id: &'a str,
    /// Why drove answered itself (JSON format only).
    pub error: Option<&'a str>,
}

impl AccessLog {
    pub(crate) fn open(format: AccessLogFormat, path: Option<&Path>) -> std::io::Result<AccessLog> {
        let out: Option<Box<dyn Write + Send>> = match (format, path) {
            (AccessLogFormat::Off, _) => None,
            (_, None) => Some(Box::new(std::io::stdout())),
            (_, Some(p)) => Some(Box::new(std::io::BufWriter::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ))),
        };
        Ok(AccessLog {
            format,
            out: out.map(Mutex::new),
        })
    }

    pub(crate) fn enabled(&self) -> bool {
        self.out.is_some()
    }

    pub(crate) fn write(&self, e: &Entry<'_>) {
        let Some(out) = &self.out else { return };
        let line = match self.format {
            AccessLogFormat::Off => return,
            AccessLogFormat::Combined => combined(e),
            AccessLogFormat::Json => json(e),
        };
        if let Ok(mut w) = out.lock() {
            let _ = w.write_all(line.as_bytes());
            let _ = w.flush();
        }
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn combined(e: &Entry<'_>) -> String {
    format!(
        "{} - - [{}] \"{} {} {}\" {} {} \"{}\" \"{}\" upstream={} instance={} upstream_status={} upstream_time={} request_time={:.3} retries={} request_id={}\n",
        e.client,
        clf_time(SystemTime::now()),
        e.method,
        e.target,
        e.version,
        e.status,
        e.bytes,
        if e.referer.is_empty() { "-" } else { e.referer },
        if e.user_agent.is_empty() { "-" } else { e.user_agent },
        opt(e.upstream),
        e.upstream_id.unwrap_or("-"),
        opt(e.upstream_status),
        e.upstream_time.map(|d| format!("{:.3}", d.as_secs_f64())).unwrap_or_else(|| "-".into()),
        e.total_time.as_secs_f64(),
        e.retries,
        if e.request_id.is_empty() { "-" } else { e.request_id },
    )
}

fn json(e: &Entry<'_>) -> String {
    let v = serde_json::json!({
        "time": rfc3339(SystemTime::now()),
        "client": e.client.to_string(),
        "method": e.method,
        "target": e.target,
        "version": e.version,
        "status": e.status,
        "bytes": e.bytes,
        "referer": e.referer,
        "user_agent": e.user_agent,
        "upstream": e.upstream.map(|a| a.to_string()),
        "instance": e.upstream_id,
        "upstream_status": e.upstream_status,
        "upstream_time": e.upstream_time.map(|d| d.as_secs_f64()),
        "request_time": e.total_time.as_secs_f64(),
        "retries": e.retries,
        "request_id": e.request_id,
        "error": e.error,
    });
    let mut s = v.to_string();
    s.push('\n');
    s
}

/// (year, month, day, hour, minute, second) in UTC (Howard Hinnant's civil_from_days).
fn civil(t: SystemTime) -> (i64, u32, u32, u32, u32, u32) {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = if m <= 2 { y + 1 } else { y };
    (
        y,
        m,
        d,
        (sod / 3600) as u32,
        (sod % 3600 / 60) as u32,
        (sod % 60) as u32,
    )
}

fn clf_time(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, m, d, hh, mm, ss) = civil(t);
    format!(
        "{d:02}/{}/{y}:{hh:02}:{mm:02}:{ss:02} +0000",
        MONTHS[m as usize - 1]
    )
}

fn rfc3339(t: SystemTime) -> String {
    let (y, m, d, hh, mm, ss) = civil(t);
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_millis())
        .unwrap_or(0);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{ms:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40.000Z");
        assert_eq!(clf_time(t), "18/Nov/2026:11:06:40 +0000");
    }
}
