//! [`DemoOptions`]: what the demo app is told by its environment.

use std::time::Duration;

/// How long in-flight requests may take to finish once shutdown starts.
/// Matches the supervisor's usual stop grace so a drained instance is never cut short.
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Configuration of one demo instance.
///
/// Build it with [`DemoOptions::from_env`] (what `drove demo` does), with
/// [`DemoOptions::from_lookup`] (tests: no process-wide environment), or literally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoOptions {
    /// Name shown in every response (`X-Demo-Instance`), e.g. `web.2`.
    pub instance: String,
    /// `INSTANCE_ID` as the supervisor (or a hand-written compose file) set it, e.g. `2`;
    /// reported by `/health`.
    pub instance_id: Option<String>,
    /// `/ready` answers 503 until this much time has passed since [`crate::run`] started.
    pub ready_delay: Duration,
    /// When set, `/session` counters live in Redis and are shared by all instances.
    pub redis_url: Option<String>,
    /// Upper bound on how long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            instance: "demo".to_owned(),
            instance_id: None,
            ready_delay: Duration::ZERO,
            redis_url: None,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

impl DemoOptions {
    /// Reads the process environment.
    ///
    /// - `DROVE_INSTANCE` (set by the supervisor, e.g. `web.2`) names the instance; else
    ///   `INSTANCE_ID` gives `demo.<id>`; else `demo`.
    /// - `DEMO_READY_DELAY`: `2s`, `500ms`, `1.5s`, `1m` or bare milliseconds (`250`).
    /// - `DEMO_SHUTDOWN_GRACE`: same syntax; default 10 s.
    /// - `REDIS_URL`: e.g. `redis://127.0.0.1:6379/`; empty means unset.
    ///
    /// A value that does not parse is reported on stderr and replaced by its default:
    /// a demo that refuses to start over a typo would be worse than one that says so.
    pub fn from_env() -> Self {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Like [`DemoOptions::from_env`], reading variables through `get`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let nonempty = |key: &str| {
            get(key)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut opts = Self {
            instance_id: nonempty("INSTANCE_ID"),
            ..Self::default()
        };
        if let Some(name) = nonempty("DROVE_INSTANCE") {
            opts.instance = name;
        } else if let Some(id) = nonempty("INSTANCE_ID") {
            opts.instance = format!("demo.{id}");
        }
        let duration = |key: &str, default: Duration| {
            match nonempty(key) {
            None => default,
            Some(text) => parse_duration(&text).unwrap_or_else(|| {
                eprintln!(
                    "drove demo: ignoring {key}={text:?}: expected e.g. \"2s\", \"500ms\" or milliseconds"
                );
                default
            }),
        }
        };
        opts.ready_delay = duration("DEMO_READY_DELAY", opts.ready_delay);
        opts.shutdown_grace = duration("DEMO_SHUTDOWN_GRACE", opts.shutdown_grace);
        opts.redis_url = nonempty("REDIS_URL");
        opts
    }
}

/// Parses `250` (milliseconds), `250ms`, `2s`, `1.5s`, `1m`.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "" | "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> DemoOptions {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        DemoOptions::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration(" 1m "), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        for bad in ["", "s", "2h", "-1s", "1..2s", "abc", "2 sec"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn defaults_when_nothing_is_set() {
        assert_eq!(lookup(&[]), DemoOptions::default());
        assert_eq!(DemoOptions::default().instance, "demo");
        assert_eq!(
            DemoOptions::default().shutdown_grace,
            Duration::from_secs(10)
        );
    }

    #[test]
    fn reads_variables() {
        let opts = lookup(&[
            ("DROVE_INSTANCE", "web.2"),
            ("INSTANCE_ID", "2"),
            ("DEMO_READY_DELAY", "2s"),
            ("DEMO_SHUTDOWN_GRACE", "500"),
            ("REDIS_URL", "redis://127.0.0.1:6379/"),
        ]);
        assert_eq!(opts.instance, "web.2");
        assert_eq!(opts.instance_id.as_deref(), Some("2"));
        assert_eq!(opts.ready_delay, Duration::from_secs(2));
        assert_eq!(opts.shutdown_grace, Duration::from_millis(500));
        assert_eq!(opts.redis_url.as_deref(), Some("redis://127.0.0.1:6379/"));
    }

    #[test]
    fn instance_id_fallback_and_bad_values() {
        let opts = lookup(&[
            ("INSTANCE_ID", "3"),
            ("DEMO_READY_DELAY", "soon"),
            ("REDIS_URL", "  "),
        ]);
        assert_eq!(opts.instance, "demo.3");
        assert_eq!(opts.ready_delay, Duration::ZERO);
        assert_eq!(opts.redis_url, None);
    }
}
