//! `wgcable show`: asks a running gateway over its HTTP endpoint.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use wgcable_api::ConnectionReport;

/// Prints the connections of the gateway at `url` (or `127.0.0.1:<port>`) as a table, or JSON.
pub async fn connections(url: Option<&str>, port: u16, json: bool) -> anyhow::Result<()> {
    let authority = authority(url, port)?;
    let body = get(&authority, "/connections").await?;
    // Submariner's Connection objects, each with the cable's byte counters and handshake age
    // beside it (`ConnectionReport`): one request, no metrics scraping.
    let reports: Vec<ConnectionReport> = serde_json::from_slice(&body)
        .with_context(|| format!("decoding the connections served at http://{authority}"))?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reports).context("encoding connections")?
        );
        return Ok(());
    }
    print!("{}", render_connections(&reports));
    Ok(())
}

/// The table: `subctl show connections`' columns in its order, then wgcable's own; columns
/// padded to their widest cell plus three spaces, as subctl's printer does.
fn render_connections(reports: &[ConnectionReport]) -> String {
    let mut rows = vec![[
        "GATEWAY",
        "CLUSTER",
        "REMOTE IP",
        "NAT",
        "CABLE DRIVER",
        "SUBNETS",
        "STATUS",
        "RTT avg.",
        "LAST HANDSHAKE",
        "RX/TX",
    ]
    .map(String::from)];
    for r in reports {
        let c = &r.connection;
        let id = &c.endpoint.cluster_id;
        // subctl's choice: the IP in use, else the public IP of a NATed endpoint, else private.
        let (remote_ip, nat) = if !c.using_ip.is_empty() {
            (c.using_ip.clone(), c.using_nat)
        } else if c.endpoint.nat_enabled {
            (c.endpoint.public_ip.clone(), true)
        } else {
            (c.endpoint.private_ip.clone(), false)
        };
        rows.push(
            [
                c.endpoint.hostname.clone(),
                id.clone(),
                remote_ip,
                if nat { "yes" } else { "no" }.to_string(),
                c.endpoint.backend.clone(),
                c.endpoint.subnets.join(", "),
                c.status.as_str().to_string(),
                c.latency_rtt
                    .as_ref()
                    .map(|l| rtt(&l.average))
                    .unwrap_or_default(),
                r.last_handshake_seconds
                    .map(|s| format!("{}s ago", s.round()))
                    .unwrap_or_else(|| "-".into()),
                match (r.rx_bytes, r.tx_bytes) {
                    (Some(rx), Some(tx)) => format!("{}/{}", human_bytes(rx), human_bytes(tx)),
                    _ => "-".into(),
                },
            ]
            .map(|cell| printable(&cell)),
        );
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    if reports.is_empty() {
        out.push_str("(no connections)\n");
    }
    out
}

/// A Go duration string as the gateway reports RTTs (`501.202608ms`) with three significant
/// digits (`501ms`, `1.23ms`, `87.5µs`); anything unparsable is shown as it is.
fn rtt(go: &str) -> String {
    match parse_go_duration(go) {
        Some(d) => short_duration(d),
        None => go.to_string(),
    }
}

/// Parses Go's `time.Duration.String()` form: one or more `<decimal><unit>` parts, units ns,
/// us/µs/μs, ms, s, m, h. Written here because humantime, the duration crate already used,
/// refuses fractions ("1.5ms"), which Go prints for every RTT.
fn parse_go_duration(s: &str) -> Option<Duration> {
    let mut rest = s.trim();
    if rest == "0" || rest == "0s" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let (scale, unit_len) = [
            ("ns", 1e-9),
            ("us", 1e-6),
            ("µs", 1e-6),
            ("μs", 1e-6),
            ("ms", 1e-3),
            ("s", 1.0),
            ("m", 60.0),
            ("h", 3600.0),
        ]
        .iter()
        .find(|(unit, _)| rest.starts_with(unit))
        .map(|(unit, scale)| (*scale, unit.len()))?;
        total += number * scale;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).ok()
}

fn short_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    let (value, unit) = if secs >= 1.0 {
        (secs, "s")
    } else if secs >= 1e-3 {
        (secs * 1e3, "ms")
    } else if secs >= 1e-6 {
        (secs * 1e6, "µs")
    } else {
        return format!("{}ns", d.as_nanos());
    };
    if value >= 100.0 {
        format!("{value:.0}{unit}")
    } else if value >= 10.0 {
        format!("{value:.1}{unit}")
    } else {
        format!("{value:.2}{unit}")
    }
}

/// Cells come from remote Endpoints (other clusters' input): control characters would move the
/// cursor or recolour the operator's terminal, so they are shown as `?`.
fn printable(cell: &str) -> String {
    cell.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// `host:port` to connect to, from `--url` (`host`, `host:port`, `http://host[:port][/]`) and
/// the default port (`SUBMARINER_METRICSPORT`).
fn authority(url: Option<&str>, port: u16) -> anyhow::Result<String> {
    let Some(url) = url else {
        return Ok(format!("127.0.0.1:{port}"));
    };
    let rest = match url.split_once("://") {
        Some(("http", rest)) => rest,
        Some((scheme, _)) => bail!(
            "--url {url}: only http:// is served by the gateway (not {scheme}://); give host:port or http://host:port"
        ),
        None => url,
    };
    let host_port = rest.trim_end_matches('/');
    if host_port.is_empty() || host_port.contains('/') {
        bail!("--url {url}: expected host:port or http://host:port, without a path");
    }
    // An explicit port: `host:port` or `[v6]:port`; a bare IPv6 address has colons but no port.
    let has_port = if let Some(after) = host_port.strip_prefix('[') {
        after
            .split_once(']')
            .is_some_and(|(_, p)| p.starts_with(':'))
    } else {
        host_port.matches(':').count() == 1
    };
    Ok(if has_port {
        host_port.to_string()
    } else if host_port.contains(':') && !host_port.starts_with('[') {
        format!("[{host_port}]:{port}")
    } else {
        format!("{host_port}:{port}")
    })
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

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
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

/// A plain HTTP/1.1 GET with hyper, over TCP, to `authority` (`host:port`).
async fn get(authority: &str, path: &str) -> anyhow::Result<Bytes> {
    let url = format!("http://{authority}");
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
    fn rtts_are_shown_with_three_significant_digits() {
        for (go, shown) in [
            ("501.202608ms", "501ms"),
            ("1.234567ms", "1.23ms"),
            ("12.3456ms", "12.3ms"),
            ("87.512µs", "87.5µs"),
            ("87.512us", "87.5µs"),
            ("999ns", "999ns"),
            ("1.5s", "1.50s"),
            ("1m30.5s", "90.5s"),
            ("0s", "0ns"),
            ("garbage", "garbage"),
            ("", "0ns"),
        ] {
            assert_eq!(rtt(go), shown, "{go:?}");
        }
    }

    #[test]
    fn url_takes_host_port_or_http_and_the_default_port() {
        for (url, port, want) in [
            (None, 32780, "127.0.0.1:32780"),
            (None, 9999, "127.0.0.1:9999"),
            (Some("10.0.0.1:8080"), 32780, "10.0.0.1:8080"),
            (Some("http://10.0.0.1:8080/"), 32780, "10.0.0.1:8080"),
            (Some("gw.example"), 32780, "gw.example:32780"),
            (Some("http://gw.example"), 1234, "gw.example:1234"),
            (Some("[::1]:8080"), 32780, "[::1]:8080"),
            (Some("[::1]"), 32780, "[::1]:32780"),
            (Some("::1"), 32780, "[::1]:32780"),
        ] {
            assert_eq!(authority(url, port).expect("valid"), want, "{url:?}");
        }
        for bad in ["https://gw:443", "http://gw:1/metrics", "", "http://"] {
            assert!(authority(Some(bad), 1).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_table_has_subctls_columns_first_and_ours_after() {
        let reports: Vec<ConnectionReport> = serde_json::from_str(
            r#"[{"status":"connected","statusMessage":"","usingIP":"192.168.77.12","usingNAT":false,
                 "rxBytes":2048,"txBytes":512,"lastHandshakeSeconds":4.4,
                 "endpoint":{"cluster_id":"cluster-b","cable_name":"c","hostname":"gw-b",
                   "subnets":["10.202.0.0/16","fd00:202::/56"],"private_ip":"192.168.77.12",
                   "public_ip":"","nat_enabled":false,"backend":"wireguard"},
                 "latencyRTT":{"last":"1ms","min":"1ms","average":"501.202608ms","max":"2s","stdDev":"1ms"}},
                {"status":"connecting","statusMessage":"","usingIP":"",
                 "endpoint":{"cluster_id":"cluster-c","cable_name":"c","hostname":"gw-c\u001b[31m",
                   "subnets":["10.203.0.0/16"],"private_ip":"192.168.77.13",
                   "public_ip":"203.0.113.13","nat_enabled":true,"backend":"wireguard"}}]"#,
        )
        .expect("connections");
        let table = render_connections(&reports);
        let lines: Vec<&str> = table.lines().collect();
        let header: Vec<&str> = lines[0]
            .split("   ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(
            header,
            [
                "GATEWAY",
                "CLUSTER",
                "REMOTE IP",
                "NAT",
                "CABLE DRIVER",
                "SUBNETS",
                "STATUS",
                "RTT avg.",
                "LAST HANDSHAKE",
                "RX/TX"
            ]
        );
        assert!(
            lines[1]
                == "gw-b        cluster-b   192.168.77.12   no    wireguard      10.202.0.0/16, fd00:202::/56   connected    501ms      4s ago           2.0KiB/512B",
            "{table}"
        );
        // No IP in use yet: subctl shows the public IP of a NATed endpoint.
        let cells: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(cells[2..4], ["203.0.113.13", "yes"], "{table}");
        // A remote hostname cannot put escape sequences on the operator's terminal.
        assert!(!table.contains('\u{1b}'), "{table:?}");
        assert!(lines[2].starts_with("gw-c?[31m"), "{table}");
        assert_eq!(
            render_connections(&[]).lines().nth(1),
            Some("(no connections)")
        );
    }

    #[test]
    fn human_bytes_units() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(2048), "2.0KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 + 512 * 1024), "3.5MiB");
    }
}
