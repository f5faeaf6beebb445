//! The results table: medians, ratios against baselines, targets.

use std::fmt::Write as _;

use super::*;

pub(super) fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// A target: what is compared and the bound.
#[derive(Debug, Clone, Copy)]
pub(super) enum Target {
    /// ours / baseline <= bound
    RatioAtMost(f64),
    /// ours / baseline >= bound
    RatioAtLeast(f64),
    /// ours <= bound (in the row's unit)
    AtMost(f64),
    None,
}

pub(super) struct Row {
    case: &'static str,
    what: String,
    ours: Option<f64>,
    baseline: Option<f64>,
    unit: &'static str,
    target: Target,
    note: String,
}

pub(super) fn rows(samples: &Samples) -> Vec<Row> {
    let m = |name: &str| samples.get(name).and_then(|v| median(v));
    let row = |case, what: &str, ours: &str, baseline: Option<&str>, unit, target| Row {
        case,
        what: what.to_string(),
        ours: m(ours),
        baseline: baseline.and_then(m),
        unit,
        target,
        note: String::new(),
    };
    let mut rows = vec![row(
        "1",
        &format!("cold sync, {PEERS} clusters / {} routes", 2 * PEERS),
        "cold.wgcable",
        Some("cold.baseline"),
        "ms",
        Target::RatioAtMost(1.0),
    )];
    let cold = m("cold.wgcable");
    for (name, what) in [
        ("endpoint_ip_changed", "one endpoint IP changes"),
        ("cluster_added", "one cluster added"),
        ("cluster_removed", "one cluster removed"),
    ] {
        let mut r = row(
            "2",
            what,
            &format!("incr.{name}"),
            None,
            "ms",
            cold.map(|c| Target::AtMost(c / 100.0))
                .unwrap_or(Target::None),
        );
        let only = samples
            .get(&format!("incr.{name}.only_that_peer"))
            .is_some_and(|v| !v.is_empty() && v.iter().all(|x| *x == 1.0));
        r.note = format!(
            "{} ops, {} peer change(s), {} route change(s){}",
            m(&format!("incr.{name}.ops")).unwrap_or(f64::NAN),
            m(&format!("incr.{name}.peer_changes")).unwrap_or(f64::NAN),
            m(&format!("incr.{name}.route_changes")).unwrap_or(f64::NAN),
            if only {
                "; only that peer"
            } else {
                "; TOUCHED OTHERS"
            }
        );
        rows.push(r);
    }
    let mut noop = row(
        "2",
        "resync, nothing to change",
        "incr.resync_noop",
        None,
        "ms",
        Target::None,
    );
    noop.note = format!("{} ops", m("incr.resync_noop.ops").unwrap_or(f64::NAN));
    rows.push(noop);
    rows.push(row(
        "3",
        &format!("status poll, {PEERS} peers"),
        "poll.wgcable",
        Some("poll.baseline"),
        "ms",
        Target::RatioAtMost(1.2),
    ));
    rows.push(row(
        "4",
        "fresh start to first ping",
        "converge.fresh",
        None,
        "ms",
        Target::AtMost(1000.0),
    ));
    rows.push(row(
        "4",
        "restart to ready",
        "converge.restart_ready",
        None,
        "ms",
        Target::None,
    ));
    let mut lost = row(
        "4",
        "pings lost across a restart (100/s)",
        "converge.restart_lost",
        None,
        "",
        Target::AtMost(0.0),
    );
    lost.note = "the data path stays up while the gateway restarts".into();
    rows.push(lost);
    for n in FOOTPRINT_PEERS {
        let mut r = row(
            "5",
            &format!("gateway RSS at {n} peers"),
            &format!("footprint.rss.{n}"),
            None,
            "MiB",
            if n == PEERS {
                Target::AtMost(30.0)
            } else {
                Target::None
            },
        );
        r.note = format!(
            "wireguard-go {:.1} MiB",
            m(&format!("footprint.wireguard_go_rss.{n}")).unwrap_or(f64::NAN)
        );
        rows.push(r);
    }
    for n in FOOTPRINT_PEERS {
        let mut cpu = row(
            "5",
            &format!("idle CPU at {n} peers"),
            &format!("footprint.idle_cpu.{n}"),
            None,
            "%",
            if n == PEERS {
                Target::AtMost(1.0)
            } else {
                Target::None
            },
        );
        cpu.note = format!(
            "% of one core; wireguard-go {:.2}%",
            m(&format!("footprint.wireguard_go_idle_cpu.{n}")).unwrap_or(f64::NAN)
        );
        rows.push(cpu);
    }
    for bench in PLANNER_BENCHES {
        rows.push(row(
            "6",
            bench,
            &format!("planner.{bench}"),
            None,
            "ms",
            if bench.starts_with("desired_peers_validated") {
                Target::AtMost(10.0)
            } else {
                Target::None
            },
        ));
    }
    rows.push(row(
        "6",
        "desired_peers+plan/1000",
        "planner.desired_peers+plan/1000",
        None,
        "ms",
        Target::None,
    ));
    let mut tp = row(
        "7",
        "pod-to-pod TCP throughput",
        "throughput.wgcable",
        Some("throughput.baseline"),
        "Mbit/s",
        Target::RatioAtLeast(0.95),
    );
    tp.note = format!("auto MTU {}", m("throughput.auto_mtu").unwrap_or(f64::NAN));
    rows.push(tp);
    for (stat, what) in [("median", "median"), ("p99", "p99")] {
        let mut r = row(
            "8",
            &format!("Endpoint change -> peer configured, {what} of {CHANGES}"),
            &format!("broker.propagation.etcd.{stat}"),
            Some(&format!("broker.propagation.file.{stat}")),
            "ms",
            Target::None,
        );
        r.note = "etcd put (3 members) against the file broker (inotify)".into();
        rows.push(r);
    }
    let mut cold = row(
        "9",
        &format!("cold start to {COLD_ENDPOINTS} peers configured"),
        "broker.cold.etcd",
        Some("broker.cold.file"),
        "ms",
        Target::None,
    );
    cold.note = format!("{COLD_ENDPOINTS} etcd keys against {COLD_ENDPOINTS} files");
    rows.push(cold);
    let mut burst = row(
        "10",
        &format!("{BURST} Endpoints at once to all peers and routes on the device"),
        "burst.converge",
        Some("burst.converge.baseline"),
        "ms",
        Target::AtMost(10_000.0),
    );
    burst.note = format!(
        "gateway CPU {} s; baseline: wg setconf + ip -batch",
        fmt_value(m("burst.cpu"))
    );
    rows.push(burst);
    let mut removal = row(
        "11",
        &format!("{BURST_REMOVED} of them removed"),
        "burst.remove",
        Some("burst.remove.baseline"),
        "ms",
        Target::AtMost(2_000.0),
    );
    removal.note = "baseline: wg set ... remove + ip -batch".into();
    rows.push(removal);
    rows
}

pub(super) fn fmt_value(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// The table: a Markdown table, so that it can be pasted into docs/benchmarks.md as is.
pub(super) fn table(samples: &Samples) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| case | what | wgcable | baseline | ratio | target | met | notes |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for r in rows(samples) {
        let ratio = match (r.ours, r.baseline) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let (target, met) = match r.target {
            Target::RatioAtMost(x) => (format!("ratio <= {x}"), ratio.map(|q| q <= x)),
            Target::RatioAtLeast(x) => (format!("ratio >= {x}"), ratio.map(|q| q >= x)),
            Target::AtMost(x) => (
                format!("<= {} {}", fmt_value(Some(x)), r.unit),
                r.ours.map(|v| v <= x),
            ),
            Target::None => ("-".into(), None),
        };
        let met = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        let unit = |v: Option<f64>| match v {
            Some(_) if !r.unit.is_empty() => format!("{} {}", fmt_value(v), r.unit),
            _ => fmt_value(v),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {target} | {met} | {} |",
            r.case,
            r.what,
            unit(r.ours),
            unit(r.baseline),
            ratio
                .map(|q| format!("{q:.2}"))
                .unwrap_or_else(|| "-".into()),
            r.note
        );
    }
    out
}
