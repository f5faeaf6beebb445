//! ICMP echo over a raw or an unprivileged ping socket.

use std::io;
use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

use super::*;

/// An ICMP or ICMPv6 socket talking to one destination.
#[derive(Debug)]
pub(crate) struct EchoSocket {
    socket: tokio::net::UdpSocket,
    dst: IpAddr,
    /// Raw sockets see IPv4 headers and every echo reply; ping sockets neither.
    pub(crate) raw: bool,
}

impl EchoSocket {
    /// Opens a raw socket, else a ping socket (`raw_first` false: the other way round).
    pub(crate) fn open(dst: IpAddr, src: Option<IpAddr>, raw_first: bool) -> io::Result<Self> {
        // Checked here because a raw IPv4 socket reads whatever address is passed to bind():
        // an IPv6 one would silently bind the wildcard address.
        if let Some(src) = src.filter(|s| s.is_ipv4() != dst.is_ipv4()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "health check source {src} and destination {dst} are of different families"
                ),
            ));
        }
        let (domain, protocol) = match dst {
            IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
            IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
        };
        let kinds = if raw_first {
            [Type::RAW, Type::DGRAM]
        } else {
            [Type::DGRAM, Type::RAW]
        };
        let (socket, raw) = match Socket::new(domain, kinds[0], Some(protocol)) {
            Ok(socket) => (socket, kinds[0] == Type::RAW),
            Err(first) => match Socket::new(domain, kinds[1], Some(protocol)) {
                Ok(socket) => (socket, kinds[1] == Type::RAW),
                Err(second) => {
                    let (raw_err, ping_err) = if raw_first {
                        (first, second)
                    } else {
                        (second, first)
                    };
                    return Err(io::Error::new(
                        raw_err.kind(),
                        format!(
                            "opening an ICMP socket to {dst}: raw socket: {raw_err}; \
                             ping socket: {ping_err}"
                        ),
                    ));
                }
            },
        };
        if let Some(src) = src {
            socket.bind(&SocketAddr::new(src, 0).into()).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("binding the ICMP socket to {dst} to source {src}: {e}"),
                )
            })?;
        }
        socket.set_nonblocking(true)?;
        // An ICMP socket is a datagram socket as far as tokio's readiness is concerned.
        let socket = tokio::net::UdpSocket::from_std(socket.into())?;
        Ok(EchoSocket { socket, dst, raw })
    }

    pub(crate) async fn send(&self, ident: u16, seq: u16) -> io::Result<()> {
        let packet = encode_echo(self.dst.is_ipv6(), ident, seq);
        // The port means nothing to ICMP sockets; 0 is what the kernel expects.
        self.socket
            .send_to(&packet, SocketAddr::new(self.dst, 0))
            .await
            .map(drop)
    }

    /// Receives one packet; `Some(seq)` when it is an echo reply to one of our probes.
    pub(crate) async fn recv(&self, buf: &mut [u8], ident: u16) -> io::Result<Option<u16>> {
        let (n, from) = self.socket.recv_from(buf).await?;
        if from.ip() != self.dst {
            return Ok(None);
        }
        let v6 = self.dst.is_ipv6();
        // Ping sockets get their identifier from the kernel, which also demultiplexes replies.
        let ident = self.raw.then_some(ident);
        Ok(parse_reply(&buf[..n], v6, self.raw && !v6, ident))
    }
}

/// An echo request: type, code 0, checksum, identifier, sequence number, [`PAYLOAD`].
/// ICMPv6 checksums cover a pseudo-header the kernel fills in, so the kernel computes them.
pub(crate) fn encode_echo(v6: bool, ident: u16, seq: u16) -> Vec<u8> {
    let mut packet = Vec::with_capacity(8 + PAYLOAD.len());
    packet.extend_from_slice(&[if v6 { 128 } else { 8 }, 0, 0, 0]);
    packet.extend_from_slice(&ident.to_be_bytes());
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(PAYLOAD);
    if !v6 {
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    packet
}

/// The sequence number of `packet` if it is an echo reply carrying our payload (and `ident`,
/// when given). `ip_header`: the packet starts with an IPv4 header (raw IPv4 sockets).
pub(crate) fn parse_reply(
    packet: &[u8],
    v6: bool,
    ip_header: bool,
    ident: Option<u16>,
) -> Option<u16> {
    let icmp = if ip_header {
        let ihl = usize::from(packet.first()? & 0x0f) * 4;
        if ihl < 20 {
            return None;
        }
        packet.get(ihl..)?
    } else {
        packet
    };
    let echo_reply = if v6 { 129 } else { 0 };
    if icmp.len() < 8 || icmp[0] != echo_reply || icmp[1] != 0 || !icmp[8..].starts_with(PAYLOAD) {
        return None;
    }
    let id = u16::from_be_bytes([icmp[4], icmp[5]]);
    if ident.is_some_and(|want| want != id) {
        return None;
    }
    Some(u16::from_be_bytes([icmp[6], icmp[7]]))
}

/// The Internet checksum (RFC 1071).
pub(crate) fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
