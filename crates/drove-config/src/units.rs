//! Parsers for the value syntaxes of drove.toml: durations, sizes, percentages, rates,
//! socket addresses and CIDRs. Each returns a plain Rust value or a message that the
//! caller attaches to the value's span.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::model::{Cidr, Rate};

/// Parses `"250ms"`, `"2s"`, `"1m30s"`, `"1.5h"`: one or more `<number><unit>` parts with
/// units `ms`, `s`, `m`, `h`, `d`, largest first.
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    const HINT: &str = "expected a duration like \"250ms\", \"2s\", \"1m30s\" or \"1h\"";
    let text = s.trim();
    if text.is_empty() {
        return Err(format!("empty duration; {HINT}"));
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "duration \"{text}\" has no unit; write \"{text}s\" for seconds or \"{text}ms\" for milliseconds"
        ));
    }
    let mut rest = text;
    let mut total = Duration::ZERO;
    let mut last_rank = usize::MAX;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        let unit_len = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        if num.is_empty() || unit.is_empty() {
            return Err(format!("invalid duration \"{text}\"; {HINT}"));
        }
        let value: f64 = num
            .parse()
            .map_err(|_| format!("invalid number `{num}` in duration \"{text}\""))?;
        // Rank orders the units so "1m30s" is accepted and "30s1m" is not.
        let (rank, secs) = match unit {
            "d" => (0, 86_400.0),
            "h" => (1, 3_600.0),
            "m" | "min" => (2, 60.0),
            "s" => (3, 1.0),
            "ms" => (4, 0.001),
            "us" | "µs" => (5, 0.000_001),
            _ => {
                return Err(format!(
                    "unknown unit `{unit}` in duration \"{text}\"; use ms, s, m, h or d"
                ))
            }
        };
        if last_rank != usize::MAX && rank <= last_rank {
            return Err(format!(
                "invalid duration \"{text}\": units must go from largest to smallest, each once"
            ));
        }
        last_rank = rank;
        let part = value * secs;
        if !part.is_finite() || part > 1e12 {
            return Err(format!("duration \"{text}\" is too large"));
        }
        total += Duration::from_secs_f64(part);
        rest = after;
    }
    Ok(total)
}

/// Parses `"512MiB"`, `"10MB"`, `"1GiB"`, `"4096"` (bytes). Decimal units are powers of
/// 1000, binary (`KiB`, `MiB`, ...) powers of 1024, as on the label.
pub(crate) fn size(s: &str) -> Result<u64, String> {
    let text = s.trim();
    let num_len = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(num_len);
    let unit = unit.trim();
    if num.is_empty() {
        return Err(format!(
            "invalid size \"{text}\"; expected a size like \"512MiB\", \"10MB\" or a number of bytes"
        ));
    }
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        _ => {
            return Err(format!(
            "unknown unit `{unit}` in size \"{text}\"; use B, KB, KiB, MB, MiB, GB, GiB, TB or TiB"
        ))
        }
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid number `{num}` in size \"{text}\""))?;
    let bytes = value * mult as f64;
    if bytes > u64::MAX as f64 {
        return Err(format!("size \"{text}\" is too large"));
    }
    if bytes.fract() != 0.0 {
        return Err(format!("size \"{text}\" is not a whole number of bytes"));
    }
    Ok(bytes as u64)
}

/// Parses `"20%"` or `"12.5%"` into a fraction in `0.0..=1.0`.
pub(crate) fn percent(s: &str) -> Result<f64, String> {
    let text = s.trim();
    let Some(num) = text.strip_suffix('%') else {
        return Err(format!(
            "invalid percentage \"{text}\"; expected a percentage like \"20%\""
        ));
    };
    let value: f64 = num.trim().parse().map_err(|_| {
        format!("invalid percentage \"{text}\"; expected a percentage like \"20%\"")
    })?;
    if !(0.0..=100.0).contains(&value) {
        return Err(format!(
            "percentage \"{text}\" is out of range; expected 0% to 100%"
        ));
    }
    Ok(value / 100.0)
}

/// Parses `"10/s"`, `"600/m"`, `"1000/h"`, `"5/10s"`.
pub(crate) fn rate(s: &str) -> Result<Rate, String> {
    const HINT: &str = "expected a rate like \"10/s\", \"600/m\" or \"1000/h\"";
    let text = s.trim();
    let Some((count, per)) = text.split_once('/') else {
        return Err(format!("invalid rate \"{text}\"; {HINT}"));
    };
    let count: u32 = count.trim().parse().map_err(|_| {
        format!(
            "invalid count `{}` in rate \"{text}\"; {HINT}",
            count.trim()
        )
    })?;
    if count == 0 {
        return Err(format!(
            "rate \"{text}\" allows nothing; the count must be at least 1"
        ));
    }
    let per = per.trim();
    let period = match per {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3_600),
        "d" | "day" => Duration::from_secs(86_400),
        other => duration(other)
            .map_err(|_| format!("invalid period `{per}` in rate \"{text}\"; {HINT}"))?,
    };
    if period.is_zero() {
        return Err(format!("rate \"{text}\" has a zero period"));
    }
    Ok(Rate { count, per: period })
}

/// Parses `"127.0.0.1:8080"`, `"[::1]:8080"` and `":8080"` (all IPv4 interfaces).
pub(crate) fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    let text = s.trim();
    if let Some(port) = text.strip_prefix(':') {
        return port
            .parse::<u16>()
            .map(|p| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), p))
            .map_err(|_| format!("invalid port `{port}` in address \"{text}\""));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if text.parse::<IpAddr>().is_ok() {
        return Err(format!(
            "address \"{text}\" has no port; write \"{text}:PORT\" (IPv6: \"[{text}]:PORT\")"
        ));
    }
    match text.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() && !host.is_empty() && !host.contains(':') => Err(format!(
            "\"{text}\" is not an IP address and port; host names are not resolved here, write an IP like \"127.0.0.1:{port}\""
        )),
        Some((_, port)) if port.parse::<u16>().is_err() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            Err(format!("port `{port}` in \"{text}\" is out of range (0-65535)"))
        }
        _ => Err(format!(
            "invalid address \"{text}\"; expected \"IP:PORT\" like \"127.0.0.1:8080\", \"[::1]:8080\" or \":8080\""
        )),
    }
}

/// Parses `"10.0.0.0/8"`, `"::1/128"` or a bare IP (a single host).
pub(crate) fn cidr(s: &str) -> Result<Cidr, String> {
    s.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(duration("0s").unwrap(), Duration::ZERO);
        assert!(duration("5").unwrap_err().contains("no unit"));
        assert!(duration("5x").unwrap_err().contains("unknown unit `x`"));
        assert!(duration("30s1m")
            .unwrap_err()
            .contains("largest to smallest"));
        assert!(duration("").is_err());
        assert!(duration("s").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(size("512MiB").unwrap(), 512 << 20);
        assert_eq!(size("10MB").unwrap(), 10_000_000);
        assert_eq!(size("1GiB").unwrap(), 1 << 30);
        assert_eq!(size("16KiB").unwrap(), 16 << 10);
        assert_eq!(size("0").unwrap(), 0);
        assert_eq!(size("1.5KiB").unwrap(), 1536);
        assert!(size("10 parsecs").unwrap_err().contains("unknown unit"));
        assert!(size("MiB").is_err());
    }

    #[test]
    fn percents() {
        assert_eq!(percent("20%").unwrap(), 0.2);
        assert_eq!(percent("100%").unwrap(), 1.0);
        assert!(percent("20").is_err());
        assert!(percent("120%").unwrap_err().contains("out of range"));
    }

    #[test]
    fn rates() {
        assert_eq!(
            rate("10/s").unwrap(),
            Rate {
                count: 10,
                per: Duration::from_secs(1)
            }
        );
        assert_eq!(
            rate("600/m").unwrap(),
            Rate {
                count: 600,
                per: Duration::from_secs(60)
            }
        );
        assert_eq!(
            rate("5/10s").unwrap(),
            Rate {
                count: 5,
                per: Duration::from_secs(10)
            }
        );
        assert!(rate("10").is_err());
        assert!(rate("0/s").is_err());
        assert!(rate("10/fortnight").is_err());
    }

    #[test]
    fn addrs() {
        assert_eq!(
            socket_addr("127.0.0.1:8080").unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            socket_addr("[::1]:8080").unwrap(),
            "[::1]:8080".parse().unwrap()
        );
        assert_eq!(
            socket_addr(":8080").unwrap(),
            "0.0.0.0:8080".parse().unwrap()
        );
        assert!(socket_addr("localhost:80")
            .unwrap_err()
            .contains("host names"));
        assert!(socket_addr("127.0.0.1").unwrap_err().contains("no port"));
        assert!(socket_addr("127.0.0.1:99999")
            .unwrap_err()
            .contains("out of range"));
        assert!(socket_addr(":x").is_err());
    }

    #[test]
    fn cidrs() {
        let net = cidr("10.0.0.0/8").unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(cidr("::1/128").unwrap().contains("::1".parse().unwrap()));
        assert_eq!(cidr("127.0.0.1").unwrap().prefix(), 32);
        assert!(cidr("10.0.0.0/33").is_err());
        assert!(cidr("nope").is_err());
    }
}
