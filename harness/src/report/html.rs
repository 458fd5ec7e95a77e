//! `report.html`: one self-contained page (inline SVG, no network) with the
//! plan and seed, the verdict and counts, a timeline of throughput (acked/s)
//! and latency (p50/p99) with every fault window shaded and labelled, lost
//! messages at their ack time, and per-node fault lanes.
//!
//! Input: the run's history (one more streaming pass for per-second
//! figures; memory bounded by the attempts in flight) and its Outcome.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::BufRead;
use std::path::Path;

use serde::Deserialize;

use crate::checker::{facts::FaultWindow, Facts, Outcome, Verdict};

/// Per-second figures of a run.
#[derive(Debug, Default)]
pub struct Timeline {
    /// Second -> acknowledged sends.
    pub acked: BTreeMap<u64, u64>,
    /// Second -> send latencies (ms) of the attempts acknowledged then.
    pub latencies: BTreeMap<u64, Vec<f64>>,
    pub end_s: f64,
}

#[derive(Deserialize)]
struct Line<'a> {
    t: u64,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(borrow)]
    value: Option<std::borrow::Cow<'a, str>>,
    attempt: Option<u32>,
}

/// Reads the per-second figures from a history.
pub fn timeline(history: &Path) -> std::io::Result<Timeline> {
    let mut reader = crate::history::open(history).map_err(std::io::Error::other)?;
    let mut line = Vec::new();
    let mut invoked: HashMap<(String, u32), u64> = HashMap::new();
    let mut tl = Timeline::default();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let Ok(l) = serde_json::from_slice::<Line>(&line) else {
            continue;
        };
        tl.end_s = tl.end_s.max(l.t as f64 / 1e6);
        let (Some(v), Some(a)) = (l.value, l.attempt) else {
            continue;
        };
        match l.kind {
            "invoke" => {
                invoked.insert((v.into_owned(), a), l.t);
            }
            "ok" | "fail" | "info" => {
                let start = invoked.remove(&(v.into_owned(), a));
                if l.kind == "ok" {
                    let sec = l.t / 1_000_000;
                    *tl.acked.entry(sec).or_default() += 1;
                    if let Some(s) = start {
                        tl.latencies
                            .entry(sec)
                            .or_default()
                            .push((l.t - s) as f64 / 1e3);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(tl)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

const W: f64 = 960.0;
const LEFT: f64 = 60.0;

fn x(t: f64, end: f64) -> f64 {
    LEFT + (W - LEFT - 10.0) * (t / end.max(1.0))
}

fn polyline(points: &[(f64, f64)], color: &str) -> String {
    let pts: Vec<String> = points
        .iter()
        .map(|(a, b)| format!("{a:.1},{b:.1}"))
        .collect();
    format!(
        "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>",
        pts.join(" ")
    )
}

/// Shaded, labelled fault windows over a chart of the given height.
fn windows(faults: &[FaultWindow], end: f64, top: f64, height: f64, labels: bool) -> String {
    let mut s = String::new();
    for (i, f) in faults.iter().enumerate() {
        let (a, b) = (f.start as f64 / 1e6, f.end.map_or(end, |e| e as f64 / 1e6));
        let (x0, x1) = (x(a, end), x(b, end).max(x(a, end) + 2.0));
        let _ = write!(s, "<rect class=\"fault\" x=\"{x0:.1}\" y=\"{top}\" width=\"{:.1}\" height=\"{height}\"><title>{}</title></rect>", x1 - x0, esc(&format!("{}#{} {:?} {} ({a:.1}s-{b:.1}s)", f.fault, f.id, f.targets, f.detail)));
        if labels {
            let _ = write!(
                s,
                "<text class=\"flabel\" x=\"{:.1}\" y=\"{}\">{}</text>",
                x0 + 2.0,
                top + 10.0 + (i % 3) as f64 * 11.0,
                esc(&format!("{} {:?}", f.fault, f.targets))
            );
        }
    }
    s
}

fn axis(top: f64, height: f64, max: f64, unit: &str, end: f64) -> String {
    let mut s = format!(
        "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"/>",
        top + height,
        W - 10.0,
        top + height
    );
    let _ = write!(s, "<text class=\"tick\" x=\"4\" y=\"{}\">{max:.0}{unit}</text><text class=\"tick\" x=\"4\" y=\"{}\">0</text>", top + 10.0, top + height);
    let step = (end / 10.0).ceil().max(1.0);
    let mut t = 0.0;
    while t <= end {
        let _ = write!(
            s,
            "<text class=\"tick\" x=\"{:.1}\" y=\"{}\">{t:.0}s</text>",
            x(t, end) - 6.0,
            top + height + 12.0
        );
        t += step;
    }
    s
}

/// Renders the page.
pub fn render(
    plan: &str,
    seed: u64,
    o: &Outcome,
    facts: &Facts,
    tl: &Timeline,
    nodes: &[u32],
) -> String {
    let faults = &facts.faults[..];
    let end = tl.end_s.max(1.0);
    let mut html = summary(plan, seed, o, faults.len(), end);
    html += &charts(o, faults, tl, nodes.len(), end);
    html += &node_lanes(facts, nodes, end);
    html += "</svg>";
    if !o.lost.is_empty() {
        html += "<h2>First lost messages</h2><table><tr><th class=\"l\">value</th><th>partition</th><th>offset</th><th>acked at</th><th class=\"l\">faults around the ack</th></tr>";
        for l in o.lost.iter().take(20) {
            let _ = write!(html, "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{:.3}s</td><td class=\"l\">{}</td></tr>", esc(&l.value), l.partition, l.offset, l.acked_at, esc(&l.faults.join(", ")));
        }
        html += "</table>";
    }
    html += "<h2>Faults</h2><table><tr><th>#</th><th class=\"l\">kind</th><th class=\"l\">targets</th><th class=\"l\">detail</th><th>start</th><th>end</th></tr>";
    for f in faults {
        let _ = write!(html, "<tr><td>{}</td><td class=\"l\">{}</td><td class=\"l\">{:?}</td><td class=\"l\">{}</td><td>{:.2}s</td><td>{}</td></tr>", f.id, esc(&f.fault), f.targets, esc(&f.detail), f.start as f64 / 1e6, f.end.map_or("-".into(), |e| format!("{:.2}s", e as f64 / 1e6)));
    }
    html += "</table></body></html>\n";
    html
}

/// The timeline's layout: throughput chart, latency chart, node lanes.
const CHART_TOP: f64 = 20.0;
const CHART_H: f64 = 180.0;
const LAT_TOP: f64 = CHART_TOP + CHART_H + 40.0;
const LAT_H: f64 = 140.0;
const LANES_TOP: f64 = LAT_TOP + LAT_H + 40.0;

/// The page head, the verdict, notes and the expectations table.
fn summary(plan: &str, seed: u64, o: &Outcome, faults: usize, end: f64) -> String {
    let verdict = match o.verdict {
        Verdict::Valid => "valid",
        Verdict::Invalid => "invalid",
        Verdict::Unknown => "unknown",
    };
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>unlost {p}</title><style>\
body{{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}}h1{{font-size:20px}}\
.v-valid{{color:#0a7a2f}}.v-invalid{{color:#b3261e}}.v-unknown{{color:#8a6d00}}\
table{{border-collapse:collapse;margin:8px 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{background:#f3f3f3}}\
td.l,th.l{{text-align:left}}.bad{{background:#fde7e5}}svg{{background:#fff;border:1px solid #ddd}}\
.fault{{fill:#f4a261;opacity:.25}}.flabel{{font-size:10px;fill:#9a4a00}}.tick{{font-size:10px;fill:#666}}.axis{{stroke:#999}}\
.lost{{fill:#d62828}}.lane{{font-size:11px;fill:#333}}.restart{{font-size:9px;fill:#2a9d8f}}.leader{{font-size:10px;fill:#1d4ed8}}</style></head><body>",
        p = esc(plan)
    );
    let _ = write!(html, "<h1>unlost: plan <code>{}</code>, seed <code>{seed}</code>: <span class=\"v-{verdict}\">{verdict}</span>, expectations {}</h1>", esc(plan), if o.expectations_met { "met" } else { "<b>NOT met</b>" });
    let notes = o
        .drain_error
        .iter()
        .map(|e| format!("drain did not finish: {e}"))
        .chain(o.floor.iter().map(|w| format!("unknown: {w}")))
        .chain(o.unreadable.iter().map(|u| format!("unreadable: {u}")));
    for n in notes {
        let _ = write!(html, "<p class=\"bad\">{}</p>", esc(&n));
    }
    let s = &o.stats;
    let _ = write!(html, "<table><tr><th>sent</th><th>acked</th><th>failed</th><th>indeterminate</th><th>delivered</th><th>drained</th><th>faults</th><th>duration</th></tr><tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{end:.1}s</td></tr></table>", s.sent, s.acked, s.failed, s.indeterminate, s.delivered, s.drained, faults);
    html += "<table><tr><th class=\"l\">anomaly</th><th>count</th><th>wanted</th><th class=\"l\">met</th><th class=\"l\">first examples</th></tr>";
    for e in &o.expectations {
        let met = match e.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "unknown",
        };
        let ex = o
            .examples
            .get(&e.anomaly)
            .map(|v| v.iter().take(3).cloned().collect::<Vec<_>>().join("; "))
            .unwrap_or_default();
        let _ = write!(html, "<tr{}><td class=\"l\">{}</td><td>{}</td><td>{}</td><td class=\"l\">{met}</td><td class=\"l\">{}</td></tr>", if e.met == Some(false) { " class=\"bad\"" } else { "" }, e.anomaly.name(), e.got, esc(&e.wanted), esc(&ex));
    }
    for a in &o.not_applicable {
        let _ = write!(html, "<tr><td class=\"l\">{}</td><td>n/a</td><td></td><td class=\"l\">not checked</td><td class=\"l\">a queue's messages have no positions</td></tr>", a.name());
    }
    html += "</table>";

    html
}

/// The timeline's throughput and latency charts (opens the svg).
fn charts(o: &Outcome, faults: &[FaultWindow], tl: &Timeline, nodes: usize, end: f64) -> String {
    let mut html = String::new();
    // Throughput with lost messages at their ack time.
    let (top, h) = (CHART_TOP, CHART_H);
    let max_acked = tl.acked.values().copied().max().unwrap_or(1).max(1) as f64;
    let lanes = 22.0 * nodes as f64;
    let lat_top = LAT_TOP;
    let lat_h = LAT_H;
    let lanes_top = LANES_TOP;
    let total_h = lanes_top + lanes + 20.0;
    let _ = write!(html, "<h2>Timeline</h2><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{total_h}\" viewBox=\"0 0 {W} {total_h}\">");
    html += &windows(faults, end, top, h, true);
    html += &axis(top, h, max_acked, "/s", end);
    let _ = write!(html, "<text class=\"lane\" x=\"{LEFT}\" y=\"{}\">acknowledged per second; red: lost messages at their ack time</text>", top - 6.0);
    let pts: Vec<(f64, f64)> = tl
        .acked
        .iter()
        .map(|(sec, n)| {
            (
                x(*sec as f64 + 0.5, end),
                top + h - h * (*n as f64 / max_acked),
            )
        })
        .collect();
    html += &polyline(&pts, "#1d4ed8");
    for l in o.lost.iter().take(2000) {
        let _ = write!(
            html,
            "<circle class=\"lost\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\"><title>{}</title></circle>",
            x(l.acked_at, end),
            top + h - 4.0,
            esc(&format!(
                "lost {} at {}/{} acked {:.3}s",
                l.value, l.partition, l.offset, l.acked_at
            ))
        );
    }
    // Latency.
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    let mut lat = tl.latencies.clone();
    let max_lat = lat
        .values_mut()
        .map(|v| percentile(v, 0.99))
        .fold(1.0, f64::max);
    for (sec, v) in lat.iter_mut() {
        let t = x(*sec as f64 + 0.5, end);
        p50.push((t, lat_top + lat_h - lat_h * percentile(v, 0.5) / max_lat));
        p99.push((t, lat_top + lat_h - lat_h * percentile(v, 0.99) / max_lat));
    }
    html += &windows(faults, end, lat_top, lat_h, false);
    html += &axis(lat_top, lat_h, max_lat, "ms", end);
    let _ = write!(
        html,
        "<text class=\"lane\" x=\"{LEFT}\" y=\"{}\">send latency: p50 (green), p99 (purple)</text>",
        lat_top - 6.0
    );
    html += &polyline(&p50, "#15803d");
    html += &polyline(&p99, "#7e22ce");
    html
}

/// Per node: fault bars, restarts, leadership.
fn node_lanes(facts: &Facts, nodes: &[u32], end: f64) -> String {
    let lanes_top = LANES_TOP;
    let faults = &facts.faults[..];
    let mut html = String::new();
    let _ = write!(html, "<text class=\"lane\" x=\"{LEFT}\" y=\"{}\">per node: faults (bars), restarts, &#9650; became leader (Metadata)</text>", lanes_top - 8.0);
    for (i, n) in nodes.iter().enumerate() {
        let y = lanes_top + 22.0 * i as f64;
        let _ = write!(html, "<text class=\"lane\" x=\"4\" y=\"{}\">node {n}</text><line class=\"axis\" x1=\"{LEFT}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"/>", y + 14.0, y + 18.0, W - 10.0, y + 18.0);
        for f in faults.iter().filter(|f| f.targets.contains(n)) {
            let (a, b) = (f.start as f64 / 1e6, f.end.map_or(end, |e| e as f64 / 1e6));
            let _ = write!(html, "<rect x=\"{:.1}\" y=\"{}\" width=\"{:.1}\" height=\"12\" fill=\"#e76f51\"><title>{}</title></rect>", x(a, end), y + 4.0, (x(b, end) - x(a, end)).max(2.0), esc(&format!("{}#{} {a:.1}s-{b:.1}s {}", f.fault, f.id, f.detail)));
            if matches!(f.fault.as_str(), "kill" | "power-loss" | "torn-power-loss")
                && f.end.is_some()
            {
                let _ = write!(
                    html,
                    "<text class=\"restart\" x=\"{:.1}\" y=\"{}\">restart</text>",
                    x(b, end) + 2.0,
                    y + 14.0
                );
            }
        }
        for (t, p, _) in facts.leaders.iter().filter(|(_, _, l)| *l == *n as i32) {
            let _ = write!(
                html,
                "<text class=\"leader\" x=\"{:.1}\" y=\"{}\">&#9650;<title>{}</title></text>",
                x(*t as f64 / 1e6, end) - 4.0,
                y + 16.0,
                esc(&format!(
                    "leader of partition {p} from {:.2}s",
                    *t as f64 / 1e6
                ))
            );
        }
    }
    html
}

/// Writes report.html into a run dir.
pub fn write(
    dir: &Path,
    plan: &str,
    seed: u64,
    o: &Outcome,
    facts: &Facts,
    nodes: &[u32],
) -> std::io::Result<()> {
    let tl = timeline(&crate::history::in_dir(dir))?;
    std::fs::write(
        dir.join("report.html"),
        render(plan, seed, o, facts, &tl, nodes),
    )
}
