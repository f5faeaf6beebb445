//! Case 6: planner micro-benchmarks (criterion), medians read from `target/criterion`.

use anyhow::{Context, Result};
use serde_json::Value;

use super::*;
use crate::cmd::{self};
use crate::topology::{self};

pub(super) const PLANNER_BENCHES: [&str; 6] = [
    "plan-nothing-to-change/10000",
    "plan-one-endpoint-moved/10000",
    "desired_peers+plan/10000",
    // The engine's paths: a first snapshot or relist (the peer book decides every candidate
    // again), and a resync (the book's peers planned, nothing decided).
    "book_replace_all+plan/10000",
    "book_peers+plan/10000",
    // The reference planner over endpoints validated once, on arrival (issue 8's measure).
    "desired_peers_validated+plan/10000",
];

pub(super) fn planner(samples: &mut Samples) -> Result<()> {
    let mut c = topology::cargo();
    c.args(["bench", "--package", "wgcable-peers", "--bench", "planner"]);
    cmd::run(&mut c)?;
    for bench in PLANNER_BENCHES.iter().chain(&["desired_peers+plan/1000"]) {
        let path = target_dir()
            .join("criterion")
            .join("planner")
            .join(bench)
            .join("new")
            .join("estimates.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let ms =
            criterion_median_ms(&text).with_context(|| format!("parsing {}", path.display()))?;
        println!("planner {bench}: median {ms:.3} ms");
        push(samples, &format!("planner.{bench}"), ms);
    }
    Ok(())
}

/// The median of a criterion `estimates.json` (nanoseconds), in milliseconds.
pub(super) fn criterion_median_ms(estimates: &str) -> Result<f64> {
    let v: Value = serde_json::from_str(estimates)?;
    let ns = v
        .pointer("/median/point_estimate")
        .and_then(Value::as_f64)
        .context("no median.point_estimate")?;
    Ok(ns / 1e6)
}
