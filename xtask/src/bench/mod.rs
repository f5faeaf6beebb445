//! `cargo xtask bench [--runs N] [--quick]`: the benchmarks of issue 8. Benchmarks, not timed
//! tests: every case runs several times, prints its figures as it goes, and the run ends with
//! a table of medians, ratios against a baseline measured in the same run, and the targets.
//!
//! | case | what | measured by |
//! |------|------|-------------|
//! | 1 cold sync, 2 incremental, 3 status poll | 1,000 remote clusters | `wgcable-engine`'s `scale` bench binary (the real driver, kernel and `wireguard-go`, with counting decorators), run inside a namespace built here, against `wg setconf` + `ip -batch` and `wg show dump` |
//! | 4 convergence | two fresh gateways to the first pod-to-pod ping; a restart | the real `wgcable gateway` in the e2e topology, a 100/s ping with timestamps |
//! | 5 footprint | RSS at 0/100/1,000 peers, idle CPU at 1,000 | `/proc/PID/status` and `/proc/PID/stat` of the real gateway |
//! | 6 planner | 10,000 endpoints against 10,000 peers | `wgcable-peers`' criterion bench; medians from `target/criterion` |
//! | 7 throughput | pod to pod through the tunnel, auto MTU | `iperf3`, against `wireguard-go` set up by hand with `wg`/`ip` at MTU 1420 in a twin topology |
//! | 8 broker propagation | a remote Endpoint changed 100 times -> the new peer on the device: median, p99 | the real gateway with `--broker etcd` (3-member etcd) against the file broker (inotify), same run |
//! | 9 broker cold start | a gateway starting against 1,000 Endpoints, to all peers configured | 1,000 etcd keys against 1,000 files, same run |
//! | 10 burst, 11 burst removal | 5,000 Endpoints arriving at once at a running gateway; 1,000 of them removed | the real gateway (file broker, userspace backend) to all peers and routes on the device, against `wg setconf` + `ip -batch` of the same peers and routes (see `burst`) |
//!
//! `--vm` runs cases 1 and 7 in the VM of `cargo xtask vm`, where the gateway finds kernel
//! WireGuard: cold sync kernel vs `wg setconf` on the same guest kernel, throughput kernel vs
//! wireguard-go (see `vm`).
//!
//! Everything is built in release mode first (the build is not part of the time budget).
//! All network work happens in namespaces of the `topology` module (unique names, removed on
//! success, error and Ctrl-C; `cargo xtask e2e --cleanup` removes a crashed run's leftovers).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

mod broker;
mod burst;
mod convergence;
mod footprint;
mod planner;
mod scale;
mod table;
mod throughput;
mod vm;

use broker::*;
use burst::*;
use convergence::*;
use footprint::*;
use planner::*;
use scale::*;
use table::*;
use throughput::*;

pub(crate) use footprint::base64;

use crate::cmd::{self, read};
use crate::interrupt;
use crate::topology::{self, Options, Topology};

pub(crate) const USAGE: &str =
    "usage: cargo xtask bench [--runs N] [--quick] [--case N[,N...]] [--backend kernel]
       cargo xtask bench --vm [ARGS]   (cases 1 and 7 on kernel WireGuard, in the VM)
  --backend kernel   cases 1-4 and 7 on kernel WireGuard (needs a kernel with it, as in --vm)";
/// Remote clusters of cases 1 to 3 and 5.
pub(crate) const PEERS: u32 = 1000;
/// The peer counts whose footprint is measured.
pub(crate) const FOOTPRINT_PEERS: [u32; 3] = [0, 100, 1000];
/// How long idle CPU is sampled (at each peer count).
pub(crate) const IDLE_WINDOW: Duration = Duration::from_secs(10);
/// How long each iperf3 transfer runs.
pub(crate) const IPERF_SECS: u32 = 3;
pub(crate) const IPERF_PORT: &str = "5202";
/// How long a gateway may take to configure its peers or to answer a first ping.
pub(crate) const WAIT: Duration = Duration::from_secs(60);
/// Where the generated remote gateways live (routed to a next hop that never answers).
pub(crate) const FAKE_UNDERLAY: &str = "198.18.0.0/15";
pub(crate) const FAKE_NEXT_HOP: &str = "192.168.77.250";
pub(crate) const FAKE_NEXT_HOP_MAC: &str = "02:00:00:00:00:fa";

/// Routes [`FAKE_UNDERLAY`] in gateway namespace `i` to a next hop that never answers, with a
/// permanent neighbour entry: packets to the generated remote gateways leave and are dropped.
/// Without the entry the kernel parks every handshake in the ARP queue, charged to
/// wireguard-go's socket, which blocks its sends for seconds once the buffer is full.
pub(crate) fn route_to_fake_underlay(topo: &Topology, i: usize) -> Result<()> {
    cmd::run(&mut topo.ip(
        i,
        [
            "neigh",
            "replace",
            FAKE_NEXT_HOP,
            "lladdr",
            FAKE_NEXT_HOP_MAC,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    ))?;
    cmd::run(&mut topo.ip(i, ["route", "replace", FAKE_UNDERLAY, "via", FAKE_NEXT_HOP]))
}

/// Named samples, one per run.
pub(crate) type Samples = BTreeMap<String, Vec<f64>>;

pub(crate) fn push(samples: &mut Samples, name: &str, value: f64) {
    samples.entry(name.to_string()).or_default().push(value);
}

pub fn run(args: &[String]) -> Result<()> {
    if args.first().is_some_and(|a| a == "--vm") {
        return vm::run(&args[1..]);
    }
    if crate::wants_help(args) {
        println!("{USAGE}");
        return Ok(());
    }
    let mut runs = 3usize;
    let mut quick = false;
    let mut cases: Vec<u32> = Vec::new();
    let mut kernel = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--runs" => {
                runs = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n >= 1)
                    .context(USAGE)?;
            }
            "--case" => {
                let list = it.next().context(USAGE)?;
                for n in list.split(',') {
                    cases.push(
                        n.trim()
                            .parse()
                            .ok()
                            .filter(|n| (1..=11).contains(n))
                            .context(USAGE)?,
                    );
                }
            }
            "--quick" => quick = true,
            "--backend" => match it.next().map(String::as_str) {
                Some("kernel") => kernel = true,
                Some("userspace") => kernel = false,
                _ => bail!("{USAGE}"),
            },
            _ => bail!("{USAGE}"),
        }
    }
    let want = |n: u32| cases.is_empty() || cases.contains(&n);
    // Case 5 compares the gateway's footprint with its wireguard-go's; case 6 has no device.
    ensure!(
        !kernel || !(want(5) || want(6)),
        "--backend kernel runs cases 1-4 and 7 only (give them with --case)"
    );
    // The scale bench's device, and every gateway's: with kernel WireGuard, never a fallback.
    let backend: &[&str] = if kernel {
        &["--backend", "kernel"]
    } else {
        &[]
    };
    let gateway_args: Vec<String> = backend.iter().map(|a| a.to_string()).collect();
    topology::check_prerequisites()?;
    ensure!(
        cmd::exists("iperf3"),
        "`iperf3` not found: install with apt-get install -y iperf3"
    );
    interrupt::install()?;

    let build_start = Instant::now();
    let bin = build_release_gateway()?;
    let scale = build_scale_bench()?;
    eprintln!("xtask: built in {:.0?}", build_start.elapsed());

    let start = Instant::now();
    let mut samples = Samples::new();
    // A case that fails is reported and the others still run: the table at the end shows
    // what was measured, and the run fails afterwards.
    let mut failed: Vec<String> = Vec::new();
    let mut check = |cases: &str, result: Result<()>| {
        if let Err(e) = result {
            eprintln!("xtask: bench: case(s) {cases} failed: {e:#}");
            failed.push(format!("{cases}: {e:#}"));
        }
    };

    if want(6) {
        println!("\n==== case 6: planner micro-benchmarks (criterion) ====");
        check("6", planner(&mut samples));
    }

    if want(1) || want(2) || want(3) || want(5) {
        let result = (|| -> Result<()> {
            let mut single = Topology::build(Options {
                clusters: 1,
                gateway_bin: bin.clone(),
                gateway_args: gateway_args.clone(),
                keep: false,
            })?;
            if want(1) || want(2) || want(3) {
                println!("\n==== cases 1-3: cold sync, incremental changes, status poll at {PEERS} clusters ====");
                for r in 0..runs {
                    interrupt::check()?;
                    println!("-- run {} of {runs}", r + 1);
                    scale_run(&single, &scale, backend, &mut samples)?;
                }
            }
            if want(5) {
                println!("\n==== case 5: footprint ====");
                footprint(&mut single, &mut samples)?;
            }
            Ok(())
        })();
        check("1-3, 5", result);
    }

    let convergence_runs = if !want(4) || quick {
        1.max(if want(4) { runs } else { 1 })
    } else {
        runs.max(5)
    };
    if want(4) || want(7) {
        let result = (|| -> Result<()> {
            println!("\n==== case 4: convergence ====");
            let mut mesh = convergence(&bin, &gateway_args, convergence_runs, &mut samples)?;
            if want(4) {
                restarts(&mut mesh, runs, &mut samples)?;
            }
            if want(7) {
                println!("\n==== case 7: throughput ====");
                throughput(&mut mesh, runs, &mut samples)?;
            }
            Ok(())
        })();
        check("4, 7", result);
    }

    if want(8) || want(9) {
        println!("\n==== cases 8-9: the etcd broker against the file broker ====");
        check(
            "8-9",
            broker_cases(&bin, runs, want(8), want(9), &mut samples),
        );
    }
    if want(10) || want(11) {
        println!("\n==== cases 10-11: {BURST} Endpoints at once, {BURST_REMOVED} removed ====");
        check("10-11", burst(&bin, runs, &mut samples));
    }

    let elapsed = start.elapsed();
    println!("\n==== results: medians of {runs} runs (convergence: {convergence_runs}) ====");
    if kernel {
        println!("WireGuard: kernel (case 1's baseline: `ip link add type wireguard` + `wg setconf` + `ip -batch`; case 7's: wireguard-go by hand)");
    }
    print!("{}", table(&samples));
    println!(
        "cargo xtask bench: {:.0} s of benchmarks (plus {:.0} s of build)",
        elapsed.as_secs_f64(),
        build_start.elapsed().as_secs_f64() - elapsed.as_secs_f64()
    );
    ensure!(
        failed.is_empty(),
        "{} group(s) of cases failed (their rows are missing above):\n  {}",
        failed.len(),
        failed.join("\n  ")
    );
    Ok(())
}

// ---- Builds --------------------------------------------------------------------------------

pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| topology::workspace_root().join("target"))
}

/// The gateway in release mode: footprint and timings of a debug build say little.
pub(crate) fn build_release_gateway() -> Result<PathBuf> {
    if let Some(bin) = prebuilt(PREBUILT_GATEWAY)? {
        return Ok(bin);
    }
    let mut c = topology::cargo();
    c.args([
        "build",
        "--release",
        "--package",
        "wgcable",
        "--bin",
        "wgcable",
    ]);
    cmd::run(&mut c)?;
    let bin = target_dir().join("release").join("wgcable");
    ensure!(
        bin.is_file(),
        "cargo built wgcable but {} is not there",
        bin.display()
    );
    Ok(bin)
}

/// The `scale` bench binary of wgcable-engine; its path comes from cargo's JSON messages.
pub(crate) fn build_scale_bench() -> Result<PathBuf> {
    if let Some(bin) = prebuilt(PREBUILT_SCALE)? {
        return Ok(bin);
    }
    let mut c = topology::cargo();
    c.args([
        "bench",
        "--package",
        "wgcable-engine",
        "--bench",
        "scale",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    c.stderr(Stdio::inherit());
    let out = read(&mut c)?;
    scale_executable(&out).context("cargo built no `scale` bench executable")
}

/// The release gateway built before (`bench --vm` builds on the host and passes the path:
/// under TCG, cargo in the guest would rebuild everything, for hours).
pub(crate) const PREBUILT_GATEWAY: &str = "XTASK_BENCH_WGCABLE";
/// The `scale` bench executable built before, as [`PREBUILT_GATEWAY`].
pub(crate) const PREBUILT_SCALE: &str = "XTASK_BENCH_SCALE";

/// The binary that the variable `var` names, when it is set: no build.
fn prebuilt(var: &str) -> Result<Option<PathBuf>> {
    let Some(path) = std::env::var_os(var).map(PathBuf::from) else {
        return Ok(None);
    };
    ensure!(path.is_file(), "{var}={} is not a file", path.display());
    eprintln!("xtask: using {} ({var}), no build", path.display());
    Ok(Some(path))
}

pub(crate) fn scale_executable(cargo_json: &str) -> Option<PathBuf> {
    cargo_json
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m.pointer("/target/name").and_then(Value::as_str) == Some("scale"))
        .filter_map(|m| {
            m.get("executable")
                .and_then(Value::as_str)
                .map(PathBuf::from)
        })
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xff; 32]).len(), 44);
    }

    #[test]
    fn generated_endpoints_are_distinct_and_well_formed() {
        let a = endpoint_yaml(0);
        let b = endpoint_yaml(257);
        assert!(
            a.contains("cluster_id: c0\n") && a.contains("subnets: [10.0.0.0/24, 10.0.1.0/24]"),
            "{a}"
        );
        assert!(
            b.contains("private_ip: 198.18.1.1\n") && b.contains("10.2.2.0/24, 10.2.3.0/24"),
            "{b}"
        );
        let key = |y: &str| {
            y.lines()
                .find_map(|l| l.trim().strip_prefix("publicKey: "))
                .map(str::to_owned)
        };
        assert_ne!(key(&a), key(&b));
        assert_eq!(key(&a).map(|k| k.len()), Some(44));
    }

    #[test]
    fn proc_files_parse() {
        assert_eq!(
            parse_vm_rss_kib("Name:\twgcable\nVmRSS:\t   12345 kB\n"),
            Some(12345.0)
        );
        assert_eq!(parse_vm_rss_kib("Name:\tx\n"), None);
        let stat =
            "4242 (odd (name)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0 1000 1 1";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn ping_reply_lines_give_their_timestamp() {
        let at = parse_reply_time(
            "[1700000000.250000] 64 bytes from 10.202.1.10: icmp_seq=3 ttl=62 time=0.9 ms",
        )
        .expect("a reply");
        assert_eq!(
            at.duration_since(UNIX_EPOCH)
                .expect("after epoch")
                .as_millis(),
            1_700_000_000_250
        );
        assert!(parse_reply_time(
            "[1700000000.1] From 10.201.1.1 icmp_seq=1 Destination Net Unreachable"
        )
        .is_none());
    }

    #[test]
    fn tool_outputs_parse() {
        assert_eq!(
            parse_result("RESULT cold.wgcable 388.2015"),
            Some(("cold.wgcable", 388.2015))
        );
        assert_eq!(parse_result("  baseline cold sync: 375.0 ms"), None);
        let iperf = r#"{"end":{"sum_received":{"bits_per_second":1.5e9}}}"#;
        assert_eq!(parse_iperf_mbps(iperf).expect("parses"), 1500.0);
        assert!(parse_iperf_mbps("{}").is_err());
        let est = r#"{"mean":{"point_estimate":2.0e6},"median":{"point_estimate":1.5e6}}"#;
        assert_eq!(criterion_median_ms(est).expect("parses"), 1.5);
        let cargo = "{\"reason\":\"compiler-artifact\",\"target\":{\"name\":\"scale\"},\"executable\":\"/t/scale-1\"}\n{\"reason\":\"build-finished\"}";
        assert_eq!(scale_executable(cargo), Some(PathBuf::from("/t/scale-1")));
        assert!(is_generated("c0.yaml") && is_generated("c4999.yaml"));
        assert!(
            !is_generated("c.yaml") && !is_generated("bench-c1.yaml") && !is_generated("c1.yml")
        );
    }

    #[test]
    fn the_table_compares_medians_with_their_targets() {
        let mut s = Samples::new();
        for (name, values) in [
            ("cold.wgcable", vec![390.0, 380.0, 400.0]),
            ("cold.baseline", vec![370.0, 375.0, 380.0]),
            ("throughput.wgcable", vec![960.0]),
            ("throughput.baseline", vec![1000.0]),
            ("burst.converge", vec![4000.0, 4200.0, 4100.0]),
            ("burst.converge.baseline", vec![1000.0]),
        ] {
            s.insert(name.into(), values);
        }
        let text = table(&s);
        let burst = text
            .lines()
            .find(|l| l.starts_with("| 10 |"))
            .expect("a burst row");
        assert!(
            burst.contains("| 4100 ms | 1000 ms | 4.10 | <= 10000 ms | yes |"),
            "{burst}"
        );
        let cold = text
            .lines()
            .find(|l| l.contains("cold sync"))
            .expect("a cold sync row");
        assert!(
            cold.contains("| 390 ms | 375 ms | 1.04 | ratio <= 1 | **no** |"),
            "{cold}"
        );
        let tp = text
            .lines()
            .find(|l| l.contains("throughput"))
            .expect("a throughput row");
        assert!(tp.contains("| 0.96 | ratio >= 0.95 | yes |"), "{tp}");
        assert_eq!(median(&[3.0, 1.0, 2.0, f64::NAN]), Some(2.0));
        assert_eq!(median(&[]), None);
    }
}
