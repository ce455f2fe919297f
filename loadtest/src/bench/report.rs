//! The `--report DIR` page: one self-contained `index.html` with the run's parameters,
//! its figures and a latency histogram per measured path, drawn as inline SVG.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use super::stats::Samples;

/// What a scenario hands to the report.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub scenario: String,
    pub parameters: Value,
    pub figures: Value,
    pub histograms: Vec<(String, Samples)>,
}

#[derive(Debug, thiserror::Error)]
#[error("could not write the report into {dir}")]
pub struct Error {
    dir: String,
    #[source]
    source: std::io::Error,
}

impl Report {
    /// Writes `dir/index.html` (creating `dir`).
    pub fn write(&self, dir: &Path) -> Result<std::path::PathBuf, Error> {
        let err = |source| Error {
            dir: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        let path = dir.join("index.html");
        std::fs::write(&path, self.html()).map_err(err)?;
        Ok(path)
    }

    pub fn html(&self) -> String {
        let mut out = String::new();
        let title = format!("ccfleet bench {}", escape(&self.scenario));
        let _ = write!(
            out,
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
             <style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:60em}}\
             table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:left}}\
             td.n{{text-align:right;font-variant-numeric:tabular-nums}}</style></head><body>\n<h1>{title}</h1>\n"
        );
        out.push_str("<h2>Figures</h2>\n");
        table(&mut out, &self.figures);
        out.push_str("<h2>Parameters</h2>\n");
        table(&mut out, &self.parameters);
        for (name, samples) in &self.histograms {
            let _ = write!(
                out,
                "<h2>{}</h2>\n<p>{} samples · p50 {} ms · p99 {} ms · max {} ms</p>\n",
                escape(name),
                samples.len(),
                samples.p50(),
                samples.p99(),
                samples.max()
            );
            out.push_str(&svg(samples));
        }
        let _ = write!(
            out,
            "<h2>JSON</h2>\n<pre>{}</pre>\n</body></html>\n",
            escape(&self.figures.to_string())
        );
        out
    }
}

fn table(out: &mut String, value: &Value) {
    out.push_str("<table>\n");
    if let Value::Object(map) = value {
        for (k, v) in map {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let class = if v.is_number() { " class=\"n\"" } else { "" };
            let _ = writeln!(
                out,
                "<tr><th>{}</th><td{class}>{}</td></tr>",
                escape(k),
                escape(&text)
            );
        }
    }
    out.push_str("</table>\n");
}

/// A bar chart of the samples on a logarithmic millisecond axis.
fn svg(samples: &Samples) -> String {
    const W: f64 = 720.0;
    const H: f64 = 220.0;
    const LEFT: f64 = 50.0;
    const BOTTOM: f64 = 40.0;
    let hist = samples.histogram(40);
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\">"
    );
    if hist.counts.is_empty() {
        out.push_str("<text x=\"10\" y=\"20\">no samples</text></svg>\n");
        return out;
    }
    let peak = hist.counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let plot_w = W - LEFT - 10.0;
    let plot_h = H - BOTTOM - 10.0;
    let bar_w = plot_w / hist.counts.len() as f64;
    for (i, &count) in hist.counts.iter().enumerate() {
        let h = plot_h * count as f64 / peak;
        let x = LEFT + bar_w * i as f64;
        let y = 10.0 + plot_h - h;
        let _ = write!(
            out,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"#4a7bd0\">\
             <title>{:.2}–{:.2} ms: {count}</title></rect>",
            (bar_w - 1.0).max(0.5),
            hist.edges[i],
            hist.edges[i + 1]
        );
    }
    let axis_y = 10.0 + plot_h;
    let _ = write!(
        out,
        "<line x1=\"{LEFT}\" y1=\"{axis_y}\" x2=\"{}\" y2=\"{axis_y}\" stroke=\"#333\"/>\
         <line x1=\"{LEFT}\" y1=\"10\" x2=\"{LEFT}\" y2=\"{axis_y}\" stroke=\"#333\"/>\
         <text x=\"{}\" y=\"22\" font-size=\"11\" text-anchor=\"end\">{}</text>",
        LEFT + plot_w,
        LEFT - 4.0,
        peak as u64
    );
    for tick in 0..=4 {
        let i = tick * hist.counts.len() / 4;
        let x = LEFT + bar_w * i as f64;
        let _ = write!(
            out,
            "<text x=\"{x:.1}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
            axis_y + 16.0,
            short(hist.edges[i])
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">ms (log scale)</text></svg>",
        LEFT + plot_w / 2.0,
        H - 4.0
    );
    out
}

fn short(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 1.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_page_has_the_figures_and_one_svg_per_histogram() {
        let report = Report {
            scenario: "ingest".into(),
            parameters: serde_json::json!({"clients": 4}),
            figures: serde_json::json!({"p50_ms": 1.5, "note": "<b>"}),
            histograms: vec![(
                "webhook → 200".into(),
                Samples::new((1..50).map(Duration::from_millis)),
            )],
        };
        let html = report.html();
        assert_eq!(html.matches("<svg").count(), 1);
        assert!(html.contains("p50_ms"));
        assert!(html.contains("&lt;b&gt;"));
        assert!(!html.contains("<b>"));
    }
}
