//! `iomapfs bench` at tiny sizes: the rows it reports, their ratios, the chart it draws, and
//! its refusals. No figure is compared with a speed: only what the figures must be whatever
//! the machine.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{bin, run, scratch};
use serde_json::Value;

/// Runs `iomapfs bench ARGS --dir DIR`; its stdout, failing the test with stderr if it failed.
fn bench(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(bin())
        .arg("bench")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bench failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn no_scratch_left(dir: &Path) {
    let left: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("iomapfs-bench."))
        .collect();
    assert!(left.is_empty(), "scratch left behind: {left:?}");
}

#[test]
fn quick_json_has_every_row_with_its_ratio_and_the_chart_is_svg() {
    let dir = scratch("bench-json");
    let svg = dir.join("chart.svg");
    let out = bench(
        &dir,
        &[
            "--quick",
            "--only",
            "rand-read,overwrite,writeback,merge,cold-read,dirty-memory",
            "--json",
            "--svg",
            svg.to_str().unwrap(),
        ],
    );
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["rounds"], 2);
    assert!(doc["machine"]["cpus"].as_u64().unwrap() >= 1);
    let rows = doc["rows"].as_array().unwrap();
    let per_case = |case: &str| rows.iter().filter(|r| r["case"] == case).count();
    // 1 and 2 threads for the cached cases; the merge case counts requests and times them.
    for (case, n) in [
        ("rand-read", 2),
        ("overwrite", 2),
        ("writeback", 1),
        ("merge", 2),
        ("cold-read", 1),
        ("dirty-memory", 1),
    ] {
        assert_eq!(per_case(case), n, "rows of {case} in {out}");
    }
    assert_eq!(rows.len(), 9);
    for r in rows {
        let (e, b, ratio) = (
            r["engine"].as_f64().unwrap(),
            r["baseline"].as_f64().unwrap(),
            r["ratio"].as_f64().unwrap(),
        );
        assert!(e > 0.0 && b > 0.0, "{r}");
        assert!((ratio - e / b).abs() <= 1e-9 * ratio, "{r}");
        let rounds = r["round_ratios"].as_array().unwrap();
        assert_eq!(rounds.len(), 2, "{r}");
        for (i, x) in rounds.iter().enumerate() {
            let (ei, bi) = (
                r["engine_rounds"][i].as_f64().unwrap(),
                r["baseline_rounds"][i].as_f64().unwrap(),
            );
            assert!(
                (x.as_f64().unwrap() - ei / bi).abs() <= 1e-9 * ei / bi,
                "{r}"
            );
        }
        assert!(!r["baseline_is"].as_str().unwrap().is_empty());
    }
    let merged = rows
        .iter()
        .find(|r| r["case"] == "merge" && r["unit"] == "requests")
        .unwrap();
    assert_eq!(
        merged["ratio"], 1.0,
        "writeback sent more than the fewest requests"
    );
    assert_eq!(merged["met"], true);

    let chart = fs::read_to_string(&svg).unwrap();
    assert!(chart.trim_start().starts_with("<svg"), "{chart}");
    assert!(chart.trim_end().ends_with("</svg>"));
    assert!(chart.contains("4 KiB random read, cached"));
    no_scratch_left(&dir);
}

#[test]
fn the_table_names_the_baseline_the_target_and_whether_it_was_met() {
    let dir = scratch("bench-table");
    let svg = dir.join("merge.svg");
    let out = bench(
        &dir,
        &[
            "--quick",
            "--rounds",
            "1",
            "--only",
            "merge",
            "--svg",
            svg.to_str().unwrap(),
        ],
    );
    assert!(
        out.contains("| case | threads | engine | baseline | ratio |"),
        "{out}"
    );
    let row = out
        .lines()
        .find(|l| l.starts_with("| write requests for 256 random dirty"))
        .unwrap_or_else(|| panic!("no merge row in:\n{out}"));
    assert!(row.contains("(the fewest that carry them)"), "{row}");
    assert!(
        row.contains("| 1.00x |") && row.contains("| <= 1.0x | yes |"),
        "{row}"
    );
    assert!(out.contains("Machine: "), "{out}");
    assert!(svg.exists());
    no_scratch_left(&dir);
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    let (st, out) = run(&["bench", "--only", "nonsense"]);
    assert_eq!(st.code(), Some(2));
    assert!(
        out.contains("nonsense") && out.contains("rand-read"),
        "{out}"
    );

    let (st, out) = run(&["bench", "--rounds", "0"]);
    assert_eq!(st.code(), Some(2));
    assert!(out.contains("--rounds"), "{out}");

    let (st, out) = run(&["bench", "--quick", "--dir", "/nonexistent/dir"]);
    assert_eq!(st.code(), Some(1));
    assert!(out.contains("/nonexistent/dir"), "{out}");
    assert!(!out.contains("panicked"), "{out}");

    let dir = scratch("bench-bad");
    let file = dir.join("a-file");
    fs::write(&file, b"x").unwrap();
    let (st, out) = run(&["bench", "--quick", "--dir", file.to_str().unwrap()]);
    assert_eq!(st.code(), Some(1));
    assert!(out.contains("not a directory"), "{out}");

    let (st, out) = run(&["bench", "--child", "0", "--only", "seq-read,merge"]);
    assert_eq!(st.code(), Some(1));
    assert!(out.contains("exactly one case"), "{out}");

    let (st, out) = run(&["bench", "--quick", "--child", "2", "--only", "metadata"]);
    assert_eq!(st.code(), Some(1));
    assert!(out.contains("no row 2"), "{out}");
}
