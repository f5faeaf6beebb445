//! `cargo xtask e2e [--cleanup] [--keep] [--only NAME[,NAME...]] [--list]`: real gateways,
//! real WireGuard, real traffic in network namespaces (see `topology`). Each scenario is one
//! module here; each checks real state (kernel routes and rules of both families, the
//! WireGuard device, metrics text, pings and checksummed TCP transfers) and prints
//! `PASS name: what it measured` or `FAIL name: why`; the last line is `N passed, N failed`.
//!
//! Scenarios run in the order of [`SCENARIOS`] on one shared topology (three dual-stack
//! clusters over an IPv4 underlay). Each starts from `helpers::ensure_mesh` (every gateway
//! running, every connection connected), so any one of them can run alone with `--only`;
//! `full-mesh` is the exception, it starts the gateways itself, and when it is selected it
//! must pass for the others to run.
//!
//! To add a scenario: a module with `pub(super) fn run(&mut Topology) -> Result<String>`
//! (the string is what it measured) and a line in [`SCENARIOS`].

mod backend;
mod bad_input;
mod cleanup;
mod data_plane;
mod disconnect;
mod drift_repair;
mod etcd_common;
mod etcd_down;
mod etcd_hostile;
mod etcd_leader_kill;
mod etcd_mesh;
mod etcd_partition;
mod full_mesh;
mod helpers;
mod hitless_restart;
mod hostile_broker;
mod ipv6;
mod key_change;
mod metrics;
mod plan;
mod state_lock;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};

use helpers::*;

use crate::interrupt;
use crate::topology::{self, Options, Topology};

const USAGE: &str = "usage: cargo xtask e2e [--keep] [--only NAME[,NAME...]] [--list] [--backend B]
       cargo xtask e2e --cleanup
  --keep     leave the namespaces and gateways running at the end (for a look around)
  --backend  auto (default), kernel or userspace: passed to every gateway (`cargo xtask vm
             e2e` runs --backend kernel in a VM whose kernel has WireGuard)
  --only     run only these scenarios (see --list); they still share one topology
  --list     print the scenario names and exit
  --cleanup  remove leftovers of crashed e2e/demo runs (never while another run is going)";
/// Short enough that drift repair is quick to observe, long enough to be a real period.
pub(crate) const RESYNC: Duration = Duration::from_secs(2);
/// The gateways' --status-interval: how soon a dead data plane is noticed.
pub(crate) const STATUS: Duration = Duration::from_secs(1);
/// How long any one condition may take to become true.
pub(crate) const WAIT: Duration = Duration::from_secs(30);
/// The most pings (at 10/s) a gateway restart may lose.
pub(crate) const RESTART_LOSS_BOUND: u64 = 5;
pub(crate) const TRANSFER_BYTES: u64 = 4 * 1024 * 1024;
pub(crate) const TRANSFER_PORT: &str = "5201";

type Scenario = fn(&mut Topology) -> Result<String>;

/// Every scenario, in the order they run.
const SCENARIOS: &[(&str, Scenario)] = &[
    ("full-mesh", full_mesh::run),
    ("backend", backend::run),
    ("ipv6", ipv6::run),
    ("metrics", metrics::run),
    ("disconnect", disconnect::run),
    ("key-change", key_change::run),
    ("hitless-restart", hitless_restart::run),
    ("drift-repair", drift_repair::run),
    ("plan", plan::run),
    ("bad-input", bad_input::run),
    ("hostile-broker", hostile_broker::run),
    ("data-plane", data_plane::run),
    ("state-lock", state_lock::run),
    ("cleanup", cleanup::run),
    // The etcd broker: these switch the topology to a 3-member etcd cluster (see etcd_common).
    ("etcd-mesh", etcd_mesh::run),
    ("etcd-leader-kill", etcd_leader_kill::run),
    ("etcd-down", etcd_down::run),
    ("etcd-partition", etcd_partition::run),
    ("etcd-hostile", etcd_hostile::run),
];

pub fn run(args: &[String]) -> Result<()> {
    let mut keep = false;
    let mut only: Option<Vec<String>> = None;
    let mut backend = "auto".to_string();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--cleanup" => return topology::cleanup_leftovers(),
            "--keep" => keep = true,
            "--list" => {
                for (name, _) in SCENARIOS {
                    println!("{name}");
                }
                return Ok(());
            }
            "--only" => {
                let Some(list) = args.next() else {
                    bail!("--only needs a scenario name\n{USAGE}");
                };
                only = Some(list.split(',').map(str::to_string).collect());
            }
            "--backend" => match args.next().map(String::as_str) {
                Some(b @ ("auto" | "kernel" | "userspace")) => backend = b.to_string(),
                _ => bail!("--backend needs auto, kernel or userspace\n{USAGE}"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            _ => bail!("unknown argument {arg:?}\n{USAGE}"),
        }
    }
    let selected = select(only.as_deref())?;
    interrupt::install()?;
    let mut topo = match setup(keep, &backend) {
        Ok(topo) => topo,
        Err(e) => {
            println!("FAIL setup: {e:#}");
            println!("0 passed, {} failed", selected.len());
            bail!("e2e setup failed");
        }
    };

    let (mut passed, mut failed) = (0, 0);
    // Without full-mesh in the run, the first scenario brings the mesh up itself.
    let mut mesh_up = !selected.iter().any(|(n, _)| *n == "full-mesh");
    for &(name, scenario) in &selected {
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

/// The scenarios named in `only` (all when `None`), in their usual order.
fn select(only: Option<&[String]>) -> Result<Vec<(&'static str, Scenario)>> {
    let Some(only) = only else {
        return Ok(SCENARIOS.to_vec());
    };
    for name in only {
        ensure!(
            SCENARIOS.iter().any(|(n, _)| n == name),
            "unknown scenario {name:?}; `cargo xtask e2e --list` shows them"
        );
    }
    Ok(SCENARIOS
        .iter()
        .filter(|(n, _)| only.iter().any(|o| o == n))
        .copied()
        .collect())
}

fn setup(keep: bool, backend: &str) -> Result<Topology> {
    topology::check_prerequisites()?;
    ensure!(
        backend != "kernel" || topology::kernel_has_wireguard(),
        "--backend kernel needs a kernel with WireGuard (this one has none: `cargo xtask vm e2e` \
         runs the scenarios in a VM whose kernel has it)"
    );
    let gateway_bin = topology::build_gateway()?;
    let mut gateway_args: Vec<String> = vec![
        "--resync-interval".into(),
        format!("{}s", RESYNC.as_secs()),
        "--status-interval".into(),
        format!("{}s", STATUS.as_secs()),
        "-v".into(),
    ];
    gateway_args.extend(["--backend".to_string(), backend.to_string()]);
    Topology::build(Options {
        clusters: 3,
        gateway_bin,
        gateway_args,
        keep,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_selects_in_the_usual_order_and_refuses_unknown_names() {
        let only = ["cleanup".to_string(), "ipv6".to_string()];
        let names: Vec<&str> = select(Some(&only))
            .expect("known")
            .iter()
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(names, ["ipv6", "cleanup"]);
        let err = select(Some(&["nope".to_string()])).expect_err("unknown");
        assert!(err.to_string().contains("--list"), "{err}");
        assert_eq!(select(None).expect("all").len(), SCENARIOS.len());
    }
}
