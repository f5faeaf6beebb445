//! Case 5: footprint: RSS and idle CPU of a real gateway at 0, 100 and 1,000 peers.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use super::*;
use crate::cmd::{self, poll};
use crate::interrupt;
use crate::state;
use crate::topology::Topology;

/// A standard base64 encoder: xtask links no crate that has one, and endpoint keys (here and
/// in the e2e scenarios) are the only use.
pub(crate) fn base64(bytes: &[u8]) -> String {
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

/// The public key of generated remote cluster `i`.
pub(super) fn endpoint_key(i: u32) -> String {
    use sha2::{Digest, Sha256};
    base64(&Sha256::digest(
        format!("wgcable bench cluster {i}").as_bytes(),
    ))
}

/// The Endpoint of generated remote cluster `i`: its own public key (32 bytes of SHA-256:
/// planning needs a well-formed key, not a point anyone holds the secret of), two /24s, and
/// an underlay address in [`FAKE_UNDERLAY`].
pub(super) fn endpoint_yaml(i: u32) -> String {
    let key = endpoint_key(i);
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

/// Whether `name` is the file of a generated cluster (`c<N>.yaml`).
pub(super) fn is_generated(name: &str) -> bool {
    name.strip_prefix('c')
        .and_then(|rest| rest.strip_suffix(".yaml"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Leaves exactly the files of generated clusters 0..n in `broker`. Each is named after its
/// cluster id: the file broker refuses a file whose name binds it to another cluster.
pub(super) fn write_endpoints(broker: &Path, n: u32) -> Result<()> {
    for entry in std::fs::read_dir(broker)? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|f| f.to_str())
            .is_some_and(is_generated)
        {
            std::fs::remove_file(&path)?;
        }
    }
    for i in 0..n {
        let path = broker.join(format!("c{i}.yaml"));
        std::fs::write(&path, endpoint_yaml(i))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The pid of the `comm` process in the gateway namespace of cluster `i`.
pub(super) fn pid_of(topo: &Topology, i: usize, comm: &str) -> Result<i32> {
    state::processes_in_netns(&topo.clusters[i].gw_ns)
        .into_iter()
        .find(|(_, c)| c == comm)
        .map(|(pid, _)| pid)
        .with_context(|| format!("no {comm} process in {}", topo.clusters[i].gw_ns))
}

/// VmRSS of a process, in MiB.
pub(super) fn rss_mib(pid: i32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vm_rss_kib(&status)
        .map(|kib| kib / 1024.0)
        .context("no VmRSS line")
}

pub(super) fn parse_vm_rss_kib(status: &str) -> Option<f64> {
    status_kib(status, "VmRSS:")
}

/// A `kB` field of `/proc/PID/status` (`VmRSS:`, `RssAnon:`, `RssFile:`...).
fn status_kib(status: &str, field: &str) -> Option<f64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// What the RSS is made of: "anon A MiB, file F MiB" (heap and stacks; mapped binary and
/// libraries), to tell a heap that grew from a binary that grew.
fn rss_parts(pid: i32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    match (
        status_kib(&status, "RssAnon:"),
        status_kib(&status, "RssFile:"),
    ) {
        (Some(anon), Some(file)) => {
            format!(
                "anon {:.1} MiB, file {:.1} MiB",
                anon / 1024.0,
                file / 1024.0
            )
        }
        _ => "parts unknown".to_string(),
    }
}

/// utime + stime of a process, in clock ticks (USER_HZ, 100 on Linux).
pub(super) fn cpu_ticks(pid: i32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat).context("malformed /proc/PID/stat")
}

pub(super) fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name may hold spaces and parentheses: fields are counted after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of the whole line, utime 14 and stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

pub(super) fn footprint(topo: &mut Topology, samples: &mut Samples) -> Result<()> {
    // The generated remote gateways sit behind a next hop that never answers.
    route_to_fake_underlay(topo, 0)?;
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
            "footprint with {n} peers: gateway RSS {rss:.1} MiB ({}; wireguard-go {wg_rss:.1} MiB); configured in {:.2} s",
            rss_parts(gw),
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
pub(super) fn wait(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        interrupt::check()?;
        std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
    }
    Ok(())
}
