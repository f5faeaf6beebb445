//! A small client for WireGuard's cross-platform userspace control protocol ("UAPI",
//! <https://www.wireguard.com/xplatform/>), spoken by `wireguard-go` and other userspace
//! implementations on a unix socket.
//!
//! Why not `wireguard_control`'s userspace backend: its `apply` starts `wireguard-go` by itself
//! when the socket is missing (with its own notion of how, and without waiting properly), its
//! parser `println!`s unknown keys and panics on an unparsable errno, and it turns the
//! implementation's errno into a bare `InvalidInput`. The protocol is a few lines of text, so we
//! speak it directly, keep the errno, never panic on what the socket sends, and keep secrets in
//! zeroizing buffers.
//!
//! Encoding and decoding are pure functions so they are tested without a socket.

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use wgcable_keys::{PresharedKey, PrivateKey, PublicKey};
use zeroize::Zeroizing;

use crate::device::{DeviceStatus, DeviceUpdate, PeerChange, PeerConfig, PeerStatus};
use crate::Error;

/// How long one request may take before we give up on a wedged implementation.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Upper bound for one reply, so a misbehaving socket cannot make us allocate without end.
/// (1,000 peers with a few allowed IPs each take well under 1 MiB.)
const MAX_REPLY: usize = 64 * 1024 * 1024;

fn push_hex(out: &mut String, bytes: &[u8; 32]) {
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
}

fn parse_hex(value: &str) -> Option<[u8; 32]> {
    if value.len() != 64 || !value.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&value[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn push_peer_fields(out: &mut String, config: &PeerConfig, explicit_defaults: bool) {
    // For an in-place update every field is written, including "none" values (an all-zero PSK
    // removes it, keepalive 0 disables it), so the peer ends up exactly as configured.
    match &config.preshared_key {
        Some(psk) => {
            out.push_str("preshared_key=");
            push_hex(out, psk.as_bytes());
            out.push('\n');
        }
        None if explicit_defaults => {
            out.push_str("preshared_key=");
            push_hex(out, &[0u8; 32]);
            out.push('\n');
        }
        None => {}
    }
    // An endpoint cannot be unset in WireGuard; `None` leaves whatever the peer roamed to.
    if let Some(endpoint) = config.endpoint {
        let _ = writeln!(out, "endpoint={endpoint}");
    }
    match config.persistent_keepalive {
        Some(secs) => {
            let _ = writeln!(out, "persistent_keepalive_interval={secs}");
        }
        None if explicit_defaults => out.push_str("persistent_keepalive_interval=0\n"),
        None => {}
    }
}

fn push_allowed_ips(out: &mut String, allowed_ips: &[IpNet]) {
    for net in allowed_ips {
        let _ = writeln!(out, "allowed_ip={net}");
    }
}

/// Encodes a `set=1` request. The buffer is zeroized on drop because it holds the private key
/// and pre-shared keys in hex; it is sized up front so growing it leaves no unzeroized copies
/// behind in most cases.
pub(crate) fn encode_set(update: &DeviceUpdate) -> Zeroizing<String> {
    let estimate = 256
        + update
            .peers
            .iter()
            .map(|change| match change {
                PeerChange::Remove(_) => 96,
                PeerChange::Add(c) | PeerChange::Update { config: c, .. } => {
                    320 + 56 * c.allowed_ips.len()
                }
            })
            .sum::<usize>();
    let mut out = Zeroizing::new(String::with_capacity(estimate));
    out.push_str("set=1\n");
    if let Some(key) = &update.private_key {
        out.push_str("private_key=");
        push_hex(&mut out, key.as_bytes());
        out.push('\n');
    }
    if let Some(port) = update.listen_port {
        let _ = writeln!(out, "listen_port={port}");
    }
    for change in &update.peers {
        out.push_str("public_key=");
        push_hex(&mut out, change.public_key().as_bytes());
        out.push('\n');
        match change {
            PeerChange::Add(config) => {
                push_peer_fields(&mut out, config, false);
                push_allowed_ips(&mut out, &config.allowed_ips);
            }
            PeerChange::Update {
                config,
                replace_allowed_ips,
            } => {
                push_peer_fields(&mut out, config, true);
                if *replace_allowed_ips {
                    out.push_str("replace_allowed_ips=true\n");
                }
                push_allowed_ips(&mut out, &config.allowed_ips);
            }
            PeerChange::Remove(_) => out.push_str("remove=true\n"),
        }
    }
    out.push('\n');
    out
}

/// The request that reads a device.
pub(crate) const GET_REQUEST: &[u8] = b"get=1\n\n";

/// Checks the errno line that ends every reply. Implementations differ in its sign
/// (`wireguard-go` 0.0.20220316 answers `errno=-22`), so the magnitude is what counts.
fn check_errno(device: &str, value: &str) -> Result<(), Error> {
    let errno: i64 = value.parse().map_err(|_| Error::UapiProtocol {
        device: device.to_owned(),
        detail: format!("errno {value:?} is not a number"),
    })?;
    if errno == 0 {
        return Ok(());
    }
    let errno = i32::try_from(errno.unsigned_abs()).unwrap_or(i32::MAX);
    Err(Error::UapiRejected {
        device: device.to_owned(),
        errno,
        source: io::Error::from_raw_os_error(errno),
    })
}

/// Decodes the reply to `get=1` (without the terminating empty line).
pub(crate) fn decode_get(device: &str, reply: &str) -> Result<DeviceStatus, Error> {
    let bad = |detail: String| Error::UapiProtocol {
        device: device.to_owned(),
        detail,
    };
    let mut status = DeviceStatus {
        name: device.to_owned(),
        public_key: None,
        listen_port: None,
        peers: Vec::new(),
    };
    let mut peer: Option<PeerStatus> = None;
    let mut handshake_sec: u64 = 0;
    let mut handshake_nsec: u32 = 0;
    let mut saw_errno = false;

    // Closes the current peer: its handshake time is only complete once both halves are read.
    let finish = |peer: &mut Option<PeerStatus>,
                  sec: &mut u64,
                  nsec: &mut u32,
                  out: &mut Vec<PeerStatus>| {
        if let Some(mut p) = peer.take() {
            // Time 0 means "never" in the protocol (the kernel reports it the same way).
            p.last_handshake = (*sec != 0 || *nsec != 0)
                .then(|| SystemTime::UNIX_EPOCH + Duration::new(*sec, *nsec));
            out.push(p);
        }
        *sec = 0;
        *nsec = 0;
    };

    for line in reply.lines() {
        if line.is_empty() {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| bad(format!("line without '=' ({} bytes)", line.len())))?;
        // Values of secret keys are never echoed into an error.
        let secret_bad = |what: &str| bad(format!("malformed {what}"));
        match key {
            "private_key" => {
                let bytes =
                    Zeroizing::new(parse_hex(value).ok_or_else(|| secret_bad("private_key"))?);
                // All zeros means no key is configured.
                if *bytes != [0u8; 32] {
                    status.public_key = Some(PrivateKey::from_bytes(*bytes).public_key());
                }
            }
            "listen_port" => {
                let port: u16 = value
                    .parse()
                    .map_err(|_| bad(format!("listen_port {value:?}")))?;
                status.listen_port = (port != 0).then_some(port);
            }
            "fwmark" | "protocol_version" => {}
            "public_key" => {
                finish(
                    &mut peer,
                    &mut handshake_sec,
                    &mut handshake_nsec,
                    &mut status.peers,
                );
                let bytes = parse_hex(value).ok_or_else(|| bad(format!("public_key {value:?}")))?;
                peer = Some(PeerStatus {
                    config: PeerConfig {
                        public_key: PublicKey::from_bytes(bytes),
                        endpoint: None,
                        allowed_ips: Vec::new(),
                        persistent_keepalive: None,
                        preshared_key: None,
                    },
                    last_handshake: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                });
            }
            "errno" => {
                finish(
                    &mut peer,
                    &mut handshake_sec,
                    &mut handshake_nsec,
                    &mut status.peers,
                );
                check_errno(device, value)?;
                saw_errno = true;
            }
            _ => {
                let Some(p) = peer.as_mut() else {
                    // Device-level keys we do not know are ignored: newer implementations may
                    // report more than we need.
                    tracing::debug!(device, key, "ignoring unknown device key from UAPI");
                    continue;
                };
                match key {
                    "preshared_key" => {
                        let bytes = Zeroizing::new(
                            parse_hex(value).ok_or_else(|| secret_bad("preshared_key"))?,
                        );
                        p.config.preshared_key =
                            (*bytes != [0u8; 32]).then(|| PresharedKey::from_bytes(*bytes));
                    }
                    "endpoint" => {
                        let addr: SocketAddr = value
                            .parse()
                            .map_err(|_| bad(format!("endpoint {value:?}")))?;
                        p.config.endpoint = Some(addr);
                    }
                    "persistent_keepalive_interval" => {
                        let secs: u16 = value
                            .parse()
                            .map_err(|_| bad(format!("persistent_keepalive_interval {value:?}")))?;
                        p.config.persistent_keepalive = (secs != 0).then_some(secs);
                    }
                    "allowed_ip" => {
                        let net: IpNet = value
                            .parse()
                            .map_err(|_| bad(format!("allowed_ip {value:?}")))?;
                        p.config.allowed_ips.push(net);
                    }
                    "last_handshake_time_sec" => {
                        handshake_sec = value
                            .parse()
                            .map_err(|_| bad(format!("last_handshake_time_sec {value:?}")))?;
                    }
                    "last_handshake_time_nsec" => {
                        let nsec: u32 = value
                            .parse()
                            .map_err(|_| bad(format!("last_handshake_time_nsec {value:?}")))?;
                        handshake_nsec = nsec.min(999_999_999);
                    }
                    "rx_bytes" => {
                        p.rx_bytes = value
                            .parse()
                            .map_err(|_| bad(format!("rx_bytes {value:?}")))?;
                    }
                    "tx_bytes" => {
                        p.tx_bytes = value
                            .parse()
                            .map_err(|_| bad(format!("tx_bytes {value:?}")))?;
                    }
                    _ => tracing::debug!(device, key, "ignoring unknown peer key from UAPI"),
                }
            }
        }
    }
    if !saw_errno {
        return Err(bad("reply ended without an errno line".to_owned()));
    }
    Ok(status)
}

/// The reply parser, for the fuzz targets only: decodes `reply` as [`decode_get`] does and
/// discards the result. Behaviour is exactly `decode_get`'s.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn fuzz_decode_get(reply: &str) -> bool {
    decode_get("fuzz", reply).is_ok()
}

/// Whether a control socket is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Liveness {
    /// A process accepts connections on it.
    Live,
    /// The file exists but nobody listens: its process died without removing it.
    Stale,
    /// No socket file.
    Absent,
}

/// Connects to a control socket (blocking).
fn connect(socket: &Path) -> io::Result<UnixStream> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

fn is_absent(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

fn is_stale(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::ConnectionRefused
}

/// Probes a control socket (blocking).
pub(crate) fn probe(device: &str, socket: &Path) -> Result<Liveness, Error> {
    match UnixStream::connect(socket) {
        Ok(_) => Ok(Liveness::Live),
        Err(e) if is_absent(&e) => Ok(Liveness::Absent),
        Err(e) if is_stale(&e) => Ok(Liveness::Stale),
        Err(source) => Err(Error::Uapi {
            device: device.to_owned(),
            op: "connecting to",
            socket: socket.to_owned(),
            source,
        }),
    }
}

/// Sends one request and reads the reply up to its terminating empty line (blocking).
fn exchange(
    device: &str,
    socket: &Path,
    request: &[u8],
) -> Result<Option<Zeroizing<String>>, Error> {
    let io_err = |op: &'static str| {
        move |source: io::Error| Error::Uapi {
            device: device.to_owned(),
            op,
            socket: socket.to_owned(),
            source,
        }
    };
    let mut stream = match connect(socket) {
        Ok(stream) => stream,
        Err(e) if is_absent(&e) || is_stale(&e) => return Ok(None),
        Err(e) => return Err(io_err("connecting to")(e)),
    };
    stream.write_all(request).map_err(io_err("writing to"))?;
    let mut reader = BufReader::new(stream);
    let mut reply = Zeroizing::new(String::new());
    loop {
        let start = reply.len();
        let n = reader
            .read_line(&mut reply)
            .map_err(io_err("reading from"))?;
        if n == 0 {
            return Err(Error::UapiProtocol {
                device: device.to_owned(),
                detail: "the socket closed before the reply's terminating empty line".to_owned(),
            });
        }
        if &reply[start..] == "\n" {
            return Ok(Some(reply));
        }
        if reply.len() > MAX_REPLY {
            return Err(Error::UapiProtocol {
                device: device.to_owned(),
                detail: format!("reply larger than {MAX_REPLY} bytes"),
            });
        }
    }
}

/// Reads a device (blocking); `None` when its socket is absent or dead.
pub(crate) fn get(device: &str, socket: &Path) -> Result<Option<DeviceStatus>, Error> {
    match exchange(device, socket, GET_REQUEST)? {
        Some(reply) => decode_get(device, &reply).map(Some),
        None => Ok(None),
    }
}

/// Applies an update in one request (blocking).
pub(crate) fn set(device: &str, socket: &Path, update: &DeviceUpdate) -> Result<(), Error> {
    let request = encode_set(update);
    let reply = exchange(device, socket, request.as_bytes())?.ok_or_else(|| Error::NoDevice {
        device: device.to_owned(),
    })?;
    let mut saw_errno = false;
    for line in reply.lines().filter(|l| !l.is_empty()) {
        match line.split_once('=') {
            Some(("errno", value)) => {
                check_errno(device, value)?;
                saw_errno = true;
            }
            _ => {
                return Err(Error::UapiProtocol {
                    device: device.to_owned(),
                    detail: format!("unexpected line in the reply to set: {line:?}"),
                })
            }
        }
    }
    if saw_errno {
        Ok(())
    } else {
        Err(Error::UapiProtocol {
            device: device.to_owned(),
            detail: "the reply to set has no errno line".to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn key(n: u8) -> PublicKey {
        PublicKey::from_bytes([n; 32])
    }

    fn hex(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    fn config(n: u8) -> PeerConfig {
        PeerConfig {
            public_key: key(n),
            endpoint: Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, n)),
                4500,
            )),
            allowed_ips: vec![format!("10.{n}.0.0/16").parse().expect("net")],
            persistent_keepalive: Some(10),
            preshared_key: Some(PresharedKey::from_bytes([0xAA; 32])),
        }
    }

    #[test]
    fn encodes_every_kind_of_change_in_one_request() {
        let mut updated = config(2);
        updated.preshared_key = None;
        updated.persistent_keepalive = None;
        let update = DeviceUpdate {
            private_key: Some(PrivateKey::from_bytes([7; 32])),
            listen_port: Some(4500),
            peers: vec![
                PeerChange::Remove(key(3)),
                PeerChange::Update {
                    config: updated,
                    replace_allowed_ips: true,
                },
                PeerChange::Add(config(1)),
            ],
        };
        let expected = format!(
            "set=1\nprivate_key={}\nlisten_port=4500\n\
             public_key={}\nremove=true\n\
             public_key={}\npreshared_key={}\nendpoint=192.0.2.2:4500\npersistent_keepalive_interval=0\n\
             replace_allowed_ips=true\nallowed_ip=10.2.0.0/16\n\
             public_key={}\npreshared_key={}\nendpoint=192.0.2.1:4500\npersistent_keepalive_interval=10\n\
             allowed_ip=10.1.0.0/16\n\n",
            hex(7),
            hex(3),
            hex(2),
            hex(0),
            hex(1),
            hex(0xAA),
        );
        assert_eq!(encode_set(&update).as_str(), expected);
    }

    #[test]
    fn update_without_allowed_ip_change_does_not_replace_them() {
        let update = DeviceUpdate {
            peers: vec![PeerChange::Update {
                config: config(5),
                replace_allowed_ips: false,
            }],
            ..DeviceUpdate::default()
        };
        let text = encode_set(&update);
        assert!(!text.contains("replace_allowed_ips"), "{}", text.as_str());
        assert!(text.contains("allowed_ip=10.5.0.0/16\n"));
        assert!(text.ends_with("\n\n"));
    }

    #[test]
    fn decodes_a_device_with_peers() {
        let private = PrivateKey::from_bytes([9; 32]);
        let reply = format!(
            "private_key={}\nlisten_port=4500\nfwmark=0\n\
             public_key={}\npreshared_key={}\nprotocol_version=1\nendpoint=[2001:db8::1]:4501\n\
             last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\ntx_bytes=10\nrx_bytes=20\n\
             persistent_keepalive_interval=10\nallowed_ip=10.1.0.0/16\nallowed_ip=fd00::/64\n\
             public_key={}\npreshared_key={}\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\n\
             tx_bytes=0\nrx_bytes=0\npersistent_keepalive_interval=0\nsome_future_key=1\n\
             errno=0\n",
            hex(9),
            hex(1),
            hex(0xAA),
            hex(2),
            hex(0),
        );
        let status = decode_get("wg0", &reply).expect("decodes");
        assert_eq!(status.name, "wg0");
        assert_eq!(status.public_key, Some(private.public_key()));
        assert_eq!(status.listen_port, Some(4500));
        assert_eq!(status.peers.len(), 2);
        let first = &status.peers[0];
        assert_eq!(first.config.public_key, key(1));
        assert_eq!(
            first.config.preshared_key,
            Some(PresharedKey::from_bytes([0xAA; 32]))
        );
        assert_eq!(
            first.config.endpoint,
            Some("[2001:db8::1]:4501".parse().expect("addr"))
        );
        assert_eq!(first.config.persistent_keepalive, Some(10));
        assert_eq!(
            first.config.allowed_ips,
            vec![
                "10.1.0.0/16".parse::<IpNet>().expect("net"),
                "fd00::/64".parse().expect("net")
            ]
        );
        assert_eq!(
            first.last_handshake,
            Some(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5))
        );
        assert_eq!((first.rx_bytes, first.tx_bytes), (20, 10));
        let second = &status.peers[1];
        assert_eq!(second.config.public_key, key(2));
        assert_eq!(
            second.config.preshared_key, None,
            "an all-zero PSK means none"
        );
        assert_eq!(
            second.config.persistent_keepalive, None,
            "keepalive 0 means off"
        );
        assert_eq!(second.last_handshake, None, "handshake time 0 means never");
        assert_eq!(second.config.endpoint, None);
    }

    #[test]
    fn decodes_a_fresh_device() {
        let status = decode_get("wg0", "listen_port=0\nerrno=0\n").expect("decodes");
        assert_eq!(status.public_key, None);
        assert_eq!(status.listen_port, None);
        assert!(status.peers.is_empty());
    }

    #[test]
    fn malformed_replies_are_errors_without_secrets() {
        let secret = "ab".repeat(31) + "zz";
        for (reply, expect) in [
            (
                format!("private_key={secret}\nerrno=0\n"),
                "malformed private_key",
            ),
            (
                format!("public_key={}\npreshared_key={secret}\nerrno=0\n", hex(1)),
                "malformed preshared_key",
            ),
            ("listen_port=4500\n".to_owned(), "without an errno"),
            ("garbage\nerrno=0\n".to_owned(), "without '='"),
            ("errno=abc\n".to_owned(), "not a number"),
            (
                format!("public_key={}\nendpoint=nowhere\nerrno=0\n", hex(1)),
                "endpoint",
            ),
            (
                format!("public_key={}\nallowed_ip=10.0.0.0/33\nerrno=0\n", hex(1)),
                "allowed_ip",
            ),
            ("public_key=12\nerrno=0\n".to_owned(), "public_key"),
        ] {
            let err = decode_get("wg0", &reply).expect_err(&reply);
            let text = err.to_string();
            assert!(text.contains(expect), "{text}");
            assert!(!text.contains(&secret), "secret leaked: {text}");
        }
    }

    #[test]
    fn errno_of_either_sign_is_a_rejection_with_its_meaning() {
        for value in ["-22", "22"] {
            let err = check_errno("wg0", value).expect_err(value);
            match &err {
                Error::UapiRejected { errno, source, .. } => {
                    assert_eq!(*errno, libc_einval());
                    assert_eq!(source.raw_os_error(), Some(libc_einval()));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(check_errno("wg0", "0").is_ok());
        let err = decode_get("wg0", "errno=-19\n").expect_err("rejected");
        assert!(err.to_string().contains("errno 19"), "{err}");
    }

    fn libc_einval() -> i32 {
        nix::errno::Errno::EINVAL as i32
    }

    #[test]
    fn thousand_peers_are_one_request() {
        let update = DeviceUpdate {
            peers: (0..1000u32)
                .map(|i| {
                    let mut bytes = [0u8; 32];
                    bytes[..4].copy_from_slice(&i.to_be_bytes());
                    let mut c = config(1);
                    c.public_key = PublicKey::from_bytes(bytes);
                    PeerChange::Add(c)
                })
                .collect(),
            ..DeviceUpdate::default()
        };
        let text = encode_set(&update);
        assert_eq!(text.matches("set=1\n").count(), 1);
        assert_eq!(text.matches("public_key=").count(), 1000);
        assert!(text.ends_with("\n\n") && !text[..text.len() - 2].contains("\n\n"));
    }
}
