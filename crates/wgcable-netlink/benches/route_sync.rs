//! Times `sync_routes` with 1,000 routes in a fresh network namespace of its own.
//!
//! Run with `cargo bench -p wgcable-netlink`. Needs root (to unshare the network
//! namespace); without it, prints why it skipped.

use std::net::IpAddr;
use std::time::Instant;

use ipnet::IpNet;
use nix::sched::{unshare, CloneFlags};
use wgcable_netlink::{sync_routes, LinkKind, Netlink, RouteSpec, RtNetlink};

const ROUTES: u32 = 1000;
const TABLE: u32 = 150;

fn specs(oif: u32, second_octet: u8) -> Vec<RouteSpec> {
    (0..ROUTES)
        .map(|i| RouteSpec {
            dst: IpNet::new(
                IpAddr::from([10, second_octet + (i / 256) as u8, (i % 256) as u8, 0]),
                24,
            )
            .expect("a /24 is a valid prefix"),
            oif,
            table: TABLE,
            pref_src: None,
        })
        .collect()
}

async fn run() {
    let (nl, conn) = RtNetlink::connect().expect("open rtnetlink");
    tokio::spawn(conn);
    // A veth end works on every kernel (some lack the dummy driver).
    let link = nl
        .link_add(
            "bench0",
            &LinkKind::Veth {
                peer: "bench0-p".to_owned(),
            },
        )
        .await
        .expect("create veth");
    nl.link_set_up(link.index, true).await.expect("set link up");

    let first = specs(link.index, 100);
    let second = specs(link.index, 200);
    for (what, desired) in [
        ("add 1000 routes", &first),
        ("resync, nothing to change", &first),
        ("replace all: add 1000 + delete 1000", &second),
        ("delete 1000 routes", &Vec::new()),
    ] {
        let start = Instant::now();
        let applied = sync_routes(&nl, TABLE, link.index, desired)
            .await
            .expect("sync");
        println!(
            "{what:<40} {:>8.2} ms  (added {}, deleted {})",
            start.elapsed().as_secs_f64() * 1000.0,
            applied.to_add.len(),
            applied.to_del.len()
        );
    }
}

fn main() {
    let outcome = std::thread::spawn(|| {
        if let Err(e) = unshare(CloneFlags::CLONE_NEWNET) {
            return Err(format!(
                "cannot create a network namespace ({e}): run as root"
            ));
        }
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build a runtime")
            .block_on(run());
        Ok(())
    })
    .join()
    .expect("the benchmark thread panicked");
    if let Err(why) = outcome {
        println!("skipped: route_sync: {why}");
    }
}
