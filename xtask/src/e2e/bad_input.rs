//! 7. A malformed file, an invalid key and a hostile overlap are rejected with log lines; no
//!    route or peer results and traffic keeps flowing.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use super::*;
use crate::cmd::poll;
use crate::state::{self};
use crate::topology::{Family, Topology};

pub(super) fn run(topo: &mut Topology) -> Result<String> {
    ensure_mesh(topo)?;
    let evil_key = fresh_public_key()?;
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
pub(super) fn endpoint_yaml(cluster: &str, subnet: &str, ip: &str, key: &str) -> String {
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
