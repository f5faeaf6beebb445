//! Reading real state: kernel routes and rules (`ip -j`), the WireGuard device (`wg show
//! dump`), the gateway's HTTP endpoints, and ping statistics. The parsers are pure and tested;
//! the probes run them against one cluster of a [`Topology`].

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::cmd::{output, read};
use crate::topology::{Family, Topology, DEVICE, METRICS_URL, TABLE};

/// One Prometheus sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

/// Parses the Prometheus text format (comments skipped, label values unescaped).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(parse_sample)
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (name, mut labels, rest) = match line.find('{') {
        Some(open) => {
            let (labels, rest) = parse_labels(&line[open + 1..])?;
            (&line[..open], labels, rest)
        }
        None => {
            let (name, rest) = line.split_once(char::is_whitespace)?;
            (name, BTreeMap::new(), rest)
        }
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    labels.retain(|k, _| !k.is_empty());
    Some(Sample {
        name: name.trim().to_string(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` and returns the labels and what follows the `}`.
fn parse_labels(s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut rest = s.trim_start();
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after) = rest.split_once('=')?;
        let mut chars = after.strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.trim().trim_start_matches(',').trim().to_string(), value);
        rest = after[1 + end + 1..]
            .trim_start()
            .trim_start_matches(',')
            .trim_start();
    }
}

/// One peer of `wg show DEVICE dump`.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    pub public_key: String,
    pub endpoint: String,
    pub allowed_ips: Vec<String>,
    pub latest_handshake: u64,
    pub rx: u64,
    pub tx: u64,
}

/// Parses `wg show DEVICE dump`. The first line (the interface: it holds the private key) is
/// skipped without being kept; so is each peer's pre-shared key.
pub fn parse_wg_dump(text: &str) -> Result<Vec<Peer>> {
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() < 8 {
                bail!(
                    "a peer line of `wg show dump` has {} fields, not 8",
                    f.len()
                );
            }
            let num = |i: usize| {
                f[i].parse::<u64>()
                    .with_context(|| format!("field {i} of a wg dump line"))
            };
            Ok(Peer {
                public_key: f[0].to_string(),
                endpoint: f[2].to_string(),
                allowed_ips: match f[3] {
                    "(none)" => Vec::new(),
                    ips => ips.split(',').map(str::to_string).collect(),
                },
                latest_handshake: num(4)?,
                rx: num(5)?,
                tx: num(6)?,
            })
        })
        .collect()
}

/// One route of `ip -j route show`: where to, through which link, from which source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: String,
    pub dev: Option<String>,
    /// `src` of the route (iproute2 calls it `prefsrc`).
    pub prefsrc: Option<String>,
}

/// The routes of `ip -j route show table N`, with their link and source.
pub fn parse_route_entries(json: &str) -> Result<Vec<Route>> {
    let routes: Vec<Value> = serde_json::from_str(json).context("parsing `ip -j route` output")?;
    let text = |r: &Value, key: &str| r.get(key).and_then(Value::as_str).map(str::to_string);
    Ok(routes
        .iter()
        .filter_map(|r| {
            Some(Route {
                dst: text(r, "dst")?,
                dev: text(r, "dev"),
                prefsrc: text(r, "prefsrc"),
            })
        })
        .collect())
}

/// The `local/prefixlen` addresses of `ip -j addr show dev X`.
pub fn parse_addrs(json: &str) -> Result<Vec<String>> {
    let links: Vec<Value> = serde_json::from_str(json).context("parsing `ip -j addr` output")?;
    Ok(links
        .iter()
        .filter_map(|l| l.get("addr_info").and_then(Value::as_array))
        .flatten()
        .filter_map(|a| {
            let local = a.get("local").and_then(Value::as_str)?;
            let len = a.get("prefixlen").and_then(Value::as_u64)?;
            Some(format!("{local}/{len}"))
        })
        .collect())
}

/// The priorities of the rules of `ip -j rule show` that look up `table`.
pub fn parse_rules(json: &str, table: u32) -> Result<Vec<u64>> {
    let rules: Vec<Value> = serde_json::from_str(json).context("parsing `ip -j rule` output")?;
    let table = table.to_string();
    Ok(rules
        .iter()
        .filter(|r| r.get("table").and_then(Value::as_str) == Some(table.as_str()))
        .filter_map(|r| r.get("priority").and_then(Value::as_u64))
        .collect())
}

/// (remote cluster_id, status) of each entry of a JSON array of Submariner Connections.
pub fn parse_connections(json: &str) -> Result<Vec<(String, String)>> {
    let conns: Vec<Value> =
        serde_json::from_str(json).context("parsing a JSON array of Connections")?;
    let mut out: Vec<(String, String)> = conns
        .iter()
        .map(|c| {
            let cluster = c
                .pointer("/endpoint/cluster_id")
                .and_then(Value::as_str)
                .context("a Connection without endpoint.cluster_id")?;
            let status = c
                .get("status")
                .and_then(Value::as_str)
                .context("a Connection without status")?;
            Ok((cluster.to_string(), status.to_string()))
        })
        .collect::<Result<_>>()?;
    out.sort();
    Ok(out)
}

/// (transmitted, received) from ping's summary line.
pub fn parse_ping(text: &str) -> Result<(u64, u64)> {
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .context("ping printed no summary line")?;
    let mut nums = line.split(',').map(|part| {
        part.split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .with_context(|| format!("bad ping summary {line:?}"))
    });
    let sent = nums.next().context("no count")??;
    let received = nums.next().context("no count")??;
    Ok((sent, received))
}

// Probes of one cluster's real state.

/// IPv4 destinations in the gateway's route table 150; an absent table is an empty one.
pub fn routes(topo: &Topology, i: usize) -> Result<Vec<String>> {
    routes_of(topo, i, Family::V4)
}

/// Destinations of `family` in the gateway's route table 150.
pub fn routes_of(topo: &Topology, i: usize, family: Family) -> Result<Vec<String>> {
    Ok(route_entries(topo, i, family)?
        .into_iter()
        .map(|r| r.dst)
        .collect())
}

/// The routes of `family` in the gateway's route table 150, with link and source.
pub fn route_entries(topo: &Topology, i: usize, family: Family) -> Result<Vec<Route>> {
    let table = TABLE.to_string();
    let out = output(&mut topo.ip(i, [family.flag(), "-j", "route", "show", "table", &table]))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if stderr.contains("does not exist") {
            return Ok(Vec::new());
        }
        bail!(
            "listing {} routes of table {TABLE} in {}: {}",
            family.name(),
            topo.clusters[i].gw_ns,
            stderr.trim()
        );
    }
    // An empty IPv6 dump prints nothing at all rather than `[]`.
    let stdout = String::from_utf8_lossy(&out.stdout);
    if stdout.trim().is_empty() {
        return Ok(Vec::new());
    }
    parse_route_entries(&stdout)
}

/// Priorities of the gateway's IPv4 rules that look up table 150.
pub fn rules(topo: &Topology, i: usize) -> Result<Vec<u64>> {
    rules_of(topo, i, Family::V4)
}

/// Priorities of the gateway's rules of `family` that look up table 150.
pub fn rules_of(topo: &Topology, i: usize, family: Family) -> Result<Vec<u64>> {
    parse_rules(
        &read(&mut topo.ip(i, [family.flag(), "-j", "rule", "show"]))?,
        TABLE,
    )
}

/// The addresses of `family` on the gateway's WireGuard device.
pub fn device_addrs(topo: &Topology, i: usize, family: Family) -> Result<Vec<String>> {
    parse_addrs(&read(
        &mut topo.ip(i, [family.flag(), "-j", "addr", "show", "dev", DEVICE]),
    )?)
}

/// Names of the links in the gateway namespace.
pub fn links(topo: &Topology, i: usize) -> Result<Vec<String>> {
    let json = read(&mut topo.ip(i, ["-j", "link", "show"]))?;
    let links: Vec<Value> = serde_json::from_str(&json).context("parsing `ip -j link` output")?;
    Ok(links
        .iter()
        .filter_map(|l| l.get("ifname").and_then(Value::as_str))
        .map(str::to_string)
        .collect())
}

/// The ifindex of the WireGuard device.
pub fn device_ifindex(topo: &Topology, i: usize) -> Result<u64> {
    let json = read(&mut topo.ip(i, ["-j", "link", "show", DEVICE]))?;
    let links: Vec<Value> = serde_json::from_str(&json).context("parsing `ip -j link` output")?;
    links
        .first()
        .and_then(|l| l.get("ifindex"))
        .and_then(Value::as_u64)
        .with_context(|| format!("no ifindex for {DEVICE}"))
}

/// The peers of the gateway's WireGuard device.
pub fn peers(topo: &Topology, i: usize) -> Result<Vec<Peer>> {
    parse_wg_dump(&read(&mut topo.gw(i, "wg", ["show", DEVICE, "dump"]))?)
}

/// The public key of the gateway's WireGuard device.
pub fn public_key(topo: &Topology, i: usize) -> Result<String> {
    let key = read(&mut topo.gw(i, "wg", ["show", DEVICE, "public-key"]))?;
    Ok(key.trim().to_string())
}

/// GETs a path of the gateway's HTTP server from inside its namespace.
pub fn http(topo: &Topology, i: usize, path: &str) -> Result<String> {
    let url = format!("{METRICS_URL}{path}");
    read(&mut topo.gw(
        i,
        crate::topology::xtask_exe()?,
        ["internal", "http-get", &url],
    ))
}

pub fn metrics(topo: &Topology, i: usize) -> Result<Vec<Sample>> {
    Ok(parse_metrics(&http(topo, i, "/metrics")?))
}

pub fn connections(topo: &Topology, i: usize) -> Result<Vec<(String, String)>> {
    parse_connections(&http(topo, i, "/connections")?)
}

/// Waits until cluster `i` reports every other cluster in `remotes` connected, and no other.
pub fn wait_connected(
    topo: &Topology,
    i: usize,
    remotes: &[&str],
    timeout: Duration,
) -> Result<()> {
    let want: Vec<(String, String)> = remotes
        .iter()
        .map(|r| (r.to_string(), "connected".to_string()))
        .collect();
    let id = topo.clusters[i].id.clone();
    crate::cmd::poll(
        &format!("gateway {id} to report {remotes:?} connected"),
        timeout,
        || {
            let got = connections(topo, i)?;
            if got != want {
                bail!("gateway {id} reports {got:?}");
            }
            Ok(())
        },
    )
}

/// One ping from pod `from` to `dst` with a one-second wait; true if it was answered.
pub fn ping_once(topo: &Topology, from: usize, dst: &str) -> Result<bool> {
    Ok(
        output(&mut topo.pod(from, "ping", ["-n", "-q", "-c", "1", "-W", "1", dst]))?
            .status
            .success(),
    )
}

/// `count` pings 50 ms apart; returns (sent, received).
pub fn ping_many(topo: &Topology, from: usize, dst: &str, count: u32) -> Result<(u64, u64)> {
    let out = output(&mut topo.pod(
        from,
        "ping",
        [
            "-n",
            "-q",
            "-i",
            "0.05",
            "-W",
            "1",
            "-c",
            &count.to_string(),
            dst,
        ],
    ))?;
    parse_ping(&String::from_utf8_lossy(&out.stdout))
}

/// Processes whose network namespace is `ns` (by inode of /run/netns/NAME): (pid, comm).
pub fn processes_in_netns(ns: &str) -> Vec<(i32, String)> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(format!("/run/netns/{ns}")) else {
        return Vec::new();
    };
    let want = format!("net:[{}]", meta.ino());
    processes_where(|pid| {
        std::fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|l| l.to_string_lossy() == want)
    })
}

/// Processes whose mount namespace is `mnt` (as `readlink /proc/PID/ns/mnt` prints it).
pub fn processes_in_mntns(mnt: &str) -> Vec<(i32, String)> {
    processes_where(|pid| {
        std::fs::read_link(format!("/proc/{pid}/ns/mnt")).is_ok_and(|l| l.to_string_lossy() == mnt)
    })
}

fn processes_where(pred: impl Fn(i32) -> bool) -> Vec<(i32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me && pred(pid))
        .map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            (pid, comm.trim().to_string())
        })
        .collect()
}

/// Whether a cluster's pod can reach another cluster's pod, as a printable command (for the
/// demo's "look around" hints and error messages).
pub fn ping_hint(topo: &Topology, from: usize, to: usize) -> String {
    crate::cmd::show(&topo.pod(
        from,
        "ping",
        ["-c", "3", &topo.clusters[to].pod_ip.to_string()],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_text_parses_labels_and_values() {
        let text = r#"# HELP submariner_connections Connections
# TYPE submariner_connections gauge
submariner_connections{cable_driver="wireguard",local_cluster="a",remote_cluster="b",status="connected"} 1
submariner_gateway_rx_bytes{remote_cluster="c",odd="a \"quoted\", value"} 1234
up 1
"#;
        let samples = parse_metrics(text);
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].name, "submariner_connections");
        assert_eq!(samples[0].label("remote_cluster"), Some("b"));
        assert_eq!(samples[0].label("status"), Some("connected"));
        assert_eq!(samples[0].value, 1.0);
        assert_eq!(samples[1].label("odd"), Some(r#"a "quoted", value"#));
        assert_eq!(samples[1].label("remote_cluster"), Some("c"));
        assert_eq!(samples[1].value, 1234.0);
        assert_eq!(
            (samples[2].name.as_str(), samples[2].labels.len()),
            ("up", 0)
        );
    }

    #[test]
    fn wg_dump_skips_the_interface_line() {
        let dump = "cHJpdmF0ZQ==\tpub-a\t4500\toff\n\
                    pub-b\tpsk\t192.168.77.12:4500\t10.202.0.0/16,10.212.0.0/16\t1700000000\t348\t404\t10\n\
                    pub-c\t(none)\t(none)\t(none)\t0\t0\t0\toff\n";
        let peers = parse_wg_dump(dump).expect("parses");
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].public_key, "pub-b");
        assert_eq!(peers[0].allowed_ips, ["10.202.0.0/16", "10.212.0.0/16"]);
        assert_eq!(
            (peers[0].rx, peers[0].tx, peers[0].latest_handshake),
            (348, 404, 1_700_000_000)
        );
        assert!(peers[1].allowed_ips.is_empty());
        assert!(parse_wg_dump("iface\nshort\tline\n").is_err());
    }

    #[test]
    fn routes_and_rules_parse_from_ip_json() {
        let routes = r#"[{"dst":"10.202.0.0/16","dev":"submariner","scope":"link","flags":[]},{"dst":"10.203.0.0/16","dev":"submariner","flags":[]}]"#;
        assert_eq!(
            parse_route_entries(routes)
                .expect("ok")
                .into_iter()
                .map(|r| r.dst)
                .collect::<Vec<_>>(),
            ["10.202.0.0/16", "10.203.0.0/16"]
        );
        let rules = r#"[{"priority":0,"src":"all","table":"local"},{"priority":100,"src":"all","table":"150"},{"priority":32766,"src":"all","table":"main"}]"#;
        assert_eq!(parse_rules(rules, 150).expect("ok"), [100]);
        assert!(parse_rules(rules, 220).expect("ok").is_empty());
    }

    #[test]
    fn ipv6_routes_parse_with_link_and_source() {
        let json = r#"[{"dst":"fd00:202::/48","dev":"submariner","protocol":"boot","prefsrc":"fd00:201::1","metric":1024,"flags":[],"pref":"medium"},{"dst":"fd00:203::/48","dev":"submariner","metric":1024,"flags":[]},{"type":"unreachable","flags":[]}]"#;
        let routes = parse_route_entries(json).expect("ok");
        assert_eq!(
            routes,
            [
                Route {
                    dst: "fd00:202::/48".into(),
                    dev: Some("submariner".into()),
                    prefsrc: Some("fd00:201::1".into()),
                },
                Route {
                    dst: "fd00:203::/48".into(),
                    dev: Some("submariner".into()),
                    prefsrc: None,
                },
            ]
        );
        assert!(parse_route_entries("not json").is_err());
    }

    #[test]
    fn device_addrs_parse_as_local_and_prefix() {
        let json = r#"[{"ifindex":5,"ifname":"submariner","addr_info":[{"family":"inet6","local":"fd00:201::1","prefixlen":128,"scope":"global"},{"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"}]},{"addr_info":[]}]"#;
        assert_eq!(
            parse_addrs(json).expect("ok"),
            ["fd00:201::1/128", "fe80::1/64"]
        );
        assert!(parse_addrs("[]").expect("ok").is_empty());
    }

    #[test]
    fn connections_parse_sorted() {
        let json = r#"[{"status":"connecting","endpoint":{"cluster_id":"c"}},{"status":"connected","statusMessage":"Rx=1","endpoint":{"cluster_id":"b"},"usingIP":"192.168.77.12"}]"#;
        assert_eq!(
            parse_connections(json).expect("ok"),
            [
                ("b".to_string(), "connected".to_string()),
                ("c".to_string(), "connecting".to_string())
            ]
        );
        assert!(parse_connections(r#"[{"status":"connected"}]"#).is_err());
    }

    #[test]
    fn ping_summary_parses() {
        let out = "PING 10.202.1.10 (10.202.1.10) 56(84) bytes of data.\n\n--- 10.202.1.10 ping statistics ---\n\
                   153 packets transmitted, 151 received, 1.30719% packet loss, time 15212ms\n";
        assert_eq!(parse_ping(out).expect("ok"), (153, 151));
        let out = "5 packets transmitted, 0 received, +5 errors, 100% packet loss, time 4005ms\n";
        assert_eq!(parse_ping(out).expect("ok"), (5, 0));
        assert!(parse_ping("nothing").is_err());
    }
}
