//! `caravel-rig --plot-ramp < LOG > FILE.svg`: draws the `RAMP-CSV` lines
//! of `--bench-balloon` (host RSS over a working-set ramp, per run) as an
//! SVG line chart, for `docs/`. Runs anywhere (no guest needed).

use std::collections::BTreeMap;
use std::fmt::Write;

const W: f64 = 760.0;
const H: f64 = 380.0;
const LEFT: f64 = 60.0;
const BOTTOM: f64 = 40.0;
const TOP: f64 = 20.0;
const RIGHT: f64 = 190.0;
const COLORS: [&str; 5] = ["#1f77b4", "#ff7f0e", "#d62728", "#2ca02c", "#7f7f7f"];

/// Series by name: (t, MiB) points. The guest's working set comes from
/// the first run.
fn series(log: &str) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut runs: BTreeMap<usize, (String, Vec<(f64, f64)>)> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut ws = Vec::new();
    for line in log.lines() {
        let Some(csv) = line.split("RAMP-CSV ").nth(1) else {
            continue;
        };
        let f: Vec<&str> = csv.trim().split(',').collect();
        let [name, t, w, rss, _] = f[..] else {
            continue;
        };
        let (Ok(t), Ok(w), Ok(rss)) = (t.parse::<f64>(), w.parse::<f64>(), rss.parse::<f64>())
        else {
            continue;
        };
        let i = match order.iter().position(|n| n == name) {
            Some(i) => i,
            None => {
                order.push(name.to_string());
                order.len() - 1
            }
        };
        if i == 0 {
            ws.push((t, w));
        }
        runs.entry(i)
            .or_insert_with(|| (format!("host RSS, {name}"), Vec::new()))
            .1
            .push((t, rss));
    }
    let mut out = vec![("guest working set".to_string(), ws)];
    out.extend(runs.into_values());
    out
}

/// The SVG for `log`.
pub fn ramp_svg(log: &str) -> String {
    let all = series(log);
    let tmax = all
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let ymax = (all
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        / 256.0)
        .ceil()
        * 256.0;
    let x = |t: f64| LEFT + t / tmax * (W - LEFT - RIGHT);
    let y = |v: f64| H - BOTTOM - v / ymax * (H - BOTTOM - TOP);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let mut v = 0.0;
    while v <= ymax {
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{v}</text>"##,
            W - RIGHT,
            y(v),
            y(v),
            LEFT - 6.0,
            y(v) + 4.0
        );
        v += 256.0;
    }
    let _ = writeln!(
        s,
        r#"<text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">MiB</text><text x="{:.1}" y="{:.1}" text-anchor="middle">seconds</text>"#,
        H / 2.0,
        H / 2.0,
        (LEFT + W - RIGHT) / 2.0,
        H - 8.0
    );
    let mut t = 0.0;
    while t <= tmax {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{t}</text>"#,
            x(t),
            H - BOTTOM + 16.0
        );
        t += 10.0;
    }
    for (i, (name, points)) in all.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v)))
            .collect();
        let dash = if i == 0 {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#,
            path.join(" ")
        );
        let ly = TOP + 16.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" x2="{:.1}" y1="{ly:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{name}</text>"#,
            W - RIGHT + 10.0,
            W - RIGHT + 30.0,
            W - RIGHT + 34.0,
            ly + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_run_becomes_a_line_and_the_first_gives_the_working_set() {
        let log = "x\n# RAMP-CSV autosize,0.0,256,300,0\n# RAMP-CSV autosize,1.0,512,600,256\n\
                   # RAMP-CSV fixed,0.0,256,900,1024\n# RAMP-CSV fixed,1.0,512,1200,1024\nnoise";
        let s = series(log);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].1, vec![(0.0, 256.0), (1.0, 512.0)]);
        assert_eq!(s[1].0, "host RSS, autosize");
        assert_eq!(s[2].1[1], (1.0, 1200.0));
        let svg = ramp_svg(log);
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("host RSS, fixed"));
    }
}
