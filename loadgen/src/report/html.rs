//! The self-contained HTML report: one page, inline CSS and inline SVG charts
//! drawn here (no scripts, fonts or images from anywhere else).

use std::fmt::Write;

use super::{Report, ScenarioReport};
use crate::progress::human;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 110.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 30.0;

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One line of a chart.
pub struct Line<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten.
fn nice_max(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    for step in [1.0, 2.0, 5.0, 10.0] {
        if max <= step * magnitude {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

/// Draws a line chart as an inline SVG element.
pub fn line_chart(title: &str, unit: &str, lines: &[Line<'_>]) -> String {
    let max_x = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let max_y = nice_max(
        lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .fold(0.0f64, f64::max),
    );
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let sx = |x: f64| LEFT + x / max_x * plot_w;
    let sy = |y: f64| TOP + plot_h - y / max_y * plot_h;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{t}">"#,
        t = escape(title)
    );
    let _ = write!(
        svg,
        r#"<text x="{LEFT}" y="16" class="title">{}</text>"#,
        escape(title)
    );
    for i in 0..=4 {
        let v = max_y * i as f64 / 4.0;
        let y = sy(v);
        let _ = write!(
            svg,
            r#"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" class="grid"/><text x="{:.1}" y="{:.1}" class="axis" text-anchor="end">{}</text>"#,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0,
            escape(&format!("{}{unit}", human(v)))
        );
    }
    let x_step = nice_max(max_x / 6.0).max(1.0);
    let mut v = 0.0;
    while v <= max_x + 1e-9 {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" class="axis" text-anchor="middle">{:.0}s</text>"#,
            sx(v),
            TOP + plot_h + 18.0,
            v
        );
        v += x_step;
    }
    for (i, line) in lines.iter().enumerate() {
        if line.points.is_empty() {
            continue;
        }
        let mut pts = String::new();
        for (x, y) in &line.points {
            let _ = write!(pts, "{:.1},{:.1} ", sx(*x), sy(y.min(max_y)));
        }
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{c}" stroke-width="1.8" points="{p}"/>"#,
            c = escape(line.color),
            p = pts.trim_end()
        );
        let ly = TOP + 12.0 + i as f64 * 16.0;
        let lx = LEFT + plot_w + 12.0;
        let _ = write!(
            svg,
            r#"<rect x="{lx:.1}" y="{:.1}" width="10" height="10" fill="{c}"/><text x="{:.1}" y="{ly:.1}" class="legend">{}</text>"#,
            ly - 9.0,
            lx + 14.0,
            escape(line.name),
            c = escape(line.color)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn scenario_section(s: &ScenarioReport) -> String {
    let m = &s.summary;
    let l = &m.latency_us;
    let mut html = String::new();
    let _ = write!(
        html,
        r#"<section><h2>{name} <span class="grade g{gc}">{grade}</span></h2><p class="muted">{desc}. {conns} connections, {dur:.0} s, measured from {from:.0} s; latency is {kind}.</p>"#,
        name = escape(&s.name),
        gc = escape(&s.grade.grade.as_str().replace('+', "p")),
        grade = escape(s.grade.grade.as_str()),
        desc = escape(&s.description),
        conns = s.connections,
        dur = s.duration_s,
        from = s.measure_from_s,
        kind = escape(&s.latency_kind.replace('_', " ")),
    );
    let _ = write!(
        html,
        "<table><tr><th>msg/s</th><th>MB/s</th><th>P50 ms</th><th>P95 ms</th><th>P99 ms</th><th>P99.9 ms</th><th>max ms</th><th>errors</th><th>error rate</th><th>connect ok</th><th>connect P99 ms</th><th>seed targets</th></tr>\
         <tr><td>{}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.3} %</td><td>{:.2} %</td><td>{}</td><td>{}</td></tr></table>",
        human(m.msg_per_s),
        m.bytes_per_s / 1e6,
        ms(l.p50),
        ms(l.p95),
        ms(l.p99),
        ms(l.p999),
        ms(l.max),
        m.errors_total,
        m.error_rate * 100.0,
        m.connect.success_rate * 100.0,
        ms(m.connect.time_us.p99),
        if s.grade.seed_targets_met { "met" } else { "missed" }
    );
    if !m.errors.is_empty() {
        let kinds: Vec<String> = m
            .errors
            .iter()
            .map(|(k, v)| format!("{}: {v}", escape(k)))
            .collect();
        let _ = write!(html, "<p><b>Errors by kind</b>: {}</p>", kinds.join(", "));
    }
    if !s.grade.reasons.is_empty() {
        let _ = write!(
            html,
            "<p class=\"muted\">Below the next grade: {}</p>",
            escape(&s.grade.reasons.join("; "))
        );
    }
    let series = &s.series;
    let pts = |f: &dyn Fn(&crate::stats::SeriesPoint) -> f64| -> Vec<(f64, f64)> {
        series.iter().map(|p| (p.t_s as f64 + 0.5, f(p))).collect()
    };
    html.push_str("<div class=\"charts\">");
    html.push_str(&line_chart(
        "Latency percentiles per second",
        "ms",
        &[
            Line {
                name: "P50",
                color: "#2b8a3e",
                points: pts(&|p| p.p50_us as f64 / 1000.0),
            },
            Line {
                name: "P95",
                color: "#e67700",
                points: pts(&|p| p.p95_us as f64 / 1000.0),
            },
            Line {
                name: "P99",
                color: "#c92a2a",
                points: pts(&|p| p.p99_us as f64 / 1000.0),
            },
        ],
    ));
    html.push_str(&line_chart(
        "Throughput",
        "/s",
        &[
            Line {
                name: "received",
                color: "#1971c2",
                points: pts(&|p| p.received as f64),
            },
            Line {
                name: "sent",
                color: "#868e96",
                points: pts(&|p| p.sent as f64),
            },
        ],
    ));
    html.push_str(&line_chart(
        "Connections and errors",
        "",
        &[
            Line {
                name: "open",
                color: "#5f3dc4",
                points: pts(&|p| p.connections as f64),
            },
            Line {
                name: "connects/s",
                color: "#1098ad",
                points: pts(&|p| p.connects as f64),
            },
            Line {
                name: "errors/s",
                color: "#c92a2a",
                points: pts(&|p| p.errors as f64),
            },
        ],
    ));
    if s.server
        .iter()
        .any(|x| x.cpu.is_some() || x.memory_bytes.is_some())
    {
        let source = s.server.first().map_or("", |x| x.source.as_str());
        let cpu_title = if source == "procfs" {
            "Server CPU, % of one core (from procfs)".to_string()
        } else {
            format!("Server CPU (from {source})")
        };
        let memory_title = format!("Server memory (from {source})");
        html.push_str(&line_chart(
            &cpu_title,
            "",
            &[Line {
                name: "cpu",
                color: "#0b7285",
                points: s
                    .server
                    .iter()
                    .filter_map(|x| x.cpu.map(|c| (x.t_s, c)))
                    .collect(),
            }],
        ));
        html.push_str(&line_chart(
            &memory_title,
            "B",
            &[Line {
                name: "memory",
                color: "#862e9c",
                points: s
                    .server
                    .iter()
                    .filter_map(|x| x.memory_bytes.map(|m| (x.t_s, m as f64)))
                    .collect(),
            }],
        ));
    }
    if let Some(p) = s.pauses.as_ref().filter(|p| p.pauses_total > 0) {
        let per_second = |values: &[u64]| -> Vec<(f64, f64)> {
            values
                .iter()
                .enumerate()
                .map(|(t, &us)| (t as f64 + 0.5, us as f64 / 1000.0))
                .collect()
        };
        html.push_str(&line_chart(
            "Machine pauses against the slowest message, per second",
            "ms",
            &[
                Line {
                    name: "all CPUs stopped",
                    color: "#212529",
                    points: per_second(&p.per_second_all_cpus_us),
                },
                Line {
                    name: "latest wake-up",
                    color: "#868e96",
                    points: per_second(&p.per_second_longest_us),
                },
                Line {
                    name: "latency max",
                    color: "#c92a2a",
                    points: pts(&|x| x.max_us as f64 / 1000.0),
                },
            ],
        ));
    }
    html.push_str("</div>");
    if let Some(p) = &s.pauses {
        let _ = write!(html, "<p class=\"muted\">{}</p>", escape(&p.summary_line()));
    }
    if let Some(d) = &s.drift {
        let _ = write!(
            html,
            "<p><b>Drift</b> (first vs last {} s): P99 {} → {} ms ({:+.1} %), msg/s {} → {}, server memory change {}</p>",
            d.window_s,
            ms(d.p99_first_us),
            ms(d.p99_last_us),
            d.p99_change_pct,
            human(d.msg_per_s_first),
            human(d.msg_per_s_last),
            d.server_memory_change_bytes
                .map(|b| format!("{:+.1} MB", b as f64 / 1e6))
                .unwrap_or_else(|| "n/a (no /metrics.json)".into())
        );
    }
    html.push_str("</section>");
    html
}

/// Renders the whole report page.
pub fn render(report: &Report) -> String {
    let c = &report.config;
    let mut html = String::from(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>ws-uring loadgen report</title><style>\
         body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1320px;color:#212529;padding:0 1em}\
         h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.6em}.muted{color:#868e96}\
         table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #dee2e6;padding:.3em .6em;text-align:right;font-variant-numeric:tabular-nums}\
         th{background:#f1f3f5}td:first-child,th:first-child{text-align:left}\
         .charts{display:flex;flex-wrap:wrap;gap:8px}svg{background:#fff;border:1px solid #e9ecef;border-radius:4px}\
         svg .title{font-size:13px;font-weight:600;fill:#343a40}svg .axis{font-size:10px;fill:#868e96}svg .legend{font-size:11px;fill:#495057}\
         svg .grid{stroke:#f1f3f5;stroke-width:1}\
         .grade{display:inline-block;padding:0 .45em;border-radius:4px;color:#fff;font-size:.9em}\
         .gAp,.gA{background:#2b8a3e}.gB{background:#5c940d}.gC{background:#e67700}.gD{background:#d9480f}.gF{background:#c92a2a}\
         </style></head><body>",
    );
    let _ = write!(
        html,
        "<h1>ws-uring loadgen report</h1><p>{} · workload <b>{}</b> · {} loop{} · {} thread(s) · {} in flight · {} B messages · loadgen {}</p>",
        escape(&c.url),
        escape(&c.workload),
        escape(&c.mode),
        c.rate.map(|r| format!(" at {}/s", human(r))).unwrap_or_default(),
        c.threads,
        c.in_flight,
        c.message_bytes,
        escape(&report.tool.version)
    );
    html.push_str("<table><tr><th>scenario</th><th>connections</th><th>msg/s</th><th>P50 ms</th><th>P95 ms</th><th>P99 ms</th><th>P99.9 ms</th><th>errors</th><th>grade</th></tr>");
    for s in &report.scenarios {
        let l = &s.summary.latency_us;
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&s.name),
            s.connections,
            human(s.summary.msg_per_s),
            ms(l.p50),
            ms(l.p95),
            ms(l.p99),
            ms(l.p999),
            s.summary.errors_total,
            escape(s.grade.grade.as_str())
        );
    }
    html.push_str("</table>");
    if let Some(g) = report.overall_grade {
        let _ = write!(html, "<p>Overall grade: <b>{}</b>. Grade C is the seed's bar (P95 &lt; 100 ms, P99 &lt; 200 ms, errors &lt; 1 %); B, A and A+ are stricter. See docs/LOADGEN.md.</p>", escape(g.as_str()));
    }
    for s in &report.scenarios {
        html.push_str(&scenario_section(s));
    }
    html.push_str("</body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn nice_axis_bounds() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(1.5), 2.0);
        assert_eq!(nice_max(420.0), 500.0);
    }

    #[test]
    fn chart_is_inline_svg_without_external_refs() {
        let svg = line_chart(
            "t<1>",
            "ms",
            &[Line {
                name: "p50",
                color: "#000",
                points: vec![(0.0, 1.0), (1.0, 2.0)],
            }],
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("<polyline"));
        assert!(svg.contains("t&lt;1&gt;"));
        assert!(!svg.contains("href"));
    }
}
