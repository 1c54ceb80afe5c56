//! JUnit XML, the format CI systems read: one `<testcase>` per drill, a failed drill as
//! `<failure>`, a skipped one as `<skipped>`, its numbers (JSON) in `<system-out>`.

use std::fmt::Write as _;
use std::time::Duration;

use crate::DrillResult;

/// The results as a JUnit XML document (one `<testsuite name="drove verify">`).
pub fn junit_xml(results: &[DrillResult], elapsed: Duration) -> String {
    let failures = results.iter().filter(|r| r.passed == Some(false)).count();
    let skipped = results.iter().filter(|r| r.passed.is_none()).count();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"drove verify\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{:.3}\">",
        results.len(),
        elapsed.as_secs_f64()
    );
    let _ = writeln!(
        x,
        "  <testsuite name=\"drove verify\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{:.3}\">",
        results.len(),
        elapsed.as_secs_f64()
    );
    for r in results {
        let _ = write!(
            x,
            "    <testcase classname=\"drove.verify\" name=\"{}\" time=\"{:.3}\">",
            escape(r.name()),
            r.elapsed.as_secs_f64()
        );
        match r.passed {
            Some(true) => {}
            Some(false) => {
                let _ = write!(
                    x,
                    "\n      <failure message=\"{}\">{}</failure>",
                    escape(&r.summary),
                    escape(&r.summary)
                );
            }
            None => {
                let why = r.summary.strip_prefix("skipped: ").unwrap_or(&r.summary);
                let _ = write!(x, "\n      <skipped message=\"{}\"/>", escape(why));
            }
        }
        let _ = write!(
            x,
            "\n      <system-out>{}</system-out>\n    </testcase>\n",
            escape(&format!("{}\n{}", r.line(), r.numbers))
        );
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}

/// XML text and attribute escaping; characters XML 1.0 forbids are dropped.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Drill;
    use serde_json::json;

    #[test]
    fn one_testcase_per_drill() {
        let mk = |drill, passed, summary: &str| DrillResult {
            drill,
            passed,
            summary: summary.into(),
            numbers: json!({"a": "<&>"}),
            elapsed: Duration::from_millis(1500),
        };
        let x = junit_xml(
            &[
                mk(Drill::Health, Some(true), "3/3 ok"),
                mk(
                    Drill::Distribution,
                    Some(false),
                    "b3 got 0 <backup> & \"x\"",
                ),
                mk(Drill::Limits, None, "skipped: no [limits] configured"),
            ],
            Duration::from_secs(3),
        );
        assert_eq!(x.matches("<testcase ").count(), 3);
        assert!(x.contains("tests=\"3\" failures=\"1\" errors=\"0\" skipped=\"1\""));
        assert!(x.contains("<failure message=\"b3 got 0 &lt;backup&gt; &amp; &quot;x&quot;\">"));
        assert!(x.contains("<skipped message=\"no [limits] configured\"/>"));
        assert!(!x.contains("<&>"));
        assert!(x.contains("time=\"1.500\""));
    }
}
