//! WireGuard's generic netlink messages, built and read without any I/O.
//!
//! Two things here are what `wireguard_control` 2.0 gets wrong and wg(8) gets right, which is
//! why this crate builds the messages itself from `netlink_packet_wireguard`'s types:
//!
//! - **Reading**: the kernel answers GET_DEVICE with as many messages as the device needs.
//!   When a peer does not fit the rest of a message, the kernel continues it in the next one
//!   with *only* its public key and the rest of its allowed IPs. [`merge_dump`] folds such a
//!   continuation into the peer before it (consecutive entries with the same key are one peer),
//!   so a split peer is read back once and whole, never as a second, incomplete peer.
//! - **Writing**: one SET_DEVICE message has a bounded size, and a peer with hundreds of
//!   allowed IPs does not fit one. [`set_device_messages`] then ends the message and continues
//!   the same peer in the next one with only its public key and the allowed IPs still to send.
//!   The kernel appends them (only the first part carries the flags, so
//!   `REPLACE_ALLOWEDIPS` drops the old list once, before the first part's IPs).
//!
//! Every SET_DEVICE message is applied by the kernel on its own; [`SetMessage::changes`] says
//! which of the update's peer changes a message carries, so a refusal can name them.

use std::net::IpAddr;
use std::ops::Range;
use std::time::UNIX_EPOCH;

use ipnet::IpNet;
use netlink_packet_core::NETLINK_HEADER_LEN;
use netlink_packet_generic::constants::GENL_HDRLEN;
use netlink_packet_utils::Emitable;
use netlink_packet_wireguard::constants::{
    AF_INET, AF_INET6, WGPEER_F_REMOVE_ME, WGPEER_F_REPLACE_ALLOWEDIPS,
};
use netlink_packet_wireguard::nlas::{
    WgAllowedIp, WgAllowedIpAttrs, WgDeviceAttrs, WgPeer, WgPeerAttrs,
};
use wgcable_keys::{PresharedKey, PublicKey};
use zeroize::Zeroize;

use crate::device::{DeviceStatus, DeviceUpdate, PeerChange, PeerConfig, PeerStatus};

/// The largest netlink message we send, headers included. wg(8) uses one page; four pages
/// take a quarter of the round trips for a large update and stay far below the socket's
/// send buffer (about 200 KiB by default).
pub(crate) const MAX_MESSAGE_LEN: usize = 16 * 1024;

/// What [`MAX_MESSAGE_LEN`] leaves for the WireGuard attributes.
pub(crate) const MAX_PAYLOAD_LEN: usize = MAX_MESSAGE_LEN - NETLINK_HEADER_LEN - GENL_HDRLEN;

/// The header of a nested attribute (length and type), which every list and list entry has.
const NEST_HEADER_LEN: usize = 4;

/// One SET_DEVICE message: its attributes and which peer changes of the update it carries
/// (whole or in part).
#[derive(Debug)]
pub(crate) struct SetMessage {
    pub attrs: Vec<WgDeviceAttrs>,
    /// Indices into [`DeviceUpdate::peers`]; empty when the message only sets the device.
    pub changes: Range<usize>,
}

impl Drop for SetMessage {
    fn drop(&mut self) {
        // The private and pre-shared keys only pass through these messages; wipe our copies.
        for attr in &mut self.attrs {
            match attr {
                WgDeviceAttrs::PrivateKey(key) => key.zeroize(),
                WgDeviceAttrs::Peers(peers) => {
                    for peer in peers {
                        for attr in &mut peer.0 {
                            if let WgPeerAttrs::PresharedKey(key) = attr {
                                key.zeroize();
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// A peer change that cannot be sent even in a message of its own (only possible with a limit
/// far below [`MAX_PAYLOAD_LEN`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooLarge {
    pub change: usize,
}

fn attrs_len<T: Emitable>(attrs: &[T]) -> usize {
    attrs.iter().map(Emitable::buffer_len).sum()
}

fn allowed_ip_nla(net: &IpNet) -> WgAllowedIp {
    let family = match net.addr() {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    };
    WgAllowedIp(vec![
        WgAllowedIpAttrs::Family(family),
        WgAllowedIpAttrs::IpAddr(net.addr()),
        WgAllowedIpAttrs::Cidr(net.prefix_len()),
    ])
}

/// Everything of a peer but its allowed IPs, as the first (or only) part of the peer carries it.
fn peer_head(config: &PeerConfig, flags: u32) -> Vec<WgPeerAttrs> {
    let mut attrs = vec![WgPeerAttrs::PublicKey(*config.public_key.as_bytes())];
    if flags != 0 {
        attrs.push(WgPeerAttrs::Flags(flags));
    }
    // Every field is set, as over UAPI: an all-zero PSK and keepalive 0 mean "none". An
    // absent endpoint is left out, and the kernel keeps the one it has (it may have roamed).
    attrs.push(WgPeerAttrs::PresharedKey(
        config
            .preshared_key
            .as_ref()
            .map_or([0u8; 32], |psk| *psk.as_bytes()),
    ));
    if let Some(endpoint) = config.endpoint {
        attrs.push(WgPeerAttrs::Endpoint(endpoint));
    }
    attrs.push(WgPeerAttrs::PersistentKeepalive(
        config.persistent_keepalive.unwrap_or(0),
    ));
    attrs
}

struct Builder {
    ifname: String,
    max_payload: usize,
    done: Vec<SetMessage>,
    /// The device attributes of the message being filled (IFNAME first).
    attrs: Vec<WgDeviceAttrs>,
    peers: Vec<WgPeer>,
    /// Bytes used by `attrs`, plus the peer list (its header included) when it is not empty.
    used: usize,
    changes: Option<Range<usize>>,
}

impl Builder {
    fn new(ifname: &str, max_payload: usize) -> Self {
        let attrs = vec![WgDeviceAttrs::IfName(ifname.to_owned())];
        Self {
            ifname: ifname.to_owned(),
            max_payload,
            done: Vec::new(),
            used: attrs_len(&attrs),
            attrs,
            peers: Vec::new(),
            changes: None,
        }
    }

    /// Whether the message being filled carries nothing but the device's name.
    fn is_bare(&self) -> bool {
        self.attrs.len() == 1 && self.peers.is_empty()
    }

    fn push_attr(&mut self, attr: WgDeviceAttrs) {
        self.used += attr.buffer_len();
        self.attrs.push(attr);
    }

    /// Room left for one more peer entry.
    fn room(&self) -> usize {
        let list_header = if self.peers.is_empty() {
            NEST_HEADER_LEN
        } else {
            0
        };
        self.max_payload.saturating_sub(self.used + list_header)
    }

    /// Room for a peer entry in a message that carries nothing else.
    fn empty_room(&self) -> usize {
        let bare = NEST_HEADER_LEN + WgDeviceAttrs::IfName(self.ifname.clone()).buffer_len();
        self.max_payload.saturating_sub(bare)
    }

    fn push_peer(&mut self, peer: WgPeer, change: usize) {
        if self.peers.is_empty() {
            self.used += NEST_HEADER_LEN;
        }
        self.used += peer.buffer_len();
        self.peers.push(peer);
        self.changes = Some(match self.changes.take() {
            Some(range) => range.start..change + 1,
            None => change..change + 1,
        });
    }

    fn flush(&mut self) {
        if self.is_bare() {
            return;
        }
        let mut attrs = std::mem::replace(
            &mut self.attrs,
            vec![WgDeviceAttrs::IfName(self.ifname.clone())],
        );
        if !self.peers.is_empty() {
            attrs.push(WgDeviceAttrs::Peers(std::mem::take(&mut self.peers)));
        }
        let changes = self.changes.take().unwrap_or(0..0);
        self.done.push(SetMessage { attrs, changes });
        self.used = attrs_len(&self.attrs);
    }

    /// Adds one peer change, continuing it over as many messages as its allowed IPs need.
    fn add_change(
        &mut self,
        index: usize,
        head: Vec<WgPeerAttrs>,
        ips: &[WgAllowedIp],
    ) -> Result<(), TooLarge> {
        let continuation = vec![head[0].clone()];
        let mut next = 0;
        let mut first = true;
        loop {
            let head = if first { &head } else { &continuation };
            let head_len = NEST_HEADER_LEN + attrs_len(head);
            // A part must carry its head and, if any are left, at least one allowed IP.
            let needed = head_len
                + ips
                    .get(next)
                    .map_or(0, |ip| NEST_HEADER_LEN + ip.buffer_len());
            let room = self.room();
            // A peer that fits a message of its own is never split: it goes to the next one.
            let whole = head_len
                + if ips.is_empty() {
                    0
                } else {
                    NEST_HEADER_LEN + attrs_len(&ips[next..])
                };
            if first && whole > room && !self.is_bare() && whole <= self.empty_room() {
                self.flush();
                continue;
            }
            if needed > room {
                if self.is_bare() {
                    return Err(TooLarge { change: index });
                }
                self.flush();
                continue;
            }
            let mut len = head_len;
            let mut end = next;
            if next < ips.len() {
                len += NEST_HEADER_LEN;
                while end < ips.len() && len + ips[end].buffer_len() <= room {
                    len += ips[end].buffer_len();
                    end += 1;
                }
            }
            let mut attrs = head.clone();
            if end > next {
                attrs.push(WgPeerAttrs::AllowedIps(ips[next..end].to_vec()));
            }
            self.push_peer(WgPeer(attrs), index);
            next = end;
            first = false;
            if next == ips.len() {
                return Ok(());
            }
            // The rest of this peer's allowed IPs go on in the next message.
            self.flush();
        }
    }
}

/// Splits `update` into SET_DEVICE messages whose attributes fit `max_payload` bytes each
/// ([`MAX_PAYLOAD_LEN`] in production), in order: the device's key and port first, then the
/// peer changes, a peer with many allowed IPs continued over several messages. An empty update
/// is no message at all.
pub(crate) fn set_device_messages(
    ifname: &str,
    update: &DeviceUpdate,
    max_payload: usize,
) -> Result<Vec<SetMessage>, TooLarge> {
    let mut b = Builder::new(ifname, max_payload);
    if let Some(key) = &update.private_key {
        b.push_attr(WgDeviceAttrs::PrivateKey(*key.as_bytes()));
    }
    if let Some(port) = update.listen_port {
        b.push_attr(WgDeviceAttrs::ListenPort(port));
    }
    for (index, change) in update.peers.iter().enumerate() {
        match change {
            PeerChange::Remove(key) => b.add_change(
                index,
                vec![
                    WgPeerAttrs::PublicKey(*key.as_bytes()),
                    WgPeerAttrs::Flags(WGPEER_F_REMOVE_ME),
                ],
                &[],
            )?,
            PeerChange::Add(config) => {
                let ips: Vec<_> = config.allowed_ips.iter().map(allowed_ip_nla).collect();
                b.add_change(index, peer_head(config, 0), &ips)?;
            }
            PeerChange::Update {
                config,
                replace_allowed_ips,
            } => {
                let flags = if *replace_allowed_ips {
                    WGPEER_F_REPLACE_ALLOWEDIPS
                } else {
                    0
                };
                let ips: Vec<_> = config.allowed_ips.iter().map(allowed_ip_nla).collect();
                b.add_change(index, peer_head(config, flags), &ips)?;
            }
        }
    }
    b.flush();
    Ok(b.done)
}

fn parse_allowed_ip(attrs: &WgAllowedIp) -> Result<IpNet, String> {
    let mut addr = None;
    let mut cidr = None;
    for attr in attrs.iter() {
        match attr {
            WgAllowedIpAttrs::IpAddr(a) => addr = Some(*a),
            WgAllowedIpAttrs::Cidr(c) => cidr = Some(*c),
            _ => {}
        }
    }
    match (addr, cidr) {
        (Some(addr), Some(cidr)) => IpNet::new(addr, cidr).map_err(|_| {
            format!("an allowed IP has prefix length {cidr}, too long for its family")
        }),
        _ => Err("an allowed IP lacks its address or prefix length".to_owned()),
    }
}

fn allowed_ips_of(peer: &WgPeer) -> Result<Vec<IpNet>, String> {
    let mut out = Vec::new();
    for attr in peer.iter() {
        if let WgPeerAttrs::AllowedIps(list) = attr {
            for ip in list {
                out.push(parse_allowed_ip(ip)?);
            }
        }
    }
    Ok(out)
}

fn public_key_of(peer: &WgPeer) -> Option<[u8; 32]> {
    peer.iter().find_map(|attr| match attr {
        WgPeerAttrs::PublicKey(key) => Some(*key),
        _ => None,
    })
}

fn parse_peer(key: [u8; 32], peer: &WgPeer) -> Result<PeerStatus, String> {
    let mut status = PeerStatus {
        config: PeerConfig {
            public_key: PublicKey::from_bytes(key),
            endpoint: None,
            allowed_ips: allowed_ips_of(peer)?,
            persistent_keepalive: None,
            preshared_key: None,
        },
        last_handshake: None,
        rx_bytes: 0,
        tx_bytes: 0,
    };
    for attr in peer.iter() {
        match attr {
            WgPeerAttrs::Endpoint(endpoint) => status.config.endpoint = Some(*endpoint),
            // The kernel reports "no keepalive" as 0 and "no PSK" as all zeros.
            WgPeerAttrs::PersistentKeepalive(secs) => {
                status.config.persistent_keepalive = Some(*secs).filter(|&s| s != 0);
            }
            WgPeerAttrs::PresharedKey(psk) => {
                status.config.preshared_key =
                    (*psk != [0u8; 32]).then(|| PresharedKey::from_bytes(*psk));
            }
            // And "never" as time 0.
            WgPeerAttrs::LastHandshake(time) => {
                status.last_handshake = Some(*time).filter(|&t| t != UNIX_EPOCH);
            }
            WgPeerAttrs::RxBytes(n) => status.rx_bytes = *n,
            WgPeerAttrs::TxBytes(n) => status.tx_bytes = *n,
            _ => {}
        }
    }
    Ok(status)
}

/// Reads one device out of the messages of a GET_DEVICE dump, merging a peer the kernel split
/// over two messages (the second part carries only the public key and more allowed IPs) into
/// one. The device's private key is never kept. Errors describe malformed data, without its
/// values.
pub(crate) fn merge_dump<'a>(
    name: &str,
    messages: impl IntoIterator<Item = &'a [WgDeviceAttrs]>,
) -> Result<DeviceStatus, String> {
    let mut device = DeviceStatus {
        name: name.to_owned(),
        public_key: None,
        listen_port: None,
        peers: Vec::new(),
    };
    for attrs in messages {
        for attr in attrs {
            match attr {
                WgDeviceAttrs::PublicKey(key) => {
                    device.public_key = Some(PublicKey::from_bytes(*key));
                }
                WgDeviceAttrs::ListenPort(port) => {
                    device.listen_port = Some(*port).filter(|&p| p != 0)
                }
                WgDeviceAttrs::Peers(peers) => {
                    for peer in peers {
                        let key = public_key_of(peer)
                            .ok_or_else(|| "a peer has no public key".to_owned())?;
                        match device.peers.last_mut() {
                            Some(last) if last.config.public_key.as_bytes() == &key => {
                                last.config.allowed_ips.extend(allowed_ips_of(peer)?);
                            }
                            _ => device.peers.push(parse_peer(key, peer)?),
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NetlinkMessage, NLM_F_MULTIPART};
    use netlink_packet_generic::GenlMessage;
    use netlink_packet_wireguard::{Wireguard, WireguardCmd};
    use std::net::SocketAddr;
    use std::time::{Duration, SystemTime};
    use wgcable_keys::PrivateKey;

    fn key(i: u32) -> PublicKey {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        k[31] = 1;
        PublicKey::from_bytes(k)
    }

    /// `n` dual-stack allowed IPs: 10.(i/256).(i%256).0/24 and fd00:i::/64.
    fn nets(n: u32) -> Vec<IpNet> {
        (0..n)
            .flat_map(|i| {
                let [_, _, hi, lo] = i.to_be_bytes();
                [
                    format!("10.{hi}.{lo}.0/24").parse().expect("v4"),
                    format!("fd00:{i:x}::/64").parse().expect("v6"),
                ]
            })
            .collect()
    }

    fn config(i: u32, n_nets: u32) -> PeerConfig {
        let [_, _, hi, lo] = i.to_be_bytes();
        PeerConfig {
            public_key: key(i),
            endpoint: Some(SocketAddr::from(([198, 18, hi, lo], 4500))),
            allowed_ips: nets(n_nets),
            persistent_keepalive: Some(10),
            preshared_key: Some(PresharedKey::from_bytes([0xAA; 32])),
        }
    }

    fn peers_of(message: &SetMessage) -> &[WgPeer] {
        message
            .attrs
            .iter()
            .find_map(|a| match a {
                WgDeviceAttrs::Peers(p) => Some(p.as_slice()),
                _ => None,
            })
            .unwrap_or(&[])
    }

    fn payload_len(message: &SetMessage) -> usize {
        attrs_len(&message.attrs)
    }

    /// What the kernel does with the messages, modelled on its own terms: each part of a peer is
    /// applied in order, flags only in effect where they are set.
    fn apply_like_the_kernel(messages: &[SetMessage]) -> Vec<(PublicKey, Vec<IpNet>, u32)> {
        let mut peers: Vec<(PublicKey, Vec<IpNet>, u32)> = Vec::new();
        for message in messages {
            for peer in peers_of(message) {
                let k = PublicKey::from_bytes(public_key_of(peer).expect("key"));
                let flags = peer
                    .iter()
                    .find_map(|a| match a {
                        WgPeerAttrs::Flags(f) => Some(*f),
                        _ => None,
                    })
                    .unwrap_or(0);
                let ips = allowed_ips_of(peer).expect("ips");
                match peers.iter_mut().find(|(pk, _, _)| *pk == k) {
                    Some(entry) => {
                        if flags & WGPEER_F_REPLACE_ALLOWEDIPS != 0 {
                            entry.1.clear();
                        }
                        entry.1.extend(ips);
                        entry.2 |= flags;
                    }
                    None => peers.push((k, ips, flags)),
                }
            }
        }
        peers
    }

    #[test]
    fn an_empty_update_is_no_message() {
        let messages =
            set_device_messages("wg0", &DeviceUpdate::default(), MAX_PAYLOAD_LEN).expect("fits");
        assert!(messages.is_empty());
    }

    #[test]
    fn a_small_update_is_one_message_with_key_and_port_first() {
        let update = DeviceUpdate {
            private_key: Some(PrivateKey::from_bytes([7; 32])),
            listen_port: Some(4500),
            peers: vec![
                PeerChange::Remove(key(3)),
                PeerChange::Update {
                    config: config(2, 1),
                    replace_allowed_ips: true,
                },
                PeerChange::Add(PeerConfig {
                    endpoint: None,
                    preshared_key: None,
                    persistent_keepalive: None,
                    ..config(1, 1)
                }),
            ],
        };
        let messages = set_device_messages("wg0", &update, MAX_PAYLOAD_LEN).expect("fits");
        assert_eq!(messages.len(), 1);
        let m = &messages[0];
        assert_eq!(m.changes, 0..3);
        assert_eq!(m.attrs[0], WgDeviceAttrs::IfName("wg0".to_owned()));
        assert_eq!(m.attrs[1], WgDeviceAttrs::PrivateKey([7; 32]));
        assert_eq!(m.attrs[2], WgDeviceAttrs::ListenPort(4500));
        let peers = peers_of(m);
        assert_eq!(
            peers[0].0,
            vec![
                WgPeerAttrs::PublicKey(*key(3).as_bytes()),
                WgPeerAttrs::Flags(WGPEER_F_REMOVE_ME)
            ]
        );
        assert!(peers[1].contains(&WgPeerAttrs::Flags(WGPEER_F_REPLACE_ALLOWEDIPS)));
        assert!(peers[1].contains(&WgPeerAttrs::PresharedKey([0xAA; 32])));
        assert!(peers[1].contains(&WgPeerAttrs::PersistentKeepalive(10)));
        // No endpoint: none is sent, so the kernel keeps the one it has.
        assert!(!peers[2]
            .iter()
            .any(|a| matches!(a, WgPeerAttrs::Endpoint(_))));
        assert!(peers[2].contains(&WgPeerAttrs::PresharedKey([0; 32])));
        assert!(peers[2].contains(&WgPeerAttrs::PersistentKeepalive(0)));
        assert!(!peers[2].iter().any(|a| matches!(a, WgPeerAttrs::Flags(_))));
    }

    #[test]
    fn ten_thousand_peers_split_into_messages_that_fit() {
        let update = DeviceUpdate {
            listen_port: Some(4500),
            peers: (0..10_000).map(|i| PeerChange::Add(config(i, 1))).collect(),
            ..DeviceUpdate::default()
        };
        let messages = set_device_messages("wg0", &update, MAX_PAYLOAD_LEN).expect("fits");
        assert!(messages.len() > 1);
        let mut next = 0;
        for m in &messages {
            let message = NetlinkMessage::from(GenlMessage::from_payload(Wireguard {
                cmd: WireguardCmd::SetDevice,
                nlas: m.attrs.clone(),
            }));
            assert!(
                message.buffer_len() <= MAX_MESSAGE_LEN,
                "{}",
                message.buffer_len()
            );
            // The messages carry consecutive, disjoint runs of the update's changes (a peer
            // that fits a message is never split).
            assert_eq!(m.changes.start, next);
            assert_eq!(peers_of(m).len(), m.changes.len());
            next = m.changes.end;
        }
        assert_eq!(next, 10_000);
        let applied = apply_like_the_kernel(&messages);
        assert_eq!(applied.len(), 10_000);
    }

    /// The defect of issue 12: wireguard_control refused ("invalid input parameter") a peer
    /// whose allowed IPs do not fit one message, so such a remote could never be configured.
    #[test]
    fn a_peer_with_a_thousand_allowed_ips_is_continued_over_messages() {
        let big = config(1, 500); // 1,000 allowed IPs, dual-stack
        let update = DeviceUpdate {
            peers: vec![
                PeerChange::Add(config(0, 1)),
                PeerChange::Update {
                    config: big.clone(),
                    replace_allowed_ips: true,
                },
                PeerChange::Add(config(2, 1)),
            ],
            ..DeviceUpdate::default()
        };
        let messages = set_device_messages("wg0", &update, MAX_PAYLOAD_LEN).expect("fits");
        assert!(messages.len() >= 3, "{} messages", messages.len());
        for m in &messages {
            assert!(payload_len(m) <= MAX_PAYLOAD_LEN);
        }
        // Every message after the first part of the big peer starts with its continuation:
        // the public key and allowed IPs only, no flags, no endpoint, no keepalive, no PSK.
        let parts: Vec<&WgPeer> = messages
            .iter()
            .flat_map(peers_of)
            .filter(|p| public_key_of(p) == Some(*big.public_key.as_bytes()))
            .collect();
        assert!(parts.len() >= 2);
        assert!(parts[0].contains(&WgPeerAttrs::Flags(WGPEER_F_REPLACE_ALLOWEDIPS)));
        for part in &parts[1..] {
            assert_eq!(part.len(), 2, "continuation: key and allowed IPs only");
            assert!(matches!(part[1], WgPeerAttrs::AllowedIps(_)));
        }
        for m in &messages {
            if peers_of(m).iter().any(|p| parts.contains(&p)) {
                assert!(m.changes.contains(&1));
            }
        }
        let applied = apply_like_the_kernel(&messages);
        assert_eq!(applied.len(), 3);
        assert_eq!(applied[1].0, big.public_key);
        assert_eq!(applied[1].1, big.allowed_ips, "every IP once, in order");
    }

    #[test]
    fn a_change_too_large_even_alone_is_refused_not_truncated() {
        let update = DeviceUpdate {
            peers: vec![PeerChange::Add(config(0, 1))],
            ..DeviceUpdate::default()
        };
        let err = set_device_messages("wg0", &update, 64).expect_err("tiny limit");
        assert_eq!(err, TooLarge { change: 0 });
    }

    /// Builds the messages a kernel dump would send for `peers`, splitting the allowed IPs of a
    /// peer wherever `split` says (peer index, allowed IPs in the first message), as the kernel
    /// does: the continuation has only the public key and the rest of the allowed IPs.
    fn dump(peers: &[PeerStatus], split: Option<(usize, usize)>) -> Vec<Vec<WgDeviceAttrs>> {
        let full = |p: &PeerStatus, ips: &[IpNet]| {
            let mut attrs = vec![
                WgPeerAttrs::PublicKey(*p.config.public_key.as_bytes()),
                WgPeerAttrs::PresharedKey(
                    p.config
                        .preshared_key
                        .as_ref()
                        .map_or([0; 32], |k| *k.as_bytes()),
                ),
                WgPeerAttrs::LastHandshake(p.last_handshake.unwrap_or(UNIX_EPOCH)),
                WgPeerAttrs::PersistentKeepalive(p.config.persistent_keepalive.unwrap_or(0)),
                WgPeerAttrs::TxBytes(p.tx_bytes),
                WgPeerAttrs::RxBytes(p.rx_bytes),
                WgPeerAttrs::ProtocolVersion(1),
            ];
            if let Some(e) = p.config.endpoint {
                attrs.push(WgPeerAttrs::Endpoint(e));
            }
            attrs.push(WgPeerAttrs::AllowedIps(
                ips.iter().map(allowed_ip_nla).collect(),
            ));
            WgPeer(attrs)
        };
        let device = vec![
            WgDeviceAttrs::ListenPort(4500),
            WgDeviceAttrs::Fwmark(0),
            WgDeviceAttrs::IfIndex(3),
            WgDeviceAttrs::IfName("wg0".to_owned()),
            WgDeviceAttrs::PrivateKey([9; 32]),
            WgDeviceAttrs::PublicKey([8; 32]),
        ];
        let Some((at, first_ips)) = split else {
            let mut m = device;
            m.push(WgDeviceAttrs::Peers(
                peers
                    .iter()
                    .map(|p| full(p, &p.config.allowed_ips))
                    .collect(),
            ));
            return vec![m];
        };
        let mut first = device;
        let mut list: Vec<WgPeer> = peers[..at]
            .iter()
            .map(|p| full(p, &p.config.allowed_ips))
            .collect();
        let split_peer = &peers[at];
        list.push(full(
            split_peer,
            &split_peer.config.allowed_ips[..first_ips],
        ));
        first.push(WgDeviceAttrs::Peers(list));
        let mut rest = vec![WgPeer(vec![
            WgPeerAttrs::PublicKey(*split_peer.config.public_key.as_bytes()),
            WgPeerAttrs::AllowedIps(
                split_peer.config.allowed_ips[first_ips..]
                    .iter()
                    .map(allowed_ip_nla)
                    .collect(),
            ),
        ])];
        rest.extend(
            peers[at + 1..]
                .iter()
                .map(|p| full(p, &p.config.allowed_ips)),
        );
        vec![first, vec![WgDeviceAttrs::Peers(rest)]]
    }

    fn status(i: u32, n_nets: u32) -> PeerStatus {
        PeerStatus {
            config: config(i, n_nets),
            last_handshake: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            rx_bytes: 100 + u64::from(i),
            tx_bytes: 200 + u64::from(i),
        }
    }

    /// Serializes the dump to bytes and parses it back, as it comes off the socket.
    fn through_the_wire(messages: Vec<Vec<WgDeviceAttrs>>) -> Vec<Vec<WgDeviceAttrs>> {
        messages
            .into_iter()
            .map(|nlas| {
                let mut m = NetlinkMessage::from(GenlMessage::from_payload(Wireguard {
                    cmd: WireguardCmd::GetDevice,
                    nlas,
                }));
                m.header.flags = NLM_F_MULTIPART;
                m.finalize();
                let mut buf = vec![0; m.buffer_len()];
                m.serialize(&mut buf);
                let parsed =
                    NetlinkMessage::<GenlMessage<Wireguard>>::deserialize(&buf).expect("parses");
                match parsed.payload {
                    netlink_packet_core::NetlinkPayload::InnerMessage(g) => g.payload.nlas,
                    other => panic!("unexpected {other:?}"),
                }
            })
            .collect()
    }

    /// The defect of issue 12: a peer split over two dump messages was read as two peers, the
    /// second without endpoint, keepalive, PSK or handshake (and it won).
    #[test]
    fn a_peer_split_over_two_dump_messages_reads_back_once_and_whole() {
        let peers: Vec<PeerStatus> = (0..16).map(|i| status(i, 2)).collect();
        let messages = through_the_wire(dump(&peers, Some((9, 1))));
        assert_eq!(messages.len(), 2);
        let device = merge_dump("wg0", messages.iter().map(Vec::as_slice)).expect("reads");
        assert_eq!(device.peers, peers);
        assert_eq!(device.listen_port, Some(4500));
        assert_eq!(device.public_key, Some(PublicKey::from_bytes([8; 32])));
    }

    #[test]
    fn a_dump_split_between_two_peers_needs_no_merge() {
        let peers: Vec<PeerStatus> = (0..5).map(|i| status(i, 3)).collect();
        // All of peer 2's allowed IPs in the first message, then an empty continuation.
        let messages = dump(&peers, Some((2, 6)));
        let device = merge_dump("wg0", messages.iter().map(Vec::as_slice)).expect("reads");
        assert_eq!(device.peers, peers);
    }

    #[test]
    fn dump_values_that_mean_none_read_as_none() {
        let mut peer = status(1, 1);
        peer.config.preshared_key = None;
        peer.config.persistent_keepalive = None;
        peer.config.endpoint = None;
        peer.last_handshake = None;
        let messages = dump(std::slice::from_ref(&peer), None);
        let device = merge_dump("wg0", messages.iter().map(Vec::as_slice)).expect("reads");
        assert_eq!(device.peers, vec![peer]);
    }

    #[test]
    fn malformed_dump_data_is_an_error_without_values() {
        let bad = vec![WgDeviceAttrs::Peers(vec![WgPeer(vec![
            WgPeerAttrs::PublicKey([1; 32]),
            WgPeerAttrs::AllowedIps(vec![WgAllowedIp(vec![
                WgAllowedIpAttrs::Family(AF_INET),
                WgAllowedIpAttrs::IpAddr([10, 0, 0, 0].into()),
                WgAllowedIpAttrs::Cidr(40),
            ])]),
        ])])];
        let err = merge_dump("wg0", [bad.as_slice()]).expect_err("cidr 40");
        assert!(err.contains("prefix length 40"), "{err}");
        assert!(!err.contains("10.0.0.0"), "{err}");
        let keyless = vec![WgDeviceAttrs::Peers(vec![WgPeer(vec![])])];
        assert!(merge_dump("wg0", [keyless.as_slice()]).is_err());
    }

    /// What is written, split over messages, reads back equal after the kernel's own split of
    /// the dump (at any point).
    #[test]
    fn written_and_dumped_round_trip() {
        // 4 x 200 allowed IPs stay below the 64 KiB a netlink attribute can hold.
        let peers: Vec<PeerStatus> = (0..4).map(|i| status(i, 100)).collect();
        for split in [None, Some((0, 1)), Some((1, 199)), Some((3, 150))] {
            let messages = through_the_wire(dump(&peers, split));
            let device = merge_dump("wg0", messages.iter().map(Vec::as_slice)).expect("reads");
            assert_eq!(device.peers, peers, "split {split:?}");
        }
    }
}
