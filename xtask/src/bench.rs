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
//!
//! Everything is built in release mode first (the build is not part of the time budget).
//! All network work happens in namespaces of the `topology` module (unique names, removed on
//! success, error and Ctrl-C; `cargo xtask e2e --cleanup` removes a crashed run's leftovers).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::cmd::{self, cmd, poll, read, spawn};
use crate::interrupt;
use crate::state;
use crate::topology::{self, Options, Topology, DEVICE, TABLE};

const USAGE: &str = "usage: cargo xtask bench [--runs N] [--quick] [--case N[,N...]]";
/// Remote clusters of cases 1 to 3 and 5.
const PEERS: u32 = 1000;
/// The peer counts whose footprint is measured.
const FOOTPRINT_PEERS: [u32; 3] = [0, 100, 1000];
/// How long idle CPU is sampled (at each peer count).
const IDLE_WINDOW: Duration = Duration::from_secs(10);
/// How long each iperf3 transfer runs.
const IPERF_SECS: u32 = 3;
const IPERF_PORT: &str = "5202";
/// How long a gateway may take to configure its peers or to answer a first ping.
const WAIT: Duration = Duration::from_secs(60);
/// Where the generated remote gateways live (routed to a next hop that never answers).
const FAKE_UNDERLAY: &str = "198.18.0.0/15";
const FAKE_NEXT_HOP: &str = "192.168.77.250";
const FAKE_NEXT_HOP_MAC: &str = "02:00:00:00:00:fa";

/// Named samples, one per run.
type Samples = BTreeMap<String, Vec<f64>>;

fn push(samples: &mut Samples, name: &str, value: f64) {
    samples.entry(name.to_string()).or_default().push(value);
}

pub fn run(args: &[String]) -> Result<()> {
    if crate::wants_help(args) {
        println!("{USAGE}");
        return Ok(());
    }
    let mut runs = 3usize;
    let mut quick = false;
    let mut cases: Vec<u32> = Vec::new();
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
                            .filter(|n| (1..=7).contains(n))
                            .context(USAGE)?,
                    );
                }
            }
            "--quick" => quick = true,
            _ => bail!("{USAGE}"),
        }
    }
    let want = |n: u32| cases.is_empty() || cases.contains(&n);
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

    if want(6) {
        println!("\n==== case 6: planner micro-benchmarks (criterion) ====");
        planner(&mut samples)?;
    }

    if want(1) || want(2) || want(3) || want(5) {
        let mut single = Topology::build(Options {
            clusters: 1,
            gateway_bin: bin.clone(),
            gateway_args: Vec::new(),
            keep: false,
        })?;
        if want(1) || want(2) || want(3) {
            println!("\n==== cases 1-3: cold sync, incremental changes, status poll at {PEERS} clusters ====");
            for r in 0..runs {
                interrupt::check()?;
                println!("-- run {} of {runs}", r + 1);
                scale_run(&single, &scale, &mut samples)?;
            }
        }
        if want(5) {
            println!("\n==== case 5: footprint ====");
            footprint(&mut single, &mut samples)?;
        }
    }

    let convergence_runs = if !want(4) || quick {
        1.max(if want(4) { runs } else { 1 })
    } else {
        runs.max(5)
    };
    if want(4) || want(7) {
        println!("\n==== case 4: convergence ====");
        let mut mesh = convergence(&bin, convergence_runs, &mut samples)?;
        if want(4) {
            restarts(&mut mesh, runs, &mut samples)?;
        }
        if want(7) {
            println!("\n==== case 7: throughput ====");
            throughput(&mut mesh, runs, &mut samples)?;
        }
    }

    let elapsed = start.elapsed();
    println!("\n==== results: medians of {runs} runs (convergence: {convergence_runs}) ====");
    print!("{}", table(&samples));
    println!(
        "cargo xtask bench: {:.0} s of benchmarks (plus {:.0} s of build)",
        elapsed.as_secs_f64(),
        build_start.elapsed().as_secs_f64() - elapsed.as_secs_f64()
    );
    Ok(())
}

// ---- Builds --------------------------------------------------------------------------------

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| topology::workspace_root().join("target"))
}

/// The gateway in release mode: footprint and timings of a debug build say little.
fn build_release_gateway() -> Result<PathBuf> {
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
fn build_scale_bench() -> Result<PathBuf> {
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

fn scale_executable(cargo_json: &str) -> Option<PathBuf> {
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

// ---- Case 6: planner -----------------------------------------------------------------------

const PLANNER_BENCHES: [&str; 4] = [
    "plan-nothing-to-change/10000",
    "plan-one-endpoint-moved/10000",
    "desired_peers+plan/10000",
    // What the engine runs at every reconcile (endpoints validated once, on arrival).
    "desired_peers_validated+plan/10000",
];

fn planner(samples: &mut Samples) -> Result<()> {
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
fn criterion_median_ms(estimates: &str) -> Result<f64> {
    let v: Value = serde_json::from_str(estimates)?;
    let ns = v
        .pointer("/median/point_estimate")
        .and_then(Value::as_f64)
        .context("no median.point_estimate")?;
    Ok(ns / 1e6)
}

// ---- Cases 1 to 3: the scale bench binary ---------------------------------------------------

fn scale_run(topo: &Topology, exe: &Path, samples: &mut Samples) -> Result<()> {
    let ns = &topo.clusters[0].gw_ns;
    let out = read(&mut cmd(
        "ip",
        [
            "netns".as_ref(),
            "exec".as_ref(),
            ns.as_ref(),
            exe.as_os_str(),
            "--in-namespace".as_ref(),
            "--peers".as_ref(),
            PEERS.to_string().as_ref(),
        ],
    ))?;
    for line in out.lines() {
        match parse_result(line) {
            Some((name, value)) => push(samples, name, value),
            None => println!("{line}"),
        }
    }
    Ok(())
}

/// `RESULT name value` lines of the scale bench.
fn parse_result(line: &str) -> Option<(&str, f64)> {
    let mut parts = line.strip_prefix("RESULT ")?.split_whitespace();
    let name = parts.next()?;
    let value = parts.next()?.parse().ok()?;
    Some((name, value))
}

// ---- Case 5: footprint ----------------------------------------------------------------------

/// A standard base64 encoder: xtask links no crate that has one, and endpoint keys are the
/// only use.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The Endpoint of generated remote cluster `i`: its own public key (32 bytes of SHA-256:
/// planning needs a well-formed key, not a point anyone holds the secret of), two /24s, and
/// an underlay address in [`FAKE_UNDERLAY`].
fn endpoint_yaml(i: u32) -> String {
    use sha2::{Digest, Sha256};
    let key = base64(&Sha256::digest(
        format!("wgcable bench cluster {i}").as_bytes(),
    ));
    let subnet = |n: u32| format!("10.{}.{}.0/24", n >> 8, n & 0xff);
    format!(
        "apiVersion: submariner.io/v1\nkind: Endpoint\nmetadata:\n  name: c{i}-cable\nspec:\n  \
         cluster_id: c{i}\n  cable_name: submariner-cable-c{i}\n  hostname: gw-c{i}\n  \
         backend: wireguard\n  backend_config:\n    publicKey: {key}\n  private_ip: 198.18.{}.{}\n  \
         subnets: [{}, {}]\n",
        (i >> 8) & 0xff,
        i & 0xff,
        subnet(2 * i),
        subnet(2 * i + 1)
    )
}

fn write_endpoints(broker: &Path, n: u32) -> Result<()> {
    for entry in std::fs::read_dir(broker)? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|f| f.to_str())
            .is_some_and(|f| f.starts_with("bench-c"))
        {
            std::fs::remove_file(&path)?;
        }
    }
    for i in 0..n {
        let path = broker.join(format!("bench-c{i}.yaml"));
        std::fs::write(&path, endpoint_yaml(i))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The pid of the `comm` process in the gateway namespace of cluster `i`.
fn pid_of(topo: &Topology, i: usize, comm: &str) -> Result<i32> {
    state::processes_in_netns(&topo.clusters[i].gw_ns)
        .into_iter()
        .find(|(_, c)| c == comm)
        .map(|(pid, _)| pid)
        .with_context(|| format!("no {comm} process in {}", topo.clusters[i].gw_ns))
}

/// VmRSS of a process, in MiB.
fn rss_mib(pid: i32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vm_rss_kib(&status)
        .map(|kib| kib / 1024.0)
        .context("no VmRSS line")
}

fn parse_vm_rss_kib(status: &str) -> Option<f64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// utime + stime of a process, in clock ticks (USER_HZ, 100 on Linux).
fn cpu_ticks(pid: i32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat).context("malformed /proc/PID/stat")
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name may hold spaces and parentheses: fields are counted after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of the whole line, utime 14 and stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn footprint(topo: &mut Topology, samples: &mut Samples) -> Result<()> {
    // The generated remote gateways sit behind a next hop that never answers; a permanent
    // neighbour entry keeps the kernel from parking every handshake in the ARP queue (which
    // blocks wireguard-go's sends for seconds once its socket buffer is full).
    cmd::run(&mut topo.ip(
        0,
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
    cmd::run(&mut topo.ip(0, ["route", "replace", FAKE_UNDERLAY, "via", FAKE_NEXT_HOP]))?;
    let broker = topo.broker_dir.clone();
    let bin = topo.gateway_bin.clone();
    for n in FOOTPRINT_PEERS {
        interrupt::check()?;
        write_endpoints(&broker, n)?;
        let started = Instant::now();
        topo.start_gateway(0)?;
        poll(&format!("the gateway to configure {n} peers"), WAIT, || {
            let peers = state::peers(topo, 0)?.len();
            let routes = state::routes(topo, 0)?.len();
            ensure!(
                peers == n as usize && routes == 2 * n as usize,
                "{peers} peers and {routes} routes so far"
            );
            state::http(topo, 0, "/readyz")?;
            Ok(())
        })?;
        let configured = started.elapsed();
        // Let the first status poll and allocations settle before reading the RSS.
        wait(Duration::from_secs(3))?;
        let gw = pid_of(topo, 0, "wgcable")?;
        let rss = rss_mib(gw)?;
        let wg_rss = pid_of(topo, 0, "wireguard-go")
            .and_then(rss_mib)
            .unwrap_or(f64::NAN);
        println!(
            "footprint with {n} peers: gateway RSS {rss:.1} MiB (wireguard-go {wg_rss:.1} MiB); configured in {:.2} s",
            configured.as_secs_f64()
        );
        push(samples, &format!("footprint.rss.{n}"), rss);
        push(samples, &format!("footprint.wireguard_go_rss.{n}"), wg_rss);
        {
            let wg = pid_of(topo, 0, "wireguard-go")?;
            let (g0, w0, t0) = (cpu_ticks(gw)?, cpu_ticks(wg)?, Instant::now());
            wait(IDLE_WINDOW)?;
            let (g1, w1, secs) = (cpu_ticks(gw)?, cpu_ticks(wg)?, t0.elapsed().as_secs_f64());
            let percent = |ticks: u64| ticks as f64 / 100.0 / secs * 100.0;
            println!(
                "idle CPU with {n} peers over {secs:.0} s: gateway {:.2}% of a core (wireguard-go {:.2}%)",
                percent(g1 - g0),
                percent(w1 - w0)
            );
            push(
                samples,
                &format!("footprint.idle_cpu.{n}"),
                percent(g1 - g0),
            );
            push(
                samples,
                &format!("footprint.wireguard_go_idle_cpu.{n}"),
                percent(w1 - w0),
            );
        }
        topo.stop_gateway(0)?;
        // A fresh start for the next count: no device, peers or routes left to adopt.
        cmd::run(&mut topo.gw(0, &bin, ["cleanup"]))?;
    }
    write_endpoints(&broker, 0)?;
    Ok(())
}

/// Sleeps for `d`, but ends at once on Ctrl-C.
fn wait(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        interrupt::check()?;
        std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
    }
    Ok(())
}

// ---- Case 4: convergence --------------------------------------------------------------------

/// A `ping -D` at 100/s from a pod, whose replies are read on a thread of their own.
struct Pinger {
    child: std::process::Child,
    replies: mpsc::Receiver<SystemTime>,
}

impl Pinger {
    fn start(topo: &Topology, from: usize, dst: &str, deadline_secs: u32) -> Result<Pinger> {
        let mut child = spawn(
            topo.pod(
                from,
                "ping",
                // A count, not a deadline (-w): with -w, ping gives up at the first "network
                // unreachable" that the gateway answers before its tunnel is up.
                [
                    "-n",
                    "-D",
                    "-i",
                    "0.01",
                    "-c",
                    &(deadline_secs * 100).to_string(),
                    dst,
                ],
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
        )?;
        let stdout = child.stdout.take().context("ping stdout")?;
        let (tx, replies) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if let Some(at) = parse_reply_time(&line) {
                    if tx.send(at).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Pinger { child, replies })
    }

    /// The time of the first reply.
    fn first_reply(&self, timeout: Duration) -> Result<SystemTime> {
        let end = Instant::now() + timeout;
        loop {
            interrupt::check()?;
            match self.replies.recv_timeout(Duration::from_millis(100)) {
                Ok(at) => return Ok(at),
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < end => {}
                Err(_) => bail!("no ping reply within {timeout:?}"),
            }
        }
    }

    fn stop(mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGINT);
        }
        let _ = self.child.wait();
    }
}

/// The `[seconds.micros]` timestamp of a `ping -D` reply line.
fn parse_reply_time(line: &str) -> Option<SystemTime> {
    if !line.contains("bytes from") {
        return None;
    }
    let stamp = line.strip_prefix('[')?.split_once(']')?.0;
    let secs: f64 = stamp.parse().ok()?;
    Some(UNIX_EPOCH + Duration::from_secs_f64(secs))
}

fn convergence(bin: &Path, runs: usize, samples: &mut Samples) -> Result<Topology> {
    let mut last = None;
    for r in 0..runs {
        interrupt::check()?;
        // A new topology each time: no key, no device, no routes to adopt. The previous one
        // goes first, so that only one pair of gateways runs at a time.
        drop(last.take());
        let mut topo = Topology::build(Options {
            clusters: 2,
            gateway_bin: bin.to_path_buf(),
            gateway_args: Vec::new(),
            keep: false,
        })?;
        let dst = topo.clusters[1].pod_ip.to_string();
        let pinger = Pinger::start(&topo, 0, &dst, 60)?;
        let t0 = SystemTime::now();
        topo.start_gateway(0)?;
        topo.start_gateway(1)?;
        let first = pinger.first_reply(WAIT);
        pinger.stop();
        if first.is_err() {
            topo.print_log_tails(30);
        }
        let secs = first?.duration_since(t0).unwrap_or_default().as_secs_f64();
        println!(
            "run {} of {runs}: two fresh gateways to the first pod-a -> pod-b ping: {:.0} ms",
            r + 1,
            secs * 1000.0
        );
        push(samples, "converge.fresh", secs * 1000.0);
        last = Some(topo);
    }
    last.context("no convergence run")
}

/// Restarts gateway A with a 100/s ping running across it: the time until it is ready again,
/// and the pings lost.
fn restarts(topo: &mut Topology, runs: usize, samples: &mut Samples) -> Result<()> {
    let dst = topo.clusters[1].pod_ip.to_string();
    for r in 0..runs {
        interrupt::check()?;
        let count = 400u32;
        let ping = spawn(
            topo.pod(
                0,
                "ping",
                [
                    "-n",
                    "-q",
                    "-i",
                    "0.01",
                    "-W",
                    "1",
                    "-c",
                    &count.to_string(),
                    &dst,
                ],
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
        )?;
        wait(Duration::from_millis(300))?;
        topo.stop_gateway(0)?;
        let t0 = Instant::now();
        topo.start_gateway(0)?;
        let ready = loop {
            interrupt::check()?;
            if state::http(topo, 0, "/readyz").is_ok() {
                break t0.elapsed();
            }
            ensure!(
                t0.elapsed() < WAIT,
                "gateway a not ready {WAIT:?} after a restart"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = ping.wait_with_output()?;
        let (sent, received) = state::parse_ping(&String::from_utf8_lossy(&out.stdout))?;
        println!(
            "restart {} of {runs}: gateway a ready again after {:.0} ms; {} of {sent} pings (100/s) lost across the restart",
            r + 1,
            ready.as_secs_f64() * 1000.0,
            sent - received
        );
        push(
            samples,
            "converge.restart_ready",
            ready.as_secs_f64() * 1000.0,
        );
        push(samples, "converge.restart_lost", (sent - received) as f64);
    }
    Ok(())
}

// ---- Case 7: throughput ---------------------------------------------------------------------

/// A twin of the two-cluster topology with `wireguard-go` configured by hand, as an operator
/// would with `wg` and `ip`: MTU 1420, one peer, a route to the other pod subnet.
fn hand_tunnel(bin: &Path) -> Result<Topology> {
    let topo = Topology::build(Options {
        clusters: 2,
        gateway_bin: bin.to_path_buf(),
        gateway_args: Vec::new(),
        keep: false,
    })?;
    let mut public = Vec::new();
    for i in 0..2 {
        let key_file = topo.run_dir.join(format!("wgbase-{i}.key"));
        let private = read(&mut cmd("wg", ["genkey"]))?;
        std::fs::write(&key_file, &private)?;
        let mut c = cmd("wg", ["pubkey"]);
        c.stdin(std::fs::File::open(&key_file)?);
        let out = c.output().context("running wg pubkey")?;
        ensure!(out.status.success(), "wg pubkey failed");
        public.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    for i in 0..2 {
        let j = 1 - i;
        let key_file = topo.run_dir.join(format!("wgbase-{i}.key"));
        cmd::run(
            topo.gw(i, "wireguard-go", ["wgbase"])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        cmd::run(&mut topo.gw(
            i,
            "wg",
            [
                "set".as_ref(),
                "wgbase".as_ref(),
                "listen-port".as_ref(),
                "4500".as_ref(),
                "private-key".as_ref(),
                key_file.as_os_str(),
                "peer".as_ref(),
                public[j].as_ref(),
                "endpoint".as_ref(),
                format!("{}:4500", topo.clusters[j].underlay_ip).as_ref(),
                "allowed-ips".as_ref(),
                topo.clusters[j].subnet.as_ref(),
            ],
        ))?;
        cmd::run(&mut topo.ip(i, ["link", "set", "wgbase", "mtu", "1420", "up"]))?;
        cmd::run(&mut topo.ip(
            i,
            ["route", "add", &topo.clusters[j].subnet, "dev", "wgbase"],
        ))?;
    }
    Ok(topo)
}

/// One iperf3 transfer from pod a to pod b, in Mbit/s as received.
fn iperf(topo: &Topology) -> Result<f64> {
    let dst = topo.clusters[1].pod_ip.to_string();
    let mut server = spawn(
        topo.pod(1, "iperf3", ["-s", "-1", "-p", IPERF_PORT])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    let listening = poll("iperf3 to listen in pod b", Duration::from_secs(10), || {
        let out = read(&mut topo.pod(1, "ss", ["-Hltn", &format!("sport = :{IPERF_PORT}")]))?;
        ensure!(!out.trim().is_empty(), "not listening yet");
        Ok(())
    });
    if let Err(e) = listening {
        let _ = server.kill();
        let _ = server.wait();
        return Err(e);
    }
    let json = read(&mut topo.pod(
        0,
        "iperf3",
        [
            "-c",
            &dst,
            "-p",
            IPERF_PORT,
            "-t",
            &IPERF_SECS.to_string(),
            "-J",
        ],
    ));
    let _ = server.wait();
    parse_iperf_mbps(&json?)
}

fn parse_iperf_mbps(json: &str) -> Result<f64> {
    let v: Value = serde_json::from_str(json).context("parsing iperf3 -J output")?;
    let bps = v
        .pointer("/end/sum_received/bits_per_second")
        .and_then(Value::as_f64)
        .context("iperf3 reported no end.sum_received.bits_per_second")?;
    Ok(bps / 1e6)
}

fn throughput(mesh: &mut Topology, runs: usize, samples: &mut Samples) -> Result<()> {
    let mtu = read(&mut mesh.ip(0, ["-j", "link", "show", DEVICE]))?;
    let mtu: Vec<Value> = serde_json::from_str(&mtu).context("parsing ip -j link")?;
    let mtu = mtu
        .first()
        .and_then(|l| l.get("mtu"))
        .and_then(Value::as_u64)
        .context("no MTU on the gateway's device")?;
    println!("the gateway chose MTU {mtu} for {DEVICE} (underlay 1500)");
    push(samples, "throughput.auto_mtu", mtu as f64);
    let routes = state::routes(mesh, 0)?;
    ensure!(
        routes.contains(&mesh.clusters[1].subnet),
        "gateway a has no route to {} in table {TABLE}",
        mesh.clusters[1].subnet
    );
    let bin = mesh.gateway_bin.clone();
    let hand = hand_tunnel(&bin)?;
    // Both directions work before anything is timed.
    let dst = hand.clusters[1].pod_ip.to_string();
    poll(
        "the hand-made tunnel to pass a ping",
        Duration::from_secs(20),
        || {
            ensure!(state::ping_once(&hand, 0, &dst)?, "no reply");
            Ok(())
        },
    )?;
    // Alternated, so that a busy moment of the machine does not land on one side only.
    for r in 0..runs {
        interrupt::check()?;
        let ours = iperf(mesh)?;
        let theirs = iperf(&hand)?;
        println!(
            "run {} of {runs}: pod a -> pod b through wgcable {ours:.0} Mbit/s, through the hand-made wireguard-go tunnel {theirs:.0} Mbit/s",
            r + 1
        );
        push(samples, "throughput.wgcable", ours);
        push(samples, "throughput.baseline", theirs);
    }
    Ok(())
}

// ---- The table ------------------------------------------------------------------------------

fn median(values: &[f64]) -> Option<f64> {
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
enum Target {
    /// ours / baseline <= bound
    RatioAtMost(f64),
    /// ours / baseline >= bound
    RatioAtLeast(f64),
    /// ours <= bound (in the row's unit)
    AtMost(f64),
    None,
}

struct Row {
    case: &'static str,
    what: String,
    ours: Option<f64>,
    baseline: Option<f64>,
    unit: &'static str,
    target: Target,
    note: String,
}

fn rows(samples: &Samples) -> Vec<Row> {
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
    rows
}

fn fmt_value(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// The table: a Markdown table, so that it can be pasted into docs/benchmarks.md as is.
fn table(samples: &Samples) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn the_table_compares_medians_with_their_targets() {
        let mut s = Samples::new();
        for (name, values) in [
            ("cold.wgcable", vec![390.0, 380.0, 400.0]),
            ("cold.baseline", vec![370.0, 375.0, 380.0]),
            ("throughput.wgcable", vec![960.0]),
            ("throughput.baseline", vec![1000.0]),
        ] {
            s.insert(name.into(), values);
        }
        let text = table(&s);
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
