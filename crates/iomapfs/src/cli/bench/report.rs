//! The results in three forms: a Markdown table, a JSON document, and an SVG chart of the
//! ratios (one bar a row on a log scale, the 1.0 line marked, each target ticked).

use std::fmt::Write as _;
use std::path::Path;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::{json, Value};

use super::data::GIB;
use super::row::{show_ratio, Row};
use super::{Context, Result, Run};

fn yes_no(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "yes",
        Some(false) => "NO",
        None => "",
    }
}

/// The table, the notes under it, and the machine.
pub fn table(run: &Run) -> String {
    let mut s = String::new();
    let m = &run.machine;
    let _ = writeln!(s, "Command: `{}`", run.command);
    let _ = writeln!(
        s,
        "Machine: {} CPUs ({}), {:.0} GiB, Linux {}, scratch on {}; load average {} before, {} \
         after",
        m.cpus,
        m.cpu,
        m.memory_bytes as f64 / GIB as f64,
        m.kernel,
        m.scratch_fs,
        m.load_before,
        m.load_after
    );
    let _ = writeln!(
        s,
        "{} round(s), sides alternating which goes first; each figure a median of its side's \
         rounds, each ratio engine / baseline of those medians.{}",
        run.rounds,
        if run.quick {
            " --quick: tiny sizes, the figures mean little."
        } else {
            ""
        }
    );
    s.push('\n');
    s.push_str(
        "| case | threads | engine | baseline | ratio | ratio per round | target | met? |\n",
    );
    s.push_str("|---|---:|---:|---|---:|---|---:|:---:|\n");
    for r in &run.rows {
        let rounds: Vec<String> = r.round_ratios().iter().map(|x| format!("{x:.2}")).collect();
        let _ = writeln!(
            s,
            "| {} (`{}`) | {} | {} | {} ({}) | {} | {} | {} | {} |",
            r.workload,
            r.case.name(),
            r.threads,
            r.unit.show(r.engine_median()),
            r.unit.show(r.base_median()),
            r.baseline,
            show_ratio(r.ratio()),
            rounds.join(" "),
            r.target.map(|t| t.show()).unwrap_or_default(),
            yes_no(r.met())
        );
    }
    let notes: Vec<String> = run
        .rows
        .iter()
        .flat_map(|r| r.notes.iter().map(move |n| format!("{}: {n}", r.label())))
        .collect();
    if !notes.is_empty() || !run.skipped.is_empty() {
        s.push('\n');
    }
    for n in notes {
        let _ = writeln!(s, "- {n}");
    }
    for (case, why) in &run.skipped {
        let _ = writeln!(s, "- {} skipped: {why}", case.name());
    }
    if let Some(noisiest) = run
        .rows
        .iter()
        .filter(|r| r.engine.len() > 1)
        .max_by(|a, b| a.spread().total_cmp(&b.spread()))
    {
        let mut spreads: Vec<f64> = run.rows.iter().map(Row::spread).collect();
        spreads.sort_by(f64::total_cmp);
        let _ = writeln!(
            s,
            "\nNoise: the per-round ratios of a row spread over {:.0}% of its median ratio at \
             the median row, {:.0}% at the most ({}).",
            100.0 * spreads[spreads.len() / 2],
            100.0 * noisiest.spread(),
            noisiest.label()
        );
    }
    s
}

/// The same as a JSON document.
pub fn json(run: &Run) -> Value {
    let m = &run.machine;
    let rows: Vec<Value> = run
        .rows
        .iter()
        .map(|r| {
            json!({
                "case": r.case.name(),
                "workload": r.workload,
                "threads": r.threads,
                "unit": r.unit.name(),
                "engine": r.engine_median(),
                "baseline": r.base_median(),
                "baseline_is": r.baseline,
                "ratio": r.ratio(),
                "round_ratios": r.round_ratios(),
                "engine_rounds": r.engine,
                "baseline_rounds": r.base,
                "spread": r.spread(),
                "target": r.target.map(|t| t.show()),
                "target_ratio": r.target.map(|t| t.ratio),
                "met": r.met(),
                "notes": r.notes,
            })
        })
        .collect();
    let skipped: Vec<Value> = run
        .skipped
        .iter()
        .map(|(c, why)| json!({ "case": c.name(), "reason": why }))
        .collect();
    json!({
        "command": run.command,
        "rounds": run.rounds,
        "quick": run.quick,
        "machine": {
            "kernel": m.kernel,
            "cpu": m.cpu,
            "cpus": m.cpus,
            "memory_bytes": m.memory_bytes,
            "scratch_fs": m.scratch_fs,
            "load_before": m.load_before,
            "load_after": m.load_after,
        },
        "rows": rows,
        "skipped": skipped,
    })
}

/// The powers of two from `lo` to `hi`: the chart's grid.
fn powers_of_two(lo: f64, hi: f64) -> Vec<f64> {
    let (a, b) = (lo.log2().ceil() as i32, hi.log2().floor() as i32);
    (a..=b).map(|k| 2f64.powi(k)).collect()
}

const MET: RGBColor = RGBColor(46, 139, 87);
const MISSED: RGBColor = RGBColor(205, 92, 60);
const NO_TARGET: RGBColor = RGBColor(90, 120, 170);

/// A horizontal bar a row from 1.0 to its ratio on a log scale (rightwards above 1.0, leftwards
/// below), green where the target is met, red where it is missed, blue where there is none;
/// the 1.0 line and each row's target marked.
pub fn svg(path: &Path, rows: &[Row]) -> Result<()> {
    let what = || format!("draw {}", path.display());
    let n = rows.len().max(1);
    let ratios: Vec<f64> = rows
        .iter()
        .map(|r| r.ratio())
        .filter(|r| r.is_finite() && *r > 0.0)
        .chain(rows.iter().filter_map(|r| r.target.map(|t| t.ratio)))
        .collect();
    let lo = ratios.iter().copied().fold(0.5f64, f64::min) / 1.5;
    let hi = ratios.iter().copied().fold(2.0f64, f64::max) * 1.5;
    let height = 90 + 28 * n as u32;
    let root = SVGBackend::new(path, (1100, height)).into_drawing_area();
    root.fill(&WHITE).context(what)?;
    let labels: Vec<String> = rows.iter().map(Row::label).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "iomapfs bench: engine / baseline, log scale (green: target met, red: missed, \
             blue: no target; black tick: the target)",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(470)
        .build_cartesian_2d(
            (lo..hi).log_scale().with_key_points(powers_of_two(lo, hi)),
            (0..n - 1).into_segmented(),
        )
        .context(what)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(TRANSPARENT)
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(n - 1 - *i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_label_formatter(&|&x| {
            if x < 1.0 {
                format!("1/{:.0}x", 1.0 / x)
            } else {
                format!("{x}x")
            }
        })
        .label_style(("sans-serif", 12))
        .draw()
        .context(what)?;
    // The first row at the top.
    let slot = |i: usize| n - 1 - i;
    let bars = rows.iter().enumerate().filter_map(|(i, r)| {
        let (i, ratio) = (slot(i), r.ratio());
        let color = match r.met() {
            Some(true) => MET,
            Some(false) => MISSED,
            None => NO_TARGET,
        };
        (ratio.is_finite() && ratio > 0.0).then(|| {
            let mut bar = Rectangle::new(
                [
                    (1.0, SegmentValue::Exact(i)),
                    (ratio, SegmentValue::Exact(i + 1)),
                ],
                color.filled(),
            );
            bar.set_margin(4, 4, 0, 0);
            bar
        })
    });
    chart.draw_series(bars).context(what)?;
    chart
        .draw_series(rows.iter().enumerate().filter_map(|(i, r)| {
            let (i, ratio) = (slot(i), r.ratio());
            (ratio.is_finite() && ratio > 0.0).then(|| {
                // The figure just past the bar's far end.
                let (at, side) = if ratio >= 1.0 {
                    (ratio * 1.02, HPos::Left)
                } else {
                    (ratio / 1.02, HPos::Right)
                };
                let style = TextStyle::from(("sans-serif", 12)).pos(Pos::new(side, VPos::Center));
                Text::new(show_ratio(ratio), (at, SegmentValue::CenterOf(i)), style)
            })
        }))
        .context(what)?;
    chart
        .draw_series(rows.iter().enumerate().filter_map(|(i, r)| {
            let i = slot(i);
            r.target.map(|t| {
                PathElement::new(
                    vec![
                        (t.ratio, SegmentValue::Exact(i)),
                        (t.ratio, SegmentValue::Exact(i + 1)),
                    ],
                    BLACK.stroke_width(2),
                )
            })
        }))
        .context(what)?;
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Exact(n))],
            BLACK.mix(0.5).stroke_width(1),
        )))
        .context(what)?;
    root.present().context(what)?;
    Ok(())
}
