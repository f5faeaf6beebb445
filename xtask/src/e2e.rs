//! `cargo xtask e2e [--cleanup] [--keep]`: real gateways, real WireGuard, real traffic in
//! network namespaces (see `topology`), the eight scenarios of issue 7 and `ipv6` (the clusters
//! are dual-stack over an IPv4 underlay). Each scenario checks real state (kernel routes and
//! rules of both families, the WireGuard device, metrics text, pings and checksummed TCP
//! transfers) and prints `PASS name: what it measured` or `FAIL name: why`; the last line is
//! `N passed, N failed`.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cmd::{self, cmd, poll, read, spawn};
use crate::interrupt;
use crate::state::{self, Sample};
use crate::topology::{self, Family, Options, Topology, DEVICE, TABLE};

const USAGE: &str = "usage: cargo xtask e2e [--cleanup] [--keep]";
/// Short enough that drift repair is quick to observe, long enough to be a real period.
const RESYNC: Duration = Duration::from_secs(2);
/// How long any one condition may take to become true.
const WAIT: Duration = Duration::from_secs(30);
/// The most pings (at 10/s) a gateway restart may lose.
const RESTART_LOSS_BOUND: u64 = 5;
const TRANSFER_BYTES: u64 = 4 * 1024 * 1024;
const TRANSFER_PORT: &str = "5201";

type Scenario = fn(&mut Topology) -> Result<String>;

const SCENARIOS: [(&str, Scenario); 9] = [
    ("full-mesh", full_mesh),
    ("ipv6", ipv6),
    ("metrics", metrics),
    ("disconnect", disconnect),
    ("key-change", key_change),
    ("hitless-restart", hitless_restart),
    ("drift-repair", drift_repair),
    ("bad-input", bad_input),
    ("cleanup", cleanup),
];

pub fn run(args: &[String]) -> Result<()> {
    if crate::wants_help(args) {
        println!("{USAGE}");
        return Ok(());
    }
    let mut keep = false;
    for arg in args {
        match arg.as_str() {
            "--cleanup" => return topology::cleanup_leftovers(),
            "--keep" => keep = true,
            _ => bail!("{USAGE}"),
        }
    }
    interrupt::install()?;
    let mut topo = match setup(keep) {
        Ok(topo) => topo,
        Err(e) => {
            println!("FAIL setup: {e:#}");
            println!("0 passed, {} failed", SCENARIOS.len());
            bail!("e2e setup failed");
        }
    };

    let (mut passed, mut failed) = (0, 0);
    let mut mesh_up = false;
    for (name, scenario) in SCENARIOS {
        let result = if interrupt::interrupted() {
            Err(anyhow::anyhow!("interrupted by Ctrl-C"))
        } else if name != "full-mesh" && !mesh_up {
            Err(anyhow::anyhow!("not run: the full mesh never came up"))
        } else {
            eprintln!("\n==== scenario {name} ====");
            let start = Instant::now();
            scenario(&mut topo).map(|m| format!("{m} [{:.1}s]", start.elapsed().as_secs_f64()))
        };
        match result {
            Ok(measured) => {
                mesh_up = true;
                passed += 1;
                println!("PASS {name}: {measured}");
            }
            Err(e) => {
                failed += 1;
                println!("FAIL {name}: {e:#}");
                if !interrupt::interrupted() && (mesh_up || name == "full-mesh") {
                    topo.print_log_tails(25);
                }
            }
        }
    }
    drop(topo);
    println!("{passed} passed, {failed} failed");
    ensure!(failed == 0, "{failed} e2e scenario(s) failed");
    Ok(())
}

fn setup(keep: bool) -> Result<Topology> {
    topology::check_prerequisites()?;
    let gateway_bin = topology::build_gateway()?;
    Topology::build(Options {
        clusters: 3,
        gateway_bin,
        gateway_args: ["--resync-interval", "2s", "--status-interval", "1s", "-v"]
            .map(String::from)
            .to_vec(),
        keep,
    })
}

// Helpers shared by the scenarios.

/// Starts any gateway that is not running and waits until every one reports every other
/// connected: the state each scenario starts from.
fn ensure_mesh(topo: &mut Topology) -> Result<()> {
    for i in 0..topo.clusters.len() {
        if !topo.gateway_running(i) {
            topo.start_gateway(i)?;
        }
    }
    wait_mesh(topo, WAIT).context("precondition: the full mesh")
}

fn wait_mesh(topo: &Topology, timeout: Duration) -> Result<()> {
    for i in 0..topo.clusters.len() {
        state::wait_connected(topo, i, &topo.remotes(i), timeout)?;
    }
    Ok(())
}

/// Waits until pod `from` gets an answer from pod `to` over IPv4; returns how long it took.
fn wait_ping(topo: &Topology, from: usize, to: usize, timeout: Duration) -> Result<Duration> {
    wait_ping_of(topo, from, to, Family::V4, timeout)
}

/// Waits until pod `from` gets an answer from pod `to`'s address of `family`.
fn wait_ping_of(
    topo: &Topology,
    from: usize,
    to: usize,
    family: Family,
    timeout: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    let dst = topo.clusters[to].pod_addr(family).to_string();
    let what = format!(
        "pod-{} to answer an {} ping from pod-{}",
        topo.clusters[to].id,
        family.name(),
        topo.clusters[from].id
    );
    poll(&what, timeout, || {
        ensure!(state::ping_once(topo, from, &dst)?, "no reply from {dst}");
        Ok(start.elapsed())
    })
}

/// Pings every pod from every other pod at its address of `family`; fails on any loss.
/// Returns the number of pairs.
fn ping_all_pairs(topo: &Topology, count: u32, family: Family) -> Result<usize> {
    let mut pairs = 0;
    for from in 0..topo.clusters.len() {
        for to in 0..topo.clusters.len() {
            if from == to {
                continue;
            }
            let dst = topo.clusters[to].pod_addr(family).to_string();
            let (sent, received) = state::ping_many(topo, from, &dst, count)?;
            ensure!(
                sent == u64::from(count) && received == sent,
                "pod-{} -> pod-{} ({dst}): {received} of {sent} {} pings answered",
                topo.clusters[from].id,
                topo.clusters[to].id,
                family.name()
            );
            pairs += 1;
        }
    }
    Ok(pairs)
}

/// The IPv4 subnets of the clusters other than `i`, sorted.
fn remote_subnets(topo: &Topology, i: usize) -> Vec<String> {
    remote_subnets_of(topo, i, Family::V4)
}

/// The subnets of `family` of the clusters other than `i`, sorted.
fn remote_subnets_of(topo: &Topology, i: usize, family: Family) -> Vec<String> {
    let mut subnets: Vec<String> = topo
        .clusters
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(_, c)| c.subnet_of(family).to_string())
        .collect();
    subnets.sort();
    subnets
}

/// Sends `bytes` from pod `from` to pod `to`'s address of `family` over TCP and compares both
/// sides' SHA-256. Returns the throughput in MB/s.
fn transfer(topo: &Topology, from: usize, to: usize, family: Family, bytes: u64) -> Result<f64> {
    let exe = topology::xtask_exe()?;
    let dst = topo.clusters[to].pod_addr(family).to_string();
    // The receiver listens on that one address, so only a connection of that family to it
    // can deliver the bytes.
    let mut receiver = spawn(
        topo.pod(to, &exe, ["internal", "tcp-recv", TRANSFER_PORT, &dst])
            .stdin(Stdio::null())
            .stdout(Stdio::piped()),
    )?;
    let stdout = receiver.stdout.take().context("receiver stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    // The receiver prints `listening` once it listens: only then may the sender connect.
    let first = lines.next().transpose()?.unwrap_or_default();
    ensure!(
        first == "listening",
        "tcp-recv did not start listening (printed {first:?})"
    );
    let start = Instant::now();
    let sent = read(&mut topo.pod(
        from,
        &exe,
        [
            "internal",
            "tcp-send",
            &dst,
            TRANSFER_PORT,
            &bytes.to_string(),
        ],
    ));
    let elapsed = start.elapsed();
    if sent.is_err() {
        let _ = receiver.kill();
    }
    let received = lines.next().transpose()?.unwrap_or_default();
    receiver.wait()?;
    let sent = sent?;
    let sent = sent.trim();
    ensure!(
        sent == received && sent.starts_with(&format!("bytes={bytes} ")),
        "transfer corrupted: sender {sent:?}, receiver {received:?}"
    );
    Ok(bytes as f64 / 1e6 / elapsed.as_secs_f64())
}

/// The first sample called `name` whose `remote_cluster` is `remote`.
fn find<'a>(samples: &'a [Sample], name: &str, remote: &str) -> Option<&'a Sample> {
    samples
        .iter()
        .find(|s| s.name == name && s.label("remote_cluster") == Some(remote))
}

/// Writes `content` to the broker dir as `name` the way gateways do: a hidden temporary file
/// (which watchers ignore) renamed into place, so no reader sees half a file.
fn write_broker_file(dir: &Path, name: &str, content: &[u8]) -> Result<()> {
    let tmp = dir.join(format!(".xtask-{name}.tmp"));
    std::fs::write(&tmp, content).with_context(|| format!("writing {}", tmp.display()))?;
    let path = dir.join(name);
    eprintln!("xtask: writing {}", path.display());
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming into {}", path.display()))
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

// The scenarios.

/// 1. All gateways start; every connection reaches `connected`, pods ping across, and a
///    checksummed TCP transfer passes.
fn full_mesh(topo: &mut Topology) -> Result<String> {
    let start = Instant::now();
    for i in 0..topo.clusters.len() {
        topo.start_gateway(i)?;
    }
    wait_ping(topo, 0, 1, Duration::from_secs(60))?;
    let first_ping = secs(start.elapsed());
    wait_mesh(topo, WAIT)?;
    let connected = secs(start.elapsed());

    // Each holder sees only its own device: the mount namespaces keep the sockets apart.
    let mut keys = Vec::new();
    for i in 0..topo.clusters.len() {
        let interfaces = read(&mut topo.gw(i, "wg", ["show", "interfaces"]))?;
        ensure!(
            interfaces.split_whitespace().collect::<Vec<_>>() == [DEVICE],
            "gateway {} sees WireGuard interfaces {:?}, not just its own {DEVICE}",
            topo.clusters[i].id,
            interfaces.trim()
        );
        keys.push(state::public_key(topo, i)?);
    }
    let mut distinct = keys.clone();
    distinct.sort();
    distinct.dedup();
    ensure!(
        distinct.len() == keys.len(),
        "two gateways share a public key"
    );

    for i in 0..topo.clusters.len() {
        let mut routes = state::routes(topo, i)?;
        routes.sort();
        ensure!(
            routes == remote_subnets(topo, i),
            "gateway {} table {TABLE} routes {routes:?}, expected {:?}",
            topo.clusters[i].id,
            remote_subnets(topo, i)
        );
        ensure!(
            !state::rules(topo, i)?.is_empty(),
            "gateway {} has no rule for table {TABLE}",
            topo.clusters[i].id
        );
        let peers = state::peers(topo, i)?;
        ensure!(
            peers.len() == topo.clusters.len() - 1,
            "gateway {} has {} peers",
            topo.clusters[i].id,
            peers.len()
        );
    }
    let pairs = ping_all_pairs(topo, 5, Family::V4)?;
    let rate = transfer(topo, 0, 1, Family::V4, TRANSFER_BYTES)?;
    Ok(format!(
        "{n} gateways, {c} connections each connected {connected:.1}s after start; first pod-a -> pod-b ping \
         {first_ping:.2}s after start; devices isolated, keys distinct; table {TABLE} holds the remote subnets; \
         {pairs}/{pairs} pod pairs answered 5/5 pings; {mib} MiB pod-a -> pod-b sha256 match ({rate:.1} MB/s)",
        n = topo.clusters.len(),
        c = topo.clusters.len() - 1,
        mib = TRANSFER_BYTES / (1024 * 1024),
    ))
}

/// 1b. Dual-stack over the IPv4 underlay: each gateway routes the remote /48s through the
///     device from its IPv6 health-check IP, looks table 150 up for IPv6 too and gives every
///     peer both subnets of its cluster; pods ping each other over IPv6 and a checksummed TCP
///     transfer over IPv6 passes through the tunnel.
fn ipv6(topo: &mut Topology) -> Result<String> {
    ensure_mesh(topo)?;
    let n = topo.clusters.len();
    let keys: Vec<String> = (0..n)
        .map(|i| state::public_key(topo, i))
        .collect::<Result<_>>()?;
    let mut peers_checked = 0;
    let mut priorities6 = Vec::new();
    for i in 0..n {
        let id = topo.clusters[i].id.clone();
        for family in Family::ALL {
            let src = topo.clusters[i].health_check_addr(family).to_string();
            let mut routes = state::route_entries(topo, i, family)?;
            routes.sort_by(|a, b| a.dst.cmp(&b.dst));
            let dsts: Vec<String> = routes.iter().map(|r| r.dst.clone()).collect();
            let want = remote_subnets_of(topo, i, family);
            ensure!(
                dsts == want,
                "gateway {id}: {} routes of table {TABLE} are {dsts:?}, expected {want:?}",
                family.name()
            );
            for r in &routes {
                ensure!(
                    r.dev.as_deref() == Some(DEVICE) && r.prefsrc.as_deref() == Some(src.as_str()),
                    "gateway {id}: route {} is dev {:?} src {:?}, expected dev {DEVICE} src {src}",
                    r.dst,
                    r.dev,
                    r.prefsrc
                );
            }
            // The source of a family's routes must be an address of the device, or the kernel
            // would not use it.
            let host_len = match family {
                Family::V4 => 32,
                Family::V6 => 128,
            };
            let addrs = state::device_addrs(topo, i, family)?;
            ensure!(
                addrs.contains(&format!("{src}/{host_len}")),
                "gateway {id}: {DEVICE} has {} addresses {addrs:?}, not {src}/{host_len}",
                family.name()
            );
        }
        let rules4 = state::rules_of(topo, i, Family::V4)?;
        let rules6 = state::rules_of(topo, i, Family::V6)?;
        ensure!(
            !rules6.is_empty(),
            "gateway {id} has no IPv6 rule looking up table {TABLE}"
        );
        ensure!(
            rules6 == rules4,
            "gateway {id}: IPv6 rules for table {TABLE} at priorities {rules6:?}, IPv4 ones at {rules4:?}"
        );
        priorities6 = rules6;
        let peers = state::peers(topo, i)?;
        ensure!(
            peers.len() == n - 1,
            "gateway {id} has {} peers",
            peers.len()
        );
        for p in &peers {
            let j = keys
                .iter()
                .position(|k| *k == p.public_key)
                .with_context(|| format!("gateway {id} has a peer of no cluster"))?;
            let mut got = p.allowed_ips.clone();
            got.sort();
            let mut want = topo.clusters[j].subnets();
            want.sort();
            ensure!(
                got == want,
                "gateway {id}'s peer for {} allows {got:?}, expected {want:?}",
                topo.clusters[j].id
            );
            peers_checked += 1;
        }
    }

    // Neighbour discovery on the pod links happens on the first packets: wait for one answer
    // per pair before counting losses.
    let start = Instant::now();
    for from in 0..n {
        for to in (0..n).filter(|&to| to != from) {
            wait_ping_of(topo, from, to, Family::V6, WAIT)?;
        }
    }
    let answered = secs(start.elapsed());
    let pairs = ping_all_pairs(topo, 5, Family::V6)?;

    // The transfer must go through the sender's peer for the receiver: its transmit counter grows by at least the
    // payload (plus IPv6, TCP and WireGuard headers).
    let (from, to) = (0, n - 1);
    let tx_to = |topo: &Topology| -> Result<u64> {
        let key = &keys[to];
        state::peers(topo, from)?
            .iter()
            .find(|p| p.public_key == *key)
            .map(|p| p.tx)
            .with_context(|| {
                format!(
                    "gateway {} has no peer for {}",
                    topo.clusters[from].id, topo.clusters[to].id
                )
            })
    };
    let tx_before = tx_to(topo)?;
    let rate = transfer(topo, from, to, Family::V6, TRANSFER_BYTES)?;
    let tunnel_tx = tx_to(topo)?.saturating_sub(tx_before);
    let (a, c) = (&topo.clusters[from], &topo.clusters[to]);
    ensure!(
        tunnel_tx >= TRANSFER_BYTES,
        "the IPv6 transfer passed but {}'s peer for {} sent only {tunnel_tx} bytes: it did not go through the tunnel",
        a.id,
        c.id
    );
    Ok(format!(
        "{n}/{n} gateways route the remote /48s in table {TABLE} dev {DEVICE} src their IPv6 health-check IP \
         (e.g. {a_id}: {a6} -> {remote6:?}; IPv4 routes src {a4}), IPv6 rule priority {priorities6:?} lookup \
         {TABLE}; {peers_checked}/{peers_checked} peers allow both families; all {pairs} pod pairs answered over \
         IPv6 within {answered:.2}s, then 5/5 pings each; {mib} MiB pod-{a_id} [{a_pod}] -> pod-{c_id} [{c_pod}] \
         over IPv6 sha256 match ({rate:.1} MB/s, {a_id}'s peer for {c_id} tx +{tunnel_tx} bytes)",
        a_id = a.id,
        c_id = c.id,
        a6 = a.health_check_ip6,
        a4 = a.health_check_ip,
        remote6 = remote_subnets_of(topo, from, Family::V6),
        a_pod = a.pod_ip6,
        c_pod = c.pod_ip6,
        mib = TRANSFER_BYTES / (1024 * 1024),
    ))
}

/// 2. `/metrics` shows connected series, non-zero bytes and established timestamps for every
///    remote; `/connections` and `wgcable show connections` agree.
fn metrics(topo: &mut Topology) -> Result<String> {
    ensure_mesh(topo)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("clock before 1970")?
        .as_secs_f64();
    let mut example = String::new();
    for i in 0..topo.clusters.len() {
        let id = topo.clusters[i].id.clone();
        let remotes: Vec<String> = topo.remotes(i).iter().map(|s| s.to_string()).collect();
        // Byte counters are refreshed at each status interval: poll until they show.
        let found = poll(
            &format!("gateway {id} metrics for {remotes:?}"),
            Duration::from_secs(15),
            || {
                let samples = state::metrics(topo, i)?;
                let mut found = Vec::new();
                for r in &remotes {
                    let connected = samples.iter().any(|s| {
                        s.name == "submariner_connections"
                            && s.label("remote_cluster") == Some(r)
                            && s.label("status") == Some("connected")
                            && s.value == 1.0
                    });
                    ensure!(connected, "no submariner_connections{{remote_cluster=\"{r}\",status=\"connected\"}} 1");
                    let rx = find(&samples, "submariner_gateway_rx_bytes", r)
                        .context("no rx_bytes series")?
                        .value;
                    let tx = find(&samples, "submariner_gateway_tx_bytes", r)
                        .context("no tx_bytes series")?
                        .value;
                    ensure!(
                        rx > 0.0 && tx > 0.0,
                        "remote {r}: rx_bytes {rx}, tx_bytes {tx}"
                    );
                    let ts = find(&samples, "submariner_connection_established_timestamp", r)
                        .context("no established_timestamp series")?
                        .value;
                    ensure!(
                        ts > now - 3600.0 && ts <= now + 60.0,
                        "remote {r}: established timestamp {ts} is not within the last hour"
                    );
                    // The health check pings the remote gateway through the tunnel every
                    // second; its RTT is Submariner's latency metric.
                    let latency = find(&samples, "submariner_connection_latency_seconds", r)
                        .context("no connection_latency_seconds series (health check)")?
                        .value;
                    ensure!(
                        latency > 0.0 && latency < 1.0,
                        "remote {r}: latency {latency}s is not a plausible tunnel RTT"
                    );
                    found.push((r.clone(), rx, tx, now - ts, latency));
                }
                Ok(found)
            },
        )?;
        if example.is_empty() {
            if let Some((r, rx, tx, age, latency)) = found.first() {
                example = format!(
                    "e.g. {id}->{r} rx={rx} tx={tx} bytes, established {age:.0}s ago, latency {:.3}ms",
                    latency * 1000.0
                );
            }
        }
        let http = state::connections(topo, i)?;
        let shown = state::parse_connections(&read(&mut topo.gw(
            i,
            &topo.gateway_bin,
            ["show", "connections", "--json"],
        ))?)?;
        ensure!(
            http == shown,
            "gateway {id}: /connections says {http:?} but `wgcable show connections --json` says {shown:?}"
        );
    }
    // The human form must work too (its layout is free, but it must name the remotes).
    let table = read(&mut topo.gw(0, &topo.gateway_bin, ["show", "connections"]))?;
    for r in topo.remotes(0) {
        ensure!(
            table.contains(r),
            "`wgcable show connections` does not mention cluster {r}:\n{table}"
        );
    }
    Ok(format!(
        "{n}/{n} gateways export status=\"connected\" 1, non-zero rx/tx bytes, a fresh established timestamp and a latency \
         for both remotes ({example}); /connections == `wgcable show connections --json` on {n}/{n}",
        n = topo.clusters.len()
    ))
}

/// 3. Removing C's endpoint file removes C's peer, routes and metric series on A and B;
///    restoring it reconnects.
fn disconnect(topo: &mut Topology) -> Result<String> {
    ensure_mesh(topo)?;
    let c = 2;
    let c_id = topo.clusters[c].id.clone();
    let c_subnet = topo.clusters[c].subnet.clone();
    let c_subnet6 = topo.clusters[c].subnet6.clone();
    let file = topo.broker_dir.join(format!("{c_id}.yaml"));
    let content = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    let c_key = state::public_key(topo, c)?;
    // C's gateway would republish its own file; stop it first (its data path stays, as a
    // stopped gateway leaves it) so that only A and B's reaction to the file is measured.
    topo.stop_gateway(c)?;
    eprintln!("$ rm {}", file.display());
    match std::fs::remove_file(&file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).context("removing the file")
        }
        _ => {}
    }
    let removed_at = Instant::now();
    for i in 0..2 {
        let id = topo.clusters[i].id.clone();
        poll(
            &format!("gateway {id} to forget cluster {c_id}"),
            WAIT,
            || {
                let conns = state::connections(topo, i)?;
                ensure!(
                    conns.iter().all(|(r, _)| *r != c_id),
                    "connections still list {c_id}: {conns:?}"
                );
                let routes = state::routes(topo, i)?;
                ensure!(
                    !routes.contains(&c_subnet),
                    "table {TABLE} still routes {c_subnet}"
                );
                let routes6 = state::routes_of(topo, i, Family::V6)?;
                ensure!(
                    !routes6.contains(&c_subnet6),
                    "table {TABLE} still routes {c_subnet6}"
                );
                ensure!(
                    state::peers(topo, i)?.iter().all(|p| p.public_key != c_key),
                    "the device still has {c_id}'s peer"
                );
                let series: Vec<String> = state::metrics(topo, i)?
                    .into_iter()
                    .filter(|s| s.label("remote_cluster") == Some(c_id.as_str()))
                    .map(|s| s.name)
                    .collect();
                ensure!(
                    series.is_empty(),
                    "metric series for {c_id} remain: {series:?}"
                );
                Ok(())
            },
        )?;
    }
    let removed = secs(removed_at.elapsed());
    ensure!(
        !state::ping_once(topo, 0, &topo.clusters[c].pod_ip.to_string())?,
        "pod-a still reaches pod-{c_id} with {c_id}'s endpoint gone"
    );

    write_broker_file(&topo.broker_dir, &format!("{c_id}.yaml"), &content)?;
    let restored_at = Instant::now();
    for i in 0..2 {
        state::wait_connected(topo, i, &topo.remotes(i), WAIT)?;
    }
    for family in Family::ALL {
        wait_ping_of(topo, 0, c, family, WAIT)?;
        wait_ping_of(topo, 1, c, family, WAIT)?;
    }
    let reconnected = secs(restored_at.elapsed());
    topo.start_gateway(c)?;
    wait_mesh(topo, WAIT)?;
    Ok(format!(
        "without {c_id}.yaml, a and b dropped {c_id}'s peer, {c_subnet} and {c_subnet6} from table {TABLE}, its \
         connection and its metric series within {removed:.2}s (pod-a -> pod-{c_id} unreachable); restored: \
         connected and pinging again (IPv4 and IPv6) within {reconnected:.2}s"
    ))
}

/// 4. C restarts with a fresh state dir (a new key): A and B replace the peer and traffic
///    recovers.
fn key_change(topo: &mut Topology) -> Result<String> {
    ensure_mesh(topo)?;
    let c = 2;
    let c_id = topo.clusters[c].id.clone();
    let old_key = state::public_key(topo, c)?;
    topo.stop_gateway(c)?;
    let fresh = topo.run_dir.join(format!("state-{c_id}-fresh"));
    topo.clusters[c].state_dir = fresh;
    let start = Instant::now();
    topo.start_gateway(c)?;
    let new_key = poll(&format!("gateway {c_id} to take a new key"), WAIT, || {
        let key = state::public_key(topo, c)?;
        ensure!(key != old_key, "the device still has the old key");
        Ok(key)
    })?;
    for i in 0..2 {
        let id = topo.clusters[i].id.clone();
        let subnets = topo.clusters[c].subnets();
        poll(
            &format!("gateway {id} to replace {c_id}'s peer"),
            WAIT,
            || {
                let peers = state::peers(topo, i)?;
                ensure!(
                    peers.iter().all(|p| p.public_key != old_key),
                    "the old peer is still there"
                );
                ensure!(
                    peers.iter().any(|p| p.public_key == new_key
                        && subnets.iter().all(|s| p.allowed_ips.contains(s))),
                    "no peer with the new key and allowed-ips {subnets:?}"
                );
                Ok(())
            },
        )?;
    }
    let replaced = secs(start.elapsed());
    wait_ping(topo, 0, c, WAIT)?;
    wait_ping(topo, 1, c, WAIT)?;
    let recovered = secs(start.elapsed());
    wait_mesh(topo, WAIT)?;
    Ok(format!(
        "{c_id} came back with a new key; a and b replaced the peer {replaced:.2}s and pods reached pod-{c_id} again \
         {recovered:.2}s after the restart; all connected"
    ))
}

/// 5. Restarting A keeps its key and device; a 10/s ping across the restart loses at most
///    [`RESTART_LOSS_BOUND`] packets.
fn hitless_restart(topo: &mut Topology) -> Result<String> {
    ensure_mesh(topo)?;
    let key = state::public_key(topo, 0)?;
    let ifindex = state::device_ifindex(topo, 0)?;
    let dst = topo.clusters[1].pod_ip.to_string();

    let mut ping = spawn(
        topo.pod(0, "ping", ["-n", "-i", "0.1", "-W", "1", &dst])
            .stdin(Stdio::null())
            .stdout(Stdio::piped()),
    )?;
    let pid = Pid::from_raw(i32::try_from(ping.id()).context("pid out of range")?);
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = Arc::clone(&lines);
        let stdout = ping.stdout.take().context("ping stdout")?;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines
                    .lock()
                    .expect("no panics while holding the lock")
                    .push(line);
            }
        })
    };
    let replies = || {
        lines
            .lock()
            .expect("no panics while holding the lock")
            .iter()
            .filter(|l| l.contains("bytes from"))
            .count()
    };
    let result = (|| -> Result<(Duration, Duration)> {
        poll("10 ping replies before the restart", WAIT, || {
            ensure!(replies() >= 10, "{} replies so far", replies());
            Ok(())
        })?;
        let stop = topo.stop_gateway(0)?;
        let restart_at = Instant::now();
        topo.start_gateway(0)?;
        state::wait_connected(topo, 0, &topo.remotes(0), WAIT)?;
        let connected = restart_at.elapsed();
        // Two more seconds of replies after the new process took over.
        let seen = replies();
        poll("20 more ping replies after the restart", WAIT, || {
            ensure!(
                replies() >= seen + 20,
                "{} replies so far",
                replies() - seen
            );
            Ok(())
        })?;
        Ok((stop, connected))
    })();
    eprintln!("$ kill -INT {pid}   # ping");
    let _ = kill(pid, Signal::SIGINT);
    let _ = ping.wait();
    let _ = reader.join();
    let (stop, connected) = result?;
    let text = lines
        .lock()
        .expect("no panics while holding the lock")
        .join("\n");
    let (sent, received) = state::parse_ping(&text)?;
    let lost = sent.saturating_sub(received);

    let key_after = state::public_key(topo, 0)?;
    let ifindex_after = state::device_ifindex(topo, 0)?;
    ensure!(key_after == key, "the restart changed a's public key");
    ensure!(
        ifindex_after == ifindex,
        "the restart replaced the device (ifindex {ifindex} -> {ifindex_after})"
    );
    ensure!(
        lost <= RESTART_LOSS_BOUND,
        "{lost} of {sent} pings lost across the restart (bound {RESTART_LOSS_BOUND})"
    );
    Ok(format!(
        "pod-a -> pod-b ping at 10/s across a restart of gateway a (stopped in {:.2}s, connected again {:.2}s after \
         the new start): {sent} sent, {received} received, {lost} lost (bound {RESTART_LOSS_BOUND}); key and device \
         (ifindex {ifindex}) kept",
        secs(stop),
        secs(connected)
    ))
}

/// 6. Routes and rules of both families and a peer deleted by hand on A come back within one
///    resync period.
fn drift_repair(topo: &mut Topology) -> Result<String> {
    ensure_mesh(topo)?;
    // One period plus the time to notice (poll step) and carry the repair out.
    let bound = RESYNC + Duration::from_secs(1);
    let table = TABLE.to_string();
    let expected: Vec<(Family, Vec<String>)> = Family::ALL
        .iter()
        .map(|&f| (f, remote_subnets_of(topo, 0, f)))
        .collect();

    // Both families' routes go at once: one resync must bring back both.
    for family in Family::ALL {
        cmd::run(&mut topo.ip(0, [family.flag(), "route", "flush", "table", &table]))?;
    }
    let start = Instant::now();
    poll(
        "a's table 150 routes (IPv4 and IPv6) to come back",
        WAIT,
        || {
            for (family, want) in &expected {
                let mut routes = state::routes_of(topo, 0, *family)?;
                routes.sort();
                ensure!(routes == *want, "{} routes {routes:?}", family.name());
            }
            Ok(())
        },
    )?;
    let routes_back = start.elapsed();

    let mut deleted = Vec::new();
    for family in Family::ALL {
        let priorities = state::rules_of(topo, 0, family)?;
        ensure!(
            !priorities.is_empty(),
            "a has no {} rule for table {TABLE} to delete",
            family.name()
        );
        for p in &priorities {
            cmd::run(&mut topo.ip(
                0,
                [
                    family.flag(),
                    "rule",
                    "del",
                    "priority",
                    &p.to_string(),
                    "table",
                    &table,
                ],
            ))?;
        }
        deleted.push((family, priorities.len()));
    }
    let start = Instant::now();
    poll("a's rules (IPv4 and IPv6) to come back", WAIT, || {
        for (family, count) in &deleted {
            let now = state::rules_of(topo, 0, *family)?;
            ensure!(now.len() >= *count, "{} rules {now:?}", family.name());
        }
        Ok(())
    })?;
    let rule_back = start.elapsed();

    let b_key = state::public_key(topo, 1)?;
    let b_subnets = topo.clusters[1].subnets();
    cmd::run(&mut topo.gw(0, "wg", ["set", DEVICE, "peer", &b_key, "remove"]))?;
    let start = Instant::now();
    poll("a's peer for b to come back", WAIT, || {
        let peers = state::peers(topo, 0)?;
        ensure!(
            peers
                .iter()
                .any(|p| p.public_key == b_key
                    && b_subnets.iter().all(|s| p.allowed_ips.contains(s))),
            "no peer for b allowing {b_subnets:?}"
        );
        Ok(())
    })?;
    let peer_back = start.elapsed();
    let ping_back = wait_ping(topo, 0, 1, WAIT)?;
    let ping6_back = wait_ping_of(topo, 0, 1, Family::V6, WAIT)?;

    let measured = format!(
        "IPv4+IPv6 routes back after {:.2}s, IPv4+IPv6 rules after {:.2}s, b's peer after {:.2}s (pod-a -> pod-b \
         ping {:.2}s later, over IPv6 {:.2}s); resync period {}s",
        secs(routes_back),
        secs(rule_back),
        secs(peer_back),
        secs(ping_back),
        secs(ping6_back),
        RESYNC.as_secs()
    );
    for (what, took) in [
        ("routes", routes_back),
        ("rule", rule_back),
        ("peer", peer_back),
    ] {
        ensure!(
            took <= bound,
            "{what} took longer than one resync period: {measured}"
        );
    }
    Ok(measured)
}

/// 7. A malformed file, an invalid key and a hostile overlap are rejected with log lines; no
///    route or peer results and traffic keeps flowing.
fn bad_input(topo: &mut Topology) -> Result<String> {
    ensure_mesh(topo)?;
    let evil_key = {
        let private = read(&mut cmd("wg", ["genkey"]))?;
        let mut child = std::process::Command::new("wg")
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting `wg pubkey`")?;
        eprintln!("$ wg pubkey   # of a fresh key for the hostile endpoint");
        std::io::Write::write_all(
            &mut child.stdin.take().context("wg stdin")?,
            private.as_bytes(),
        )?;
        let mut key = String::new();
        child
            .stdout
            .take()
            .context("wg stdout")?
            .read_to_string(&mut key)?;
        ensure!(child.wait()?.success(), "`wg pubkey` failed");
        key.trim().to_string()
    };
    let a_subnet = topo.clusters[0].subnet.clone();
    let files = [
        (
            "bad-malformed.yaml",
            "bad-malformed".to_string(),
            "apiVersion: submariner.io/v1\nkind: Endpoint\nspec: [this is: {not an endpoint\n"
                .to_string(),
        ),
        (
            "bad-key.yaml",
            "badkey".to_string(),
            endpoint_yaml(
                "badkey",
                "10.250.0.0/16",
                "192.168.77.98",
                "not-a-wireguard-key",
            ),
        ),
        (
            "bad-overlap.yaml",
            "evil".to_string(),
            endpoint_yaml("evil", &a_subnet, "192.168.77.99", &evil_key),
        ),
    ];
    let offsets: Vec<u64> = (0..topo.clusters.len()).map(|i| topo.log_len(i)).collect();
    let start = Instant::now();
    for (name, _, content) in &files {
        write_broker_file(&topo.broker_dir, name, content.as_bytes())?;
    }
    let result = (|| -> Result<String> {
        // A must name all three; B and C the two that are broken for everyone (the overlap
        // is A's business, and B and C are checked by state below).
        for (i, &offset) in offsets.iter().enumerate() {
            let id = topo.clusters[i].id.clone();
            let needed: Vec<&(&str, String, String)> = files
                .iter()
                .filter(|(name, _, _)| i == 0 || *name != "bad-overlap.yaml")
                .collect();
            poll(
                &format!("gateway {id} to log the rejections"),
                Duration::from_secs(15),
                || {
                    let log = topo.log_since(i, offset);
                    let missing: Vec<&str> = needed
                        .iter()
                        .filter(|(name, cluster, _)| !mentions(&log, name, cluster))
                        .map(|(name, _, _)| *name)
                        .collect();
                    ensure!(missing.is_empty(), "no log line about {missing:?}");
                    Ok(())
                },
            )?;
        }
        let logged = secs(start.elapsed());
        let a_key = state::public_key(topo, 0)?;
        for i in 0..topo.clusters.len() {
            let id = &topo.clusters[i].id;
            let routes = state::routes(topo, i)?;
            ensure!(
                !routes.iter().any(|r| r == "10.250.0.0/16"),
                "gateway {id} routes the bad-key subnet"
            );
            if i == 0 {
                ensure!(
                    !routes.contains(&a_subnet),
                    "gateway a routes its own subnet {a_subnet} into the tunnel"
                );
            }
            let peers = state::peers(topo, i)?;
            ensure!(
                peers.len() == topo.clusters.len() - 1,
                "gateway {id} has {} peers",
                peers.len()
            );
            ensure!(
                peers.iter().all(|p| p.public_key != evil_key),
                "gateway {id} added the hostile peer"
            );
            if i != 0 {
                let owner = peers.iter().find(|p| p.allowed_ips.contains(&a_subnet));
                ensure!(
                    owner.is_some_and(|p| p.public_key == a_key),
                    "gateway {id} no longer sends {a_subnet} to a's peer"
                );
            }
        }
        let pairs = ping_all_pairs(topo, 5, Family::V4)?;
        // The real remotes stay connected. A refused endpoint may be listed (as an error that
        // says why, which helps an operator) but never as connected.
        let mut refused = Vec::new();
        for i in 0..topo.clusters.len() {
            let id = &topo.clusters[i].id;
            let conns = state::connections(topo, i)?;
            for r in topo.remotes(i) {
                ensure!(
                    conns.iter().any(|(c, s)| c == r && s == "connected"),
                    "gateway {id} no longer reports {r} connected: {conns:?}"
                );
            }
            for (cluster, status) in conns
                .iter()
                .filter(|(c, _)| !topo.remotes(i).contains(&c.as_str()))
            {
                ensure!(
                    status != "connected",
                    "gateway {id} reports the refused {cluster} connected"
                );
                refused.push(format!("{cluster}={status} on {id}"));
            }
        }
        let listed = if refused.is_empty() {
            "not listed in /connections".to_string()
        } else {
            format!("listed as {}", refused.join(", "))
        };
        Ok(format!(
            "malformed, invalid-key and overlapping ({a_subnet}) endpoints rejected with log lines on all gateways \
             within {logged:.2}s; no route to 10.250.0.0/16, no hostile peer ({listed}), {a_subnet} still via a's \
             peer; {pairs}/{pairs} pod pairs answered 5/5 pings, remotes still connected"
        ))
    })();
    for (name, _, _) in &files {
        let _ = std::fs::remove_file(topo.broker_dir.join(name));
    }
    result
}

/// Whether a log mentions a file by name or its cluster id as a whole word.
fn mentions(log: &str, file: &str, cluster: &str) -> bool {
    log.contains(file)
        || log
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .any(|word| word == cluster)
}

/// An Endpoint custom resource as Submariner's broker holds it.
fn endpoint_yaml(cluster: &str, subnet: &str, ip: &str, key: &str) -> String {
    format!(
        "apiVersion: submariner.io/v1
kind: Endpoint
metadata:
  name: {cluster}-submariner-cable-{cluster}-{dashed}
spec:
  cluster_id: {cluster}
  cable_name: submariner-cable-{cluster}-{dashed}
  healthCheckIP: {health}
  hostname: gw-{cluster}
  subnets:
  - {subnet}
  private_ip: {ip}
  public_ip: \"\"
  nat_enabled: false
  backend: wireguard
  backend_config:
    publicKey: {key}
    udp-port: \"4500\"
",
        dashed = ip.replace('.', "-"),
        health = subnet
            .split('/')
            .next()
            .unwrap_or_default()
            .replace(".0.0", ".0.1"),
    )
}

/// 8. `wgcable cleanup` leaves no device, route, rule or userspace process.
fn cleanup(topo: &mut Topology) -> Result<String> {
    ensure_mesh(topo)?;
    for i in 0..topo.clusters.len() {
        topo.stop_gateway(i)?;
    }
    for i in 0..topo.clusters.len() {
        cmd::run(&mut topo.gw(i, &topo.gateway_bin, ["cleanup"]))?;
    }
    let start = Instant::now();
    for i in 0..topo.clusters.len() {
        let id = topo.clusters[i].id.clone();
        let ns = topo.clusters[i].gw_ns.clone();
        poll(
            &format!("gateway {id}'s data path to be gone"),
            Duration::from_secs(10),
            || {
                ensure!(
                    !state::links(topo, i)?.iter().any(|l| l == DEVICE),
                    "device {DEVICE} remains"
                );
                for family in Family::ALL {
                    let routes = state::routes_of(topo, i, family)?;
                    ensure!(
                        routes.is_empty(),
                        "table {TABLE} still holds {} routes {routes:?}",
                        family.name()
                    );
                    let rules = state::rules_of(topo, i, family)?;
                    ensure!(
                        rules.is_empty(),
                        "{} rules for table {TABLE} remain at priorities {rules:?}",
                        family.name()
                    );
                }
                let procs: Vec<(i32, String)> = state::processes_in_netns(&ns)
                    .into_iter()
                    .filter(|(_, comm)| comm.starts_with("wireguard"))
                    .collect();
                ensure!(
                    procs.is_empty(),
                    "userspace WireGuard processes remain: {procs:?}"
                );
                let sockets = read(&mut topo.gw(i, "ls", ["-A", "/run/wireguard"]))?;
                ensure!(
                    sockets.trim().is_empty(),
                    "/run/wireguard still holds {:?}",
                    sockets.trim()
                );
                Ok(())
            },
        )?;
    }
    let gone = secs(start.elapsed());
    for family in Family::ALL {
        let dst = topo.clusters[1].pod_addr(family).to_string();
        ensure!(
            !state::ping_once(topo, 0, &dst)?,
            "pod-a still reaches pod-b ({dst}) after cleanup"
        );
    }
    Ok(format!(
        "after `wgcable cleanup` in {n}/{n} gateways: no {DEVICE} device, no table {TABLE} route or rule of either \
         family, no wireguard-go process or socket (checked within {gone:.2}s); pod-a no longer reaches pod-b over \
         IPv4 or IPv6",
        n = topo.clusters.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_mentions_a_file_or_a_cluster_as_a_word() {
        let log = "WARN cannot connect to endpoint cluster=evil error=endpoint evil refused\n";
        assert!(mentions(log, "bad-overlap.yaml", "evil"));
        assert!(mentions(
            "rejected file=/b/bad-key.yaml",
            "bad-key.yaml",
            "badkey"
        ));
        assert!(!mentions(
            "WARN cluster=evilish refused",
            "bad-overlap.yaml",
            "evil"
        ));
    }

    #[test]
    fn hostile_endpoint_yaml_names_its_cluster_subnet_and_key() {
        let y = endpoint_yaml("evil", "10.201.0.0/16", "192.168.77.99", "KEY=");
        assert!(y.contains("cluster_id: evil\n"));
        assert!(y.contains("  - 10.201.0.0/16\n"));
        assert!(y.contains("healthCheckIP: 10.201.0.1\n"));
        assert!(y.contains("publicKey: KEY=\n"));
        assert!(y.contains("cable_name: submariner-cable-evil-192-168-77-99\n"));
    }
}
