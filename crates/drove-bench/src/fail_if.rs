//! `--fail-if` conditions: `p99>50ms,errors>0,rps<1000,p50>=10ms,error_rate>1%`.
//!
//! A condition is `METRIC OP VALUE`; the run *fails* when any condition holds.
//! Latency metrics take a duration with a unit (`us`, `ms`, `s`, `m`), `error_rate` a
//! percentage (`1%` or `1`), the rest plain numbers.

use std::fmt;
use std::time::Duration;

use crate::report::{fmt_dur, Report};

/// What a condition looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Corrected latency percentiles and moments.
    P50,
    /// 90th percentile.
    P90,
    /// 99th percentile.
    P99,
    /// 99.9th percentile.
    P999,
    /// Maximum.
    Max,
    /// Mean.
    Mean,
    /// Responses per second.
    Rps,
    /// Finished requests.
    Requests,
    /// All errors (transport + status ≥ 400).
    Errors,
    /// Errors as a percentage of finished requests.
    ErrorRate,
    /// p-value of the equal-share chi-square test (1.0 when not computable).
    ChiSquareP,
    /// Open model: requests due but never sent.
    Unsent,
}

impl Metric {
    const ALL: [(&'static str, Metric); 13] = [
        ("p50", Metric::P50),
        ("p90", Metric::P90),
        ("p99", Metric::P99),
        ("p999", Metric::P999),
        ("p99.9", Metric::P999),
        ("max", Metric::Max),
        ("mean", Metric::Mean),
        ("rps", Metric::Rps),
        ("requests", Metric::Requests),
        ("errors", Metric::Errors),
        ("error_rate", Metric::ErrorRate),
        ("chi_square_p", Metric::ChiSquareP),
        ("unsent", Metric::Unsent),
    ];

    fn is_latency(self) -> bool {
        matches!(
            self,
            Metric::P50 | Metric::P90 | Metric::P99 | Metric::P999 | Metric::Max | Metric::Mean
        )
    }

    fn name(self) -> &'static str {
        Metric::ALL
            .iter()
            .find(|(_, m)| *m == self)
            .map(|(n, _)| *n)
            .expect("every metric has a name")
    }
}

/// Comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `==` (or `=`)
    Eq,
    /// `!=`
    Ne,
}

impl Op {
    fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Op::Gt => a > b,
            Op::Ge => a >= b,
            Op::Lt => a < b,
            Op::Le => a <= b,
            Op::Eq => a == b,
            Op::Ne => a != b,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }
}

/// One `METRIC OP VALUE` condition. Latencies are held in seconds, `error_rate` in percent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Condition {
    /// Metric compared.
    pub metric: Metric,
    /// Operator.
    pub op: Op,
    /// Threshold (seconds for latency metrics, percent for `error_rate`).
    pub value: f64,
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = if self.metric.is_latency() {
            fmt_dur(Duration::from_secs_f64(self.value))
        } else if self.metric == Metric::ErrorRate {
            format!("{}%", self.value)
        } else {
            format!("{}", self.value)
        };
        write!(f, "{}{}{}", self.metric.name(), self.op.as_str(), v)
    }
}

/// A `--fail-if` expression or a duration that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FailIfError {
    /// Empty expression or empty item between commas.
    #[error("empty condition in {0:?}")]
    Empty(String),
    /// No comparison operator.
    #[error("{0:?}: expected METRIC OP VALUE, e.g. p99>50ms (operators: > >= < <= == !=)")]
    NoOperator(String),
    /// Unknown metric name.
    #[error("{0:?}: unknown metric (known: p50 p90 p99 p999 max mean rps requests errors error_rate chi_square_p unsent)")]
    UnknownMetric(String),
    /// Value does not fit the metric.
    #[error("{0:?}: {1}")]
    BadValue(String, String),
}

/// Parses `500ms`, `1.5s`, `250us`/`250µs`, `2m`, `1h`. A unit is required.
pub fn parse_duration(s: &str) -> Result<Duration, FailIfError> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = |why: &str| FailIfError::BadValue(s.to_string(), why.to_string());
    let n: f64 = num
        .parse()
        .map_err(|_| bad("expected a number with a unit, e.g. 500ms, 30s, 1m"))?;
    let scale = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "" => return Err(bad("missing unit (us, ms, s, m, h)")),
        _ => return Err(bad("unknown unit (us, ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(n * scale).map_err(|_| bad("duration out of range"))
}

/// Parses a comma-separated list of conditions.
pub fn parse_fail_if(expr: &str) -> Result<Vec<Condition>, FailIfError> {
    if expr.trim().is_empty() {
        return Err(FailIfError::Empty(expr.to_string()));
    }
    expr.split(',').map(|item| parse_one(item, expr)).collect()
}

fn parse_one(item: &str, expr: &str) -> Result<Condition, FailIfError> {
    let item = item.trim();
    if item.is_empty() {
        return Err(FailIfError::Empty(expr.to_string()));
    }
    let pos = item
        .find(['<', '>', '=', '!'])
        .ok_or_else(|| FailIfError::NoOperator(item.to_string()))?;
    let (name, rest) = item.split_at(pos);
    let (op, value) = [
        (">=", Op::Ge),
        ("<=", Op::Le),
        ("==", Op::Eq),
        ("!=", Op::Ne),
        (">", Op::Gt),
        ("<", Op::Lt),
        ("=", Op::Eq),
    ]
    .iter()
    .find_map(|(s, op)| rest.strip_prefix(s).map(|v| (*op, v.trim())))
    .ok_or_else(|| FailIfError::NoOperator(item.to_string()))?;
    let name = name.trim().to_ascii_lowercase();
    let metric = Metric::ALL
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, m)| *m)
        .ok_or_else(|| FailIfError::UnknownMetric(name.clone()))?;
    let bad = |why: &str| FailIfError::BadValue(item.to_string(), why.to_string());
    let value = if metric.is_latency() {
        parse_duration(value)
            .map_err(|e| match e {
                FailIfError::BadValue(_, why) => bad(&why),
                other => other,
            })?
            .as_secs_f64()
    } else if metric == Metric::ErrorRate {
        let v = value.strip_suffix('%').unwrap_or(value).trim();
        v.parse::<f64>()
            .map_err(|_| bad("expected a percentage, e.g. 1% or 0.5%"))?
    } else {
        value.parse::<f64>().map_err(|_| bad("expected a number"))?
    };
    if !value.is_finite() {
        return Err(bad("expected a finite number"));
    }
    Ok(Condition { metric, op, value })
}

impl Report {
    /// The value a condition compares (seconds for latencies, percent for error_rate).
    pub fn metric(&self, m: Metric) -> f64 {
        let l = &self.latency;
        match m {
            Metric::P50 => l.p50.as_secs_f64(),
            Metric::P90 => l.p90.as_secs_f64(),
            Metric::P99 => l.p99.as_secs_f64(),
            Metric::P999 => l.p999.as_secs_f64(),
            Metric::Max => l.max.as_secs_f64(),
            Metric::Mean => l.mean.as_secs_f64(),
            Metric::Rps => self.rps,
            Metric::Requests => self.requests as f64,
            Metric::Errors => self.errors.total() as f64,
            Metric::ErrorRate => self.error_rate(),
            Metric::ChiSquareP => self.chi_square.map_or(1.0, |c| c.p_value),
            Metric::Unsent => self.unsent as f64,
        }
    }

    /// The conditions that hold, as messages like `p99 = 63.2ms (fail-if p99>50ms)`.
    /// Empty means the run passed.
    pub fn check(&self, conditions: &[Condition]) -> Vec<String> {
        conditions
            .iter()
            .filter_map(|c| {
                let v = self.metric(c.metric);
                if !c.op.holds(v, c.value) {
                    return None;
                }
                let shown = if c.metric.is_latency() {
                    fmt_dur(Duration::from_secs_f64(v))
                } else if c.metric == Metric::ErrorRate {
                    format!("{v:.3}%")
                } else if c.metric == Metric::Rps || c.metric == Metric::ChiSquareP {
                    format!("{v:.4}")
                } else {
                    format!("{v}")
                };
                Some(format!("{} = {} (fail-if {})", c.metric.name(), shown, c))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(parse_duration("250µs").unwrap(), Duration::from_micros(250));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn parses_the_documented_example() {
        let c = parse_fail_if("p99>50ms,errors>0,rps<1000,p50>=10ms,error_rate>1%").unwrap();
        assert_eq!(
            c,
            vec![
                Condition {
                    metric: Metric::P99,
                    op: Op::Gt,
                    value: 0.05
                },
                Condition {
                    metric: Metric::Errors,
                    op: Op::Gt,
                    value: 0.0
                },
                Condition {
                    metric: Metric::Rps,
                    op: Op::Lt,
                    value: 1000.0
                },
                Condition {
                    metric: Metric::P50,
                    op: Op::Ge,
                    value: 0.01
                },
                Condition {
                    metric: Metric::ErrorRate,
                    op: Op::Gt,
                    value: 1.0
                },
            ]
        );
        assert_eq!(c[0].to_string(), "p99>50.0ms");
        let c = parse_fail_if(" P99.9 <= 2s , unsent != 0, chi_square_p<0.01").unwrap();
        assert_eq!(c[0].metric, Metric::P999);
        assert_eq!(c[0].op, Op::Le);
        assert_eq!(c[1].op, Op::Ne);
        assert_eq!(c[2].value, 0.01);
    }

    #[test]
    fn rejects_bad_expressions() {
        assert!(matches!(parse_fail_if(""), Err(FailIfError::Empty(_))));
        assert!(matches!(
            parse_fail_if("p99>5ms,"),
            Err(FailIfError::Empty(_))
        ));
        assert!(matches!(
            parse_fail_if("p99"),
            Err(FailIfError::NoOperator(_))
        ));
        assert!(matches!(
            parse_fail_if("p98>5ms"),
            Err(FailIfError::UnknownMetric(_))
        ));
        assert!(matches!(
            parse_fail_if("p99>50"),
            Err(FailIfError::BadValue(..))
        ));
        assert!(matches!(
            parse_fail_if("rps<fast"),
            Err(FailIfError::BadValue(..))
        ));
        assert!(matches!(
            parse_fail_if("p99=>5ms"),
            Err(FailIfError::BadValue(..))
        ));
    }
}
