//! An index of IP prefixes that answers "which of these overlap that one" without a scan.
//!
//! Two prefixes overlap exactly when one contains the other. The ones that contain `p` are
//! `p`'s ancestors: at most one per prefix length, found by exact lookups of `p` truncated to
//! each length present in the index. The ones `p` contains start inside `p`'s range: one
//! ordered range query. So a lookup costs a few `BTreeMap` probes whatever the index holds.
//!
//! Written here rather than taken from a crate: the prefix-trie crates on crates.io answer
//! longest-prefix match, not "every overlapping prefix" with a value per prefix, and this is
//! forty lines over `BTreeMap`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// (is IPv6, first address, prefix length): sorts the prefixes of a family by their start.
type Key = (bool, u128, u8);

fn key(net: &IpNet) -> Key {
    let net = net.trunc();
    match net {
        IpNet::V4(n) => (false, u128::from(u32::from(n.network())), n.prefix_len()),
        IpNet::V6(n) => (true, u128::from(n.network()), n.prefix_len()),
    }
}

/// The last address of `net`, in the same numbering as [`key`].
fn last(net: &IpNet) -> u128 {
    match net.trunc() {
        IpNet::V4(n) => u128::from(u32::from(n.broadcast())),
        IpNet::V6(n) => u128::from(n.broadcast()),
    }
}

fn net_of(key: &Key) -> IpNet {
    let (v6, start, len) = *key;
    let addr: IpAddr = if v6 {
        Ipv6Addr::from(start).into()
    } else {
        // Keys of IPv4 prefixes are built from a u32, so this cannot truncate.
        Ipv4Addr::from(start as u32).into()
    };
    IpNet::new(addr, len).expect("keys are built from valid prefixes")
}

/// `start` with only its first `len` bits kept, in a family of `bits` bits (an IPv4 key
/// lives in the low 32 bits, so the mask's higher bits meet only zeros).
fn truncate(start: u128, len: u8, bits: u8) -> u128 {
    if len == 0 {
        0
    } else {
        start & (u128::MAX << u32::from(bits - len))
    }
}

/// Prefixes (normalized: host bits dropped) with a value each.
#[derive(Debug, Clone)]
pub(crate) struct PrefixIndex<V> {
    map: BTreeMap<Key, V>,
    /// How many prefixes of each length each family holds, so ancestor lookups only probe
    /// lengths that exist (usually one or two).
    lengths: [BTreeMap<u8, usize>; 2],
}

impl<V> Default for PrefixIndex<V> {
    fn default() -> Self {
        PrefixIndex {
            map: BTreeMap::new(),
            lengths: [BTreeMap::new(), BTreeMap::new()],
        }
    }
}

impl<V> PrefixIndex<V> {
    pub(crate) fn get_mut(&mut self, net: &IpNet) -> Option<&mut V> {
        self.map.get_mut(&key(net))
    }

    /// Inserts or replaces the value of `net`; returns the old one.
    pub(crate) fn insert(&mut self, net: &IpNet, value: V) -> Option<V> {
        let k = key(net);
        let old = self.map.insert(k, value);
        if old.is_none() {
            *self.lengths[usize::from(k.0)].entry(k.2).or_default() += 1;
        }
        old
    }

    pub(crate) fn remove(&mut self, net: &IpNet) -> Option<V> {
        let k = key(net);
        let old = self.map.remove(&k)?;
        let counts = &mut self.lengths[usize::from(k.0)];
        if let Some(n) = counts.get_mut(&k.2) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&k.2);
            }
        }
        Some(old)
    }

    /// Every prefix that overlaps `net` (contains it, equals it, or lies inside it), with its
    /// value: ancestors from the widest, then the rest in address order.
    pub(crate) fn overlapping<'a>(
        &'a self,
        net: &IpNet,
    ) -> impl Iterator<Item = (IpNet, &'a V)> + 'a {
        let (v6, start, len) = key(net);
        let bits = if v6 { 128 } else { 32 };
        let ancestors = self.lengths[usize::from(v6)]
            .keys()
            .copied()
            .filter(move |&l| l < len)
            .filter_map(move |l| {
                let k = (v6, truncate(start, l, bits), l);
                self.map.get(&k).map(|v| (net_of(&k), v))
            });
        let inside = self
            .map
            .range((v6, start, 0)..=(v6, last(net), u8::MAX))
            .map(|(k, v)| (net_of(k), v));
        ancestors.chain(inside)
    }

    /// Some prefix that overlaps `net`, if there is one.
    pub(crate) fn any_overlapping(&self, net: &IpNet) -> Option<(IpNet, &V)> {
        self.overlapping(net).next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test prefix")
    }

    fn overlaps(a: &IpNet, b: &IpNet) -> bool {
        a.contains(&b.network()) || b.contains(&a.network())
    }

    #[test]
    fn finds_exactly_the_overlaps_a_scan_finds() {
        let held = [
            "10.0.0.0/16",
            "10.0.1.0/24",
            "10.1.2.0/24",
            "192.168.0.0/30",
            "fd00:1::/48",
            "fd00:2:0:5::/64",
            "172.16.0.0/12",
            "0.0.0.0/1",
        ];
        let mut index = PrefixIndex::default();
        for (i, h) in held.iter().enumerate() {
            index.insert(&net(h), i);
        }
        let probes = [
            "10.0.5.0/24",
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.1.2.128/25",
            "10.2.0.0/16",
            "192.168.0.2/31",
            "192.168.0.4/30",
            "0.0.0.0/0",
            "fd00::/16",
            "fd00:2::/48",
            "fd00:3::/48",
            "fd00:1:0:1::/64",
            "172.31.0.0/16",
            "172.32.0.0/16",
            "200.0.0.0/8",
            "::/0",
            "10.0.1.7/32",
        ];
        for p in probes {
            let probe = net(p);
            let mut scan: Vec<IpNet> = held
                .iter()
                .map(|h| net(h))
                .filter(|h| overlaps(&probe, h))
                .collect();
            let mut found: Vec<IpNet> = index.overlapping(&probe).map(|(n, _)| n).collect();
            scan.sort();
            found.sort();
            assert_eq!(found, scan, "{p}");
            assert_eq!(
                index.any_overlapping(&probe).is_some(),
                !scan.is_empty(),
                "{p}"
            );
        }
    }

    #[test]
    fn removal_forgets_the_prefix_and_its_length() {
        let mut index = PrefixIndex::default();
        index.insert(&net("10.0.0.0/8"), "a");
        index.insert(&net("10.1.0.0/16"), "b");
        assert_eq!(index.remove(&net("10.0.0.0/8")), Some("a"));
        assert_eq!(index.remove(&net("10.0.0.0/8")), None);
        let found: Vec<_> = index.overlapping(&net("10.1.2.0/24")).collect();
        assert_eq!(found, vec![(net("10.1.0.0/16"), &"b")]);
        assert!(index.any_overlapping(&net("10.2.0.0/16")).is_none());
        // Host bits do not matter.
        assert_eq!(index.insert(&net("10.1.9.9/16"), "c"), Some("b"));
    }
}
