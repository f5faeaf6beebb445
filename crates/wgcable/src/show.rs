//! `wgcable show`: asks a running gateway over its HTTP endpoint.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use wgcable_api::Connection;

/// Prints the connections of the gateway at `url` as a table (or JSON).
pub async fn connections(url: &str, json: bool) -> anyhow::Result<()> {
    let body = get(url, "/connections").await?;
    let conns: Vec<Connection> = serde_json::from_slice(&body)
        .with_context(|| format!("decoding the connections served at {url}"))?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&conns).context("encoding connections")?
        );
        return Ok(());
    }
    // Byte counters and handshake ages are not part of Submariner's Connection; they come
    // from the same gateway's metrics.
    let metrics = String::from_utf8_lossy(&get(url, "/metrics").await?).into_owned();
    let rx = per_cluster(&metrics, "submariner_gateway_rx_bytes");
    let tx = per_cluster(&metrics, "submariner_gateway_tx_bytes");
    let hs = per_cluster(
        &metrics,
        wgcable_metrics::names::CONNECTION_LAST_HANDSHAKE_AGE_SECONDS,
    );
    let mut rows = vec![[
        "CLUSTER",
        "GATEWAY",
        "ENDPOINT IP",
        "NAT",
        "CABLE DRIVER",
        "SUBNETS",
        "STATUS",
        "LAST HANDSHAKE",
        "RX/TX",
        "RTT AVG.",
    ]
    .map(String::from)];
    for c in &conns {
        let id = &c.endpoint.cluster_id;
        rows.push([
            id.clone(),
            c.endpoint.hostname.clone(),
            c.using_ip.clone(),
            if c.using_nat { "yes" } else { "no" }.to_string(),
            c.endpoint.backend.clone(),
            c.endpoint.subnets.join(","),
            c.status.as_str().to_string(),
            hs.get(id)
                .map(|s| format!("{}s ago", s.round()))
                .unwrap_or_else(|| "-".into()),
            match (rx.get(id), tx.get(id)) {
                (Some(r), Some(t)) => format!("{}/{}", human_bytes(*r), human_bytes(*t)),
                _ => "-".into(),
            },
            c.latency_rtt
                .as_ref()
                .map(|l| l.average.clone())
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    if conns.is_empty() {
        println!("(no connections)");
    }
    Ok(())
}

/// Prints the local Endpoint the gateway published.
pub fn endpoint(state_dir: &Path) -> anyhow::Result<()> {
    let path = state_dir.join("endpoint.yaml");
    let yaml = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (has a gateway run with --state-dir {}?)",
            path.display(),
            state_dir.display()
        )
    })?;
    print!("{yaml}");
    Ok(())
}

/// `value` of the samples of `metric`, by their `remote_cluster` label.
fn per_cluster(text: &str, metric: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        let Some(rest) = rest.strip_prefix('{') else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Some(cluster) = labels
            .split("\",")
            .find_map(|kv| kv.trim_start_matches(',').strip_prefix("remote_cluster=\""))
        else {
            continue;
        };
        if let Ok(v) = value.trim().parse::<f64>() {
            out.insert(cluster.trim_end_matches('"').to_string(), v);
        }
    }
    out
}

fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0}{}", UNITS[i])
    } else {
        format!("{v:.1}{}", UNITS[i])
    }
}

/// A plain HTTP/1.1 GET with hyper, over TCP; `url` is `http://host:port`.
async fn get(url: &str, path: &str) -> anyhow::Result<Bytes> {
    let authority = url
        .strip_prefix("http://")
        .with_context(|| format!("--url {url} must start with http://"))?
        .trim_end_matches('/');
    let stream = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect(authority),
    )
    .await
    .with_context(|| format!("connecting to {authority}: timed out"))?
    .with_context(|| {
        format!("connecting to the gateway at {authority} (is `wgcable gateway` running there?)")
    })?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .with_context(|| format!("talking HTTP to {authority}"))?;
    // The connection task ends when the response is read; it is not long-running.
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .body(Empty::<Bytes>::new())
        .context("building the request")?;
    let resp = sender
        .send_request(req)
        .await
        .with_context(|| format!("GET {url}{path}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .with_context(|| format!("reading {url}{path}"))?
        .to_bytes();
    if !status.is_success() {
        bail!(
            "GET {url}{path}: {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cluster_reads_remote_cluster_label() {
        let text = "# HELP x\nsubmariner_gateway_rx_bytes{cable_driver=\"wireguard\",local_cluster=\"a\",remote_cluster=\"b\",remote_hostname=\"h\"} 1234\n\
                    submariner_gateway_rx_bytes{cable_driver=\"wireguard\",local_cluster=\"a\",remote_cluster=\"c\"} 5\n\
                    submariner_gateway_tx_bytes{remote_cluster=\"b\"} 7\n";
        let rx = per_cluster(text, "submariner_gateway_rx_bytes");
        assert_eq!(rx.get("b"), Some(&1234.0));
        assert_eq!(rx.get("c"), Some(&5.0));
        assert_eq!(rx.len(), 2);
    }

    #[test]
    fn human_bytes_units() {
        assert_eq!(human_bytes(512.0), "512B");
        assert_eq!(human_bytes(2048.0), "2.0KiB");
        assert_eq!(human_bytes(3.5 * 1024.0 * 1024.0), "3.5MiB");
    }
}
