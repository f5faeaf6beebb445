//! `xtask internal ...`: tiny tools that the e2e and demo tasks run inside the network
//! namespaces (via `ip netns exec` or `nsenter`), so the tests need no curl, nc or iperf:
//!
//! - `http-get URL`: an HTTP/1.0 GET over a plain `TcpStream`; prints the body, fails on a
//!   status other than 200.
//! - `tcp-recv PORT [ADDR]`: accepts one connection on ADDR (IPv4 or IPv6; default 0.0.0.0),
//!   prints `listening` as soon as it listens, then `bytes=N sha256=HEX` for everything
//!   received.
//! - `tcp-send HOST PORT BYTES`: sends BYTES of a deterministic pseudo-random stream to HOST (an
//!   IPv4 or IPv6 address, or a name) and prints `bytes=N sha256=HEX` for what it sent.
//! - `etcd-writer URL[,URL...]`: one etcd client kept open; reads `put KEY FILE` and `del KEY`
//!   lines from stdin, carries each out and prints `ok` (or `error: ...`). The benchmarks time
//!   a change from the moment they write the line, so no process start-up is in the figure.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};

const USAGE: &str =
    "usage: xtask internal http-get URL | tcp-recv PORT [ADDR] | tcp-send HOST PORT BYTES | etcd-writer URL[,URL...]";

pub fn run(args: &[String]) -> Result<()> {
    if crate::wants_help(args) {
        println!("{USAGE}");
        return Ok(());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["http-get", url] => {
            let body = http_get(url, Duration::from_secs(5))?;
            std::io::stdout().write_all(body.as_bytes())?;
            Ok(())
        }
        ["tcp-recv", port] => tcp_recv(
            Ipv4Addr::UNSPECIFIED.into(),
            port.parse().context("PORT")?,
            Duration::from_secs(30),
        ),
        ["tcp-recv", port, addr] => tcp_recv(
            addr.parse().context("ADDR (an IPv4 or IPv6 address)")?,
            port.parse().context("PORT")?,
            Duration::from_secs(30),
        ),
        ["tcp-send", host, port, bytes] => {
            let (n, sum) = tcp_send(
                host,
                port.parse().context("PORT")?,
                bytes.parse().context("BYTES")?,
            )?;
            println!("bytes={n} sha256={sum}");
            Ok(())
        }
        ["etcd-writer", urls] => etcd_writer(urls),
        _ => bail!("{USAGE}"),
    }
}

fn etcd_writer(urls: &str) -> Result<()> {
    use std::io::BufRead;
    let urls: Vec<&str> = urls.split(',').collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = etcd_client::Client::connect(&urls, None)
            .await
            .context("connecting to etcd")?;
        let mut kv = client.kv_client();
        let stdin = std::io::stdin();
        let mut out = std::io::stdout();
        for line in stdin.lock().lines() {
            let line = line?;
            let words: Vec<&str> = line.split_whitespace().collect();
            let result = match words.as_slice() {
                ["put", key, file] => match std::fs::read(file) {
                    Ok(value) => kv
                        .put(*key, value, None)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(format!("reading {file}: {e}")),
                },
                ["del", key] => kv
                    .delete(*key, None)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                _ => Err(format!("unknown command {line:?}")),
            };
            match result {
                Ok(()) => writeln!(out, "ok")?,
                Err(e) => writeln!(out, "error: {e}")?,
            }
            out.flush()?;
        }
        Ok(())
    })
}

/// Splits `http://host:port/path` into (`host:port`, `/path`).
fn parse_url(url: &str) -> Result<(&str, &str)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("only http:// URLs are supported, not {url:?}"))?;
    Ok(match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    })
}

/// GETs `url` and returns the body; fails on a status other than 200.
pub fn http_get(url: &str, timeout: Duration) -> Result<String> {
    let (authority, path) = parse_url(url)?;
    let addr: SocketAddr = authority
        .to_socket_addrs()
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .with_context(|| format!("{authority} resolves to nothing"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    // HTTP/1.0 with Connection: close: the server answers with a plain body and closes,
    // so reading to the end is the whole response.
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .with_context(|| format!("sending a request to {addr}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the response from {addr}"))?;
    let (status, body) = parse_response(&raw)?;
    ensure!(
        status == 200,
        "GET {url}: HTTP status {status}: {}",
        body.trim()
    );
    Ok(body)
}

/// Returns (status, body) of a raw HTTP/1.x response.
fn parse_response(raw: &[u8]) -> Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("HTTP response without the end of its header")?;
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad HTTP status line {status_line:?}"))?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok((status, body))
}

/// Decodes a chunked body (servers should not send one to HTTP/1.0, but it costs little).
fn dechunk(mut rest: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").context("truncated chunk size")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or_default().trim(), 16)
            .with_context(|| format!("bad chunk size {size:?}"))?;
        if size == 0 {
            return Ok(out);
        }
        ensure!(after.len() >= size, "truncated chunk");
        out.push_str(&after[..size]);
        rest = after[size..]
            .strip_prefix("\r\n")
            .context("chunk without its CRLF")?;
    }
}

/// A deterministic pseudo-random byte stream (xorshift64*), so a transfer cannot pass by
/// accident with zeros or a repeated pattern that hides reordering.
#[derive(Debug)]
struct Stream(u64);

impl Stream {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let word = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn tcp_recv(addr: IpAddr, port: u16, timeout: Duration) -> Result<()> {
    let addr = SocketAddr::new(addr, port);
    let listener = TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
    println!("listening");
    std::io::stdout().flush()?;
    let (total, sum) = receive(listener, timeout)?;
    println!("bytes={total} sha256={sum}");
    Ok(())
}

/// Accepts one connection within `timeout` and returns (bytes, sha256) of what it carried.
fn receive(listener: TcpListener, timeout: Duration) -> Result<(u64, String)> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    let mut stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).context(format!("accepting a connection within {timeout:?}")),
        }
    };
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf).context("receiving")?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, hex(&hasher.finalize())))
}

fn tcp_send(host: &str, port: u16, bytes: u64) -> Result<(u64, String)> {
    let addr: SocketAddr = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("{host} resolves to nothing"))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut source = Stream(0x9e37_79b9_7f4a_7c15);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        source.fill(&mut buf[..n]);
        stream
            .write_all(&buf[..n])
            .with_context(|| format!("sending to {addr}"))?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    // Wait for the receiver to close, so "sent" means "taken by the other side".
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.read(&mut [0u8; 1]);
    Ok((bytes, hex(&hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_authority_and_path() {
        assert_eq!(
            parse_url("http://127.0.0.1:32780/metrics").expect("ok"),
            ("127.0.0.1:32780", "/metrics")
        );
        assert_eq!(
            parse_url("http://127.0.0.1:32780").expect("ok"),
            ("127.0.0.1:32780", "/")
        );
        assert!(parse_url("https://x/").is_err());
    }

    #[test]
    fn responses_parse_plain_and_chunked() {
        let (status, body) =
            parse_response(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok").expect("ok");
        assert_eq!((status, body.as_str()), (200, "ok"));
        let raw = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnot \r\n5\r\nready\r\n0\r\n\r\n";
        let (status, body) = parse_response(raw).expect("ok");
        assert_eq!((status, body.as_str()), (503, "not ready"));
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn a_transfer_over_loopback_arrives_intact() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let receiver = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut got = Vec::new();
            s.read_to_end(&mut got).expect("read");
            (got.len() as u64, hex(&Sha256::digest(&got)))
        });
        let sent = tcp_send("127.0.0.1", port, 300_001).expect("send");
        let received = receiver.join().expect("receiver thread");
        assert_eq!(sent, received);
        assert_eq!(sent.0, 300_001);
    }

    #[test]
    fn a_transfer_over_ipv6_loopback_arrives_intact() {
        // The receiver side as `tcp-recv PORT ::1` runs it, the sender given an IPv6 literal.
        let listener = TcpListener::bind("[::1]:0").expect("bind ::1 (IPv6 loopback)");
        let port = listener.local_addr().expect("addr").port();
        let receiver =
            std::thread::spawn(move || receive(listener, Duration::from_secs(10)).expect("recv"));
        let sent = tcp_send("::1", port, 200_003).expect("send");
        let received = receiver.join().expect("receiver thread");
        assert_eq!(sent, received);
        assert_eq!(sent.0, 200_003);
    }

    #[test]
    fn the_stream_is_deterministic_and_not_constant() {
        let (mut a, mut b) = (Stream(1), Stream(1));
        let (mut x, mut y) = ([0u8; 37], [0u8; 37]);
        a.fill(&mut x);
        b.fill(&mut y);
        assert_eq!(x, y);
        assert!(x.iter().any(|&v| v != x[0]));
    }
}
