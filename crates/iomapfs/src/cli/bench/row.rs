//! One line of the results: a workload measured on the engine and on its baseline, a figure a
//! round on each side, and what the ratio of the two should be.
//!
//! A row's ratio is the median of the engine's rounds over the median of the baseline's;
//! the per-round ratios (each round's two sides ran back to back) show how noisy it was.

use super::data::{median, thousands, GIB, MIB};
use super::Case;

/// What a figure counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Bytes a second.
    BytesPerSec,
    /// Operations a second.
    OpsPerSec,
    /// Device requests.
    Requests,
    /// Bytes.
    Bytes,
    /// Bytes of memory per GiB of cached data.
    BytesPerCachedGib,
}

impl Unit {
    /// The unit's name in the JSON output.
    pub fn name(self) -> &'static str {
        match self {
            Unit::BytesPerSec => "bytes/s",
            Unit::OpsPerSec => "ops/s",
            Unit::Requests => "requests",
            Unit::Bytes => "bytes",
            Unit::BytesPerCachedGib => "bytes per cached GiB",
        }
    }

    /// `v` in words, in the unit's usual scale.
    pub fn show(self, v: f64) -> String {
        let mib = MIB as f64;
        match self {
            Unit::BytesPerSec if v >= GIB as f64 => format!("{:.2} GiB/s", v / GIB as f64),
            Unit::BytesPerSec => format!("{:.0} MiB/s", v / mib),
            Unit::OpsPerSec if v >= 1e5 => format!("{:.2} Mops/s", v / 1e6),
            Unit::OpsPerSec => format!("{} ops/s", thousands(v)),
            Unit::Requests => format!("{} requests", thousands(v)),
            Unit::Bytes => format!("{:.1} MiB", v / mib),
            Unit::BytesPerCachedGib => format!("{:.1} MiB per GiB", v / mib),
        }
    }
}

/// Whether a larger ratio is better (throughput) or a smaller one (requests, memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

/// The ratio the project aims for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Target {
    pub better: Better,
    pub ratio: f64,
}

impl Target {
    pub const fn at_least(ratio: f64) -> Self {
        Self {
            better: Better::Higher,
            ratio,
        }
    }

    pub const fn at_most(ratio: f64) -> Self {
        Self {
            better: Better::Lower,
            ratio,
        }
    }

    pub fn met(self, ratio: f64) -> bool {
        match self.better {
            Better::Higher => ratio >= self.ratio,
            Better::Lower => ratio <= self.ratio,
        }
    }

    pub fn show(self) -> String {
        let op = match self.better {
            Better::Higher => ">=",
            Better::Lower => "<=",
        };
        format!("{op} {}x", trim_float(self.ratio))
    }
}

/// One decimal where that is exact (0.9, 2.0), else two (0.25).
fn trim_float(v: f64) -> String {
    if (v * 10.0).fract() == 0.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A ratio as the table shows it.
pub fn show_ratio(r: f64) -> String {
    if r >= 10.0 {
        format!("{r:.1}x")
    } else {
        format!("{r:.2}x")
    }
}

/// One workload, both sides, every round.
#[derive(Clone, Debug)]
pub struct Row {
    pub case: Case,
    /// What runs, on both sides.
    pub workload: String,
    /// Threads issuing I/O on each side.
    pub threads: u32,
    pub unit: Unit,
    /// What the baseline is.
    pub baseline: String,
    pub target: Option<Target>,
    /// The engine's figure, a round each.
    pub engine: Vec<f64>,
    /// The baseline's figure, a round each.
    pub base: Vec<f64>,
    /// Facts beside the figures (a check that failed, a caveat).
    pub notes: Vec<String>,
}

impl Row {
    pub fn new(case: Case, workload: impl Into<String>, unit: Unit, baseline: &str) -> Self {
        Self {
            case,
            workload: workload.into(),
            threads: 1,
            unit,
            baseline: baseline.to_string(),
            target: None,
            engine: Vec::new(),
            base: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn threads(mut self, threads: u32) -> Self {
        self.threads = threads;
        self
    }

    pub fn target(mut self, target: Target) -> Self {
        self.target = Some(target);
        self
    }

    /// Records one round.
    pub fn push(&mut self, engine: f64, base: f64) {
        self.engine.push(engine);
        self.base.push(base);
    }

    pub fn engine_median(&self) -> f64 {
        median(&self.engine)
    }

    pub fn base_median(&self) -> f64 {
        median(&self.base)
    }

    /// Engine over baseline, of the medians.
    pub fn ratio(&self) -> f64 {
        self.engine_median() / self.base_median()
    }

    /// Engine over baseline, round by round.
    pub fn round_ratios(&self) -> Vec<f64> {
        self.engine
            .iter()
            .zip(&self.base)
            .map(|(e, b)| e / b)
            .collect()
    }

    /// How far the per-round ratios spread: (largest - smallest) / median.
    pub fn spread(&self) -> f64 {
        let r = self.round_ratios();
        let (lo, hi) = r.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
        if r.is_empty() {
            0.0
        } else {
            (hi - lo) / median(&r)
        }
    }

    pub fn met(&self) -> Option<bool> {
        self.target.map(|t| t.met(self.ratio()))
    }

    /// The label of the row in the table and the chart.
    pub fn label(&self) -> String {
        if self.threads > 1 {
            format!("{}, {} threads", self.workload, self.threads)
        } else {
            self.workload.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratio_is_of_the_medians_and_each_round_has_its_own() {
        let mut r =
            Row::new(Case::RandRead, "x", Unit::OpsPerSec, "y").target(Target::at_least(2.0));
        r.push(4.0, 1.0);
        r.push(6.0, 3.0);
        r.push(5.0, 2.0);
        assert_eq!(r.ratio(), 2.5);
        assert_eq!(r.round_ratios(), vec![4.0, 2.0, 2.5]);
        assert_eq!(r.met(), Some(true));
        assert_eq!(r.spread(), 0.8);
    }

    #[test]
    fn targets_and_figures_in_words() {
        assert_eq!(Target::at_least(0.9).show(), ">= 0.9x");
        assert_eq!(Target::at_most(1.0).show(), "<= 1.0x");
        assert!(Target::at_most(1.0).met(1.0));
        assert!(!Target::at_most(1.0).met(1.01));
        assert_eq!(Unit::OpsPerSec.show(8159.4), "8,159 ops/s");
        assert_eq!(Unit::OpsPerSec.show(1.93e6), "1.93 Mops/s");
        assert_eq!(Unit::Requests.show(49062.0), "49,062 requests");
        assert_eq!(Unit::BytesPerSec.show(1.5 * GIB as f64), "1.50 GiB/s");
        assert_eq!(show_ratio(20.15), "20.1x");
    }
}
