//! `cargo xtask demo [--clusters 2|3]`: the main job for a newcomer. Builds the e2e topology,
//! starts the gateways, waits until they are connected, shows `wgcable show connections` from
//! each gateway and a cross-cluster ping from a pod, prints how to look around, and tears
//! everything down on Enter or Ctrl-C (at once when stdin is not a terminal: CI, pipes).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cmd::{self, show};
use crate::interrupt;
use crate::state;
use crate::topology::{self, Options, Topology, DEVICE, METRICS_URL, TABLE};

const USAGE: &str = "usage: cargo xtask demo [--clusters 2|3]";

pub fn run(args: &[String]) -> Result<()> {
    if crate::wants_help(args) {
        println!("{USAGE}");
        return Ok(());
    }
    let clusters = match args {
        [] => 3,
        [flag, n] if flag == "--clusters" && (n == "2" || n == "3") => {
            n.parse().context("cluster count")?
        }
        _ => bail!("{USAGE}"),
    };
    interrupt::install()?;
    topology::check_prerequisites()?;
    let gateway_bin = topology::build_gateway()?;
    let mut topo = Topology::build(Options {
        clusters,
        gateway_bin,
        gateway_args: vec!["--status-interval".into(), "1s".into()],
        keep: false,
    })?;
    for i in 0..topo.clusters.len() {
        topo.start_gateway(i)?;
    }
    let waited = (0..topo.clusters.len()).try_for_each(|i| {
        state::wait_connected(&topo, i, &topo.remotes(i), Duration::from_secs(60))
    });
    if let Err(e) = waited {
        topo.print_log_tails(25);
        return Err(e);
    }
    for i in 0..topo.clusters.len() {
        println!(
            "\n==== cluster {}: wgcable show connections ====",
            topo.clusters[i].id
        );
        cmd::run(&mut topo.gw(i, &topo.gateway_bin, ["show", "connections"]))?;
    }
    println!("\n==== a ping from pod-a (cluster a) to pod-b (cluster b) ====");
    let dst = topo.clusters[1].pod_ip.to_string();
    cmd::run(&mut topo.pod(0, "ping", ["-c", "3", "-i", "0.2", &dst]))?;
    print_look_around(&topo)?;

    if std::io::stdin().is_terminal() {
        println!("\nPress Enter (or Ctrl-C) to tear everything down.");
        let enter = Arc::new(AtomicBool::new(false));
        {
            let enter = Arc::clone(&enter);
            std::thread::spawn(move || {
                let _ = std::io::stdin().read_line(&mut String::new());
                enter.store(true, Ordering::SeqCst);
            });
        }
        while !enter.load(Ordering::SeqCst) && !interrupt::interrupted() {
            std::thread::sleep(Duration::from_millis(100));
        }
    } else {
        println!("\nstdin is not a terminal: tearing down now.");
    }
    drop(topo);
    println!("demo: everything removed.");
    Ok(())
}

fn print_look_around(topo: &Topology) -> Result<()> {
    let exe = topology::xtask_exe()?;
    let get = |i: usize, path: &str| {
        let url = format!("{METRICS_URL}{path}");
        let ns = topo.clusters[i].gw_ns.as_str();
        if cmd::exists("curl") {
            show(&cmd::cmd("ip", ["netns", "exec", ns, "curl", "-s", &url]))
        } else {
            show(&cmd::cmd(
                "ip",
                [
                    "netns",
                    "exec",
                    ns,
                    &exe.to_string_lossy(),
                    "internal",
                    "http-get",
                    &url,
                ],
            ))
        }
    };
    println!("\n==== look around (as root, in another terminal, while this waits) ====");
    println!("namespaces:   ip netns list | grep {}", topo.prefix);
    for (i, c) in topo.clusters.iter().enumerate() {
        println!(
            "cluster {}: subnets {} and {}, gateway netns {} (underlay {}), pod netns {} (pod {} and {}), log {}",
            c.id,
            c.subnet,
            c.subnet6,
            c.gw_ns,
            c.underlay_ip,
            c.pod_ns,
            c.pod_ip,
            c.pod_ip6,
            c.log.display()
        );
        println!("  metrics:     {}", get(i, "/metrics"));
        println!(
            "  connections: {}",
            show(&topo.gw(i, &topo.gateway_bin, ["show", "connections"]))
        );
        println!(
            "  wireguard:   {}",
            show(&topo.gw(i, "wg", ["show", DEVICE]))
        );
        println!(
            "  routes:      {}; {}; {}",
            show(&topo.ip(i, ["route", "show", "table", &TABLE.to_string()])),
            show(&topo.ip(i, ["-6", "route", "show", "table", &TABLE.to_string()])),
            show(&topo.ip(i, ["rule"]))
        );
        let to = (i + 1) % topo.clusters.len();
        println!("  ping:        {}", state::ping_hint(topo, i, to));
        println!(
            "  ping (IPv6): {}",
            show(&topo.pod(
                i,
                "ping",
                ["-c", "3", &topo.clusters[to].pod_ip6.to_string()]
            ))
        );
    }
    println!(
        "(the gateways run in private mount namespaces: reach them with the nsenter lines above)"
    );
    Ok(())
}
