//! `cargo xtask demo [--clusters 2|3] [--broker file|etcd]`: the main job for a newcomer.
//! Builds the e2e topology (with `--broker etcd`, also a 3-member etcd cluster on a network of
//! its own that every gateway reaches through a link `etcd0`), starts the gateways, waits until
//! they are connected, shows `wgcable show connections` from
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

const USAGE: &str = "usage: cargo xtask demo [--clusters 2|3] [--broker file|etcd]";

pub fn run(args: &[String]) -> Result<()> {
    if crate::wants_help(args) {
        println!("{USAGE}");
        return Ok(());
    }
    let mut clusters = 3;
    let mut etcd = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match (arg.as_str(), it.next().map(String::as_str)) {
            ("--clusters", Some(n @ ("2" | "3"))) => {
                clusters = n.parse().context("cluster count")?
            }
            ("--broker", Some("file")) => etcd = false,
            ("--broker", Some("etcd")) => etcd = true,
            _ => bail!("{USAGE}"),
        }
    }
    interrupt::install()?;
    topology::check_prerequisites()?;
    let gateway_bin = topology::build_gateway()?;
    let mut topo = Topology::build(Options {
        clusters,
        gateway_bin,
        gateway_args: vec!["--status-interval".into(), "1s".into()],
        keep: false,
    })?;
    if etcd {
        let mut opts = wgcable_etcd::testing::ClusterOptions::new();
        opts.prefix = format!("{}etcd-", topo.prefix);
        opts.net = [10, 99, 0];
        let mut cluster = wgcable_etcd::testing::EtcdCluster::start(opts)?;
        for c in &topo.clusters {
            cluster.attach(&c.gw_ns, "etcd0")?;
        }
        topo.broker_args = vec![
            "--broker".into(),
            "etcd".into(),
            "--etcd-endpoints".into(),
            cluster.client_urls().join(","),
        ];
        topo.etcd = Some(cluster);
    }
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
    if let Some(etcd) = &topo.etcd {
        println!(
            "etcd:         {} (members {}; data and logs in {})",
            show(&etcd.etcdctl(["get", "--prefix", "/wgcable/endpoints/", "--keys-only"])),
            etcd.members
                .iter()
                .map(|m| format!("{} in netns {}", m.name, m.netns))
                .collect::<Vec<_>>()
                .join(", "),
            etcd.dir().display()
        );
    }
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
