//! Self-contained HTML report: tables plus hand-drawn inline SVG line charts.
//! No scripts and no external resources, so the file can be mailed or attached to CI.

use std::fmt::Write as _;

use crate::report::{fmt_dur, Report};
use crate::Model;

const W: f64 = 760.0;
const H: f64 = 280.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 44.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 40.0;

struct Series<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

pub(crate) fn render(r: &Report) -> String {
    let mut o = String::new();
    let title = format!("drove bench — {} {}", r.method, r.url);
    let _ = write!(
        o,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\n\
         <style>body{{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:800px;color:#222}}\
         table{{border-collapse:collapse;margin:.5em 0 1.5em}}td,th{{padding:2px 10px;text-align:right;border-bottom:1px solid #ddd}}\
         th:first-child,td:first-child{{text-align:left}}svg{{background:#fafafa;border:1px solid #ddd}}\
         </style></head><body>\n",
        esc(&title)
    );
    let model = match r.model {
        Model::Closed => "closed model".to_string(),
        Model::Open { rate } => format!("open model at {rate} req/s"),
    };
    let _ = writeln!(
        o,
        "<h1>drove bench</h1><p><code>{} {}</code> — {}, {} connections, {} thread(s){}{}</p>",
        esc(&r.method),
        esc(&r.url),
        model,
        r.connections,
        r.threads,
        if r.keep_alive { "" } else { ", no keep-alive" },
        if r.cancelled {
            " — <b>stopped early</b>"
        } else {
            ""
        }
    );
    let _ = writeln!(
        o,
        "<table><tr><th>duration</th><th>requests</th><th>req/s</th><th>ok</th><th>errors</th>\
         <th>error rate</th><th>queued</th><th>unsent</th><th>retried</th></tr>\
         <tr><td>{:.2}s</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{:.2}%</td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
        r.duration.as_secs_f64(),
        r.requests,
        r.rps,
        r.ok,
        r.errors.total(),
        r.error_rate(),
        r.queued,
        r.unsent,
        r.retried
    );
    let _ = writeln!(
        o,
        "<h2>Latency</h2><table><tr><th></th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th>mean</th></tr>"
    );
    for (name, p) in [
        ("corrected", &r.latency),
        ("uncorrected", &r.latency_uncorrected),
    ] {
        let _ = writeln!(
            o,
            "<tr><td>{name}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            fmt_dur(p.p50),
            fmt_dur(p.p90),
            fmt_dur(p.p99),
            fmt_dur(p.p999),
            fmt_dur(p.max),
            fmt_dur(p.mean)
        );
    }
    o.push_str("</table>\n");
    let e = &r.errors;
    let _ = writeln!(
        o,
        "<table><tr><th>errors</th><th>connect</th><th>timeout</th><th>reset</th><th>other</th><th>status ≥ 400</th></tr>\
         <tr><td></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
        e.connect, e.timeout, e.reset, e.other, e.status
    );
    if !r.status_counts.is_empty() {
        o.push_str("<table><tr><th>status</th><th>responses</th></tr>");
        for (c, n) in &r.status_counts {
            let _ = write!(o, "<tr><td>{c}</td><td>{n}</td></tr>");
        }
        o.push_str("</table>\n");
    }

    // Latency over time.
    let secs: Vec<&crate::Second> = r.timeline.iter().collect();
    let x_of = |t: u64| t as f64 + 0.5;
    let _ = writeln!(o, "<h2>Latency over time (corrected, per second)</h2>");
    o.push_str(&line_chart(
        &[
            Series {
                name: "p50",
                color: "#2b7bb9",
                points: secs.iter().map(|s| (x_of(s.t), ms(s.p50))).collect(),
            },
            Series {
                name: "p99",
                color: "#d9480f",
                points: secs.iter().map(|s| (x_of(s.t), ms(s.p99))).collect(),
            },
            Series {
                name: "max",
                color: "#999999",
                points: secs.iter().map(|s| (x_of(s.t), ms(s.max))).collect(),
            },
        ],
        &time_ticks(secs.last().map_or(1, |s| s.t + 1)),
        "seconds",
        "ms",
    ));
    let _ = writeln!(o, "<h2>Requests per second</h2>");
    o.push_str(&line_chart(
        &[
            Series {
                name: "requests",
                color: "#2f9e44",
                points: secs
                    .iter()
                    .map(|s| (x_of(s.t), s.requests as f64))
                    .collect(),
            },
            Series {
                name: "errors",
                color: "#e03131",
                points: secs.iter().map(|s| (x_of(s.t), s.errors as f64)).collect(),
            },
        ],
        &time_ticks(secs.last().map_or(1, |s| s.t + 1)),
        "seconds",
        "req/s",
    ));

    // Latency by percentile, x = log10(1 / (1 - p)).
    let _ = writeln!(o, "<h2>Latency by percentile</h2>");
    let px = |p: f64| {
        let rest = (1.0 - p / 100.0).max(1e-6);
        (1.0 / rest).log10()
    };
    let ticks: Vec<(f64, String)> = [0.0, 90.0, 99.0, 99.9, 99.99, 99.999, 99.9999]
        .iter()
        .map(|&p| (px(p), format!("{p}%")))
        .collect();
    o.push_str(&line_chart(
        &[
            Series {
                name: "corrected",
                color: "#d9480f",
                points: r
                    .latency_curve
                    .iter()
                    .map(|c| (px(c.percentile), ms(c.latency)))
                    .collect(),
            },
            Series {
                name: "uncorrected",
                color: "#2b7bb9",
                points: r
                    .latency_curve
                    .iter()
                    .map(|c| (px(c.percentile), ms(c.uncorrected)))
                    .collect(),
            },
        ],
        &ticks,
        "percentile",
        "ms",
    ));

    if !r.per_instance.is_empty() {
        let total: u64 = r.per_instance.values().sum();
        o.push_str("<h2>Per instance</h2><table><tr><th>instance</th><th>responses</th><th>share</th></tr>");
        for (k, n) in &r.per_instance {
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{n}</td><td>{:.2}%</td></tr>",
                esc(k),
                *n as f64 * 100.0 / total as f64
            );
        }
        o.push_str("</table>\n");
        if let Some(c) = r.chi_square {
            let _ = writeln!(
                o,
                "<p>Chi-square against equal shares: {:.2} with {} degrees of freedom, p = {:.4}.</p>",
                c.statistic, c.dof, c.p_value
            );
        }
    }
    o.push_str("</body></html>\n");
    o
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn time_ticks(secs: u64) -> Vec<(f64, String)> {
    let step = nice_step(secs as f64 / 8.0).max(1.0);
    let mut v = Vec::new();
    let mut t = 0.0;
    while t <= secs as f64 + 1e-9 {
        v.push((t, format!("{t}")));
        t += step;
    }
    v
}

/// 1, 2, 5 × 10^k at or above `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let n = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    n * mag
}

fn line_chart(
    series: &[Series<'_>],
    x_ticks: &[(f64, String)],
    x_label: &str,
    y_label: &str,
) -> String {
    let mut o = String::new();
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let x_min = x_ticks
        .first()
        .map_or(0.0, |t| t.0)
        .min(xs.clone().fold(f64::INFINITY, f64::min));
    let x_max = x_ticks
        .last()
        .map_or(1.0, |t| t.0)
        .max(xs.fold(f64::NEG_INFINITY, f64::max));
    let y_max_raw = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let y_step = nice_step(y_max_raw / 5.0);
    let y_max = if y_max_raw > 0.0 {
        (y_max_raw / y_step).ceil() * y_step
    } else {
        1.0
    };
    let x_span = if x_max > x_min { x_max - x_min } else { 1.0 };
    let sx = |x: f64| LEFT + (x - x_min) / x_span * (W - LEFT - RIGHT);
    let sy = |y: f64| TOP + (1.0 - y / y_max) * (H - TOP - BOTTOM);
    let _ = writeln!(
        o,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" \
         font-family=\"system-ui,sans-serif\" font-size=\"11\" fill=\"#555\">"
    );
    // Horizontal grid and y labels.
    let mut y = 0.0;
    while y <= y_max + y_step * 1e-9 && y_step > 0.0 {
        let py = sy(y);
        let _ = writeln!(
            o,
            "<line stroke=\"#e4e4e4\" x1=\"{LEFT}\" y1=\"{py:.1}\" x2=\"{:.1}\" y2=\"{py:.1}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 6.0,
            py + 4.0,
            trim_num(y)
        );
        y += y_step;
    }
    for (x, label) in x_ticks {
        let px = sx(*x);
        let _ = writeln!(
            o,
            "<line stroke=\"#e4e4e4\" x1=\"{px:.1}\" y1=\"{TOP}\" x2=\"{px:.1}\" y2=\"{:.1}\"/>\
             <text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            H - BOTTOM,
            H - BOTTOM + 14.0,
            esc(label)
        );
    }
    let _ = writeln!(
        o,
        "<line stroke=\"#888\" x1=\"{LEFT}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\"/>\
         <line stroke=\"#888\" x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{:.1}\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
         <text x=\"14\" y=\"{:.1}\" transform=\"rotate(-90 14 {:.1})\" text-anchor=\"middle\">{}</text>",
        H - BOTTOM,
        W - RIGHT,
        H - BOTTOM,
        H - BOTTOM,
        (LEFT + W - RIGHT) / 2.0,
        H - 6.0,
        esc(x_label),
        (TOP + H - BOTTOM) / 2.0,
        (TOP + H - BOTTOM) / 2.0,
        esc(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        if !s.points.is_empty() {
            let pts: Vec<String> = s
                .points
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
                .collect();
            let _ = writeln!(
                o,
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.8\" points=\"{}\"/>",
                s.color,
                pts.join(" ")
            );
        }
        let lx = LEFT + 12.0 + 110.0 * i as f64;
        let _ = writeln!(
            o,
            "<rect x=\"{lx:.1}\" y=\"{:.1}\" width=\"12\" height=\"3\" fill=\"{}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            TOP + 6.0,
            s.color,
            lx + 16.0,
            TOP + 10.0,
            esc(s.name)
        );
    }
    o.push_str("</svg>\n");
    o
}

fn trim_num(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_escaping() {
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(7.0), 10.0);
        assert_eq!(nice_step(1.5), 2.0);
        assert_eq!(esc("<a href=\"x\">&"), "&lt;a href=&quot;x&quot;&gt;&amp;");
        assert_eq!(trim_num(2.5), "2.5");
        assert_eq!(trim_num(10.0), "10");
    }
}
