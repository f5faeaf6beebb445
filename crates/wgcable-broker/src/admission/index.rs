//! Who holds which subnet, key and gateway address: ordered lookups, so that judging one
//! object costs O(its subnets x log n), not a scan of every cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use wgcable_api::PublicKey;

/// A prefix as an address range: (is IPv6, first, last).
fn range(net: &IpNet) -> (bool, u128, u128) {
    match net {
        IpNet::V4(n) => (
            false,
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
        ),
        IpNet::V6(n) => (true, u128::from(n.network()), u128::from(n.broadcast())),
    }
}

fn point(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(a) => (false, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

/// A cluster's subnets merged into disjoint ranges (a cluster may publish nested ones).
fn merged(nets: &[IpNet]) -> Vec<(bool, u128, u128)> {
    let mut ranges: Vec<_> = nets.iter().map(range).collect();
    ranges.sort();
    let mut out: Vec<(bool, u128, u128)> = Vec::with_capacity(ranges.len());
    for (v6, start, end) in ranges {
        match out.last_mut() {
            Some(last) if last.0 == v6 && start <= last.2 => last.2 = last.2.max(end),
            _ => out.push((v6, start, end)),
        }
    }
    out
}

/// The subnets of every cluster that holds some, as disjoint ranges keyed by their start.
///
/// Ranges of different clusters never overlap (an overlapping claim is refused before it is
/// inserted), and each cluster's own are merged, so a range overlapping `[s, e]` either
/// starts inside it or is the one range that starts before `s` and reaches it.
#[derive(Debug, Default)]
pub struct SubnetIndex {
    by_start: BTreeMap<(bool, u128), (u128, String)>,
}

impl SubnetIndex {
    pub fn insert(&mut self, cluster: &str, nets: &[IpNet]) {
        for (v6, start, end) in merged(nets) {
            self.by_start.insert((v6, start), (end, cluster.to_owned()));
        }
    }

    pub fn remove(&mut self, cluster: &str, nets: &[IpNet]) {
        for (v6, start, _) in merged(nets) {
            if self
                .by_start
                .get(&(v6, start))
                .is_some_and(|(_, c)| c == cluster)
            {
                self.by_start.remove(&(v6, start));
            }
        }
    }

    /// A cluster other than `except` holding part of `net`.
    pub fn overlapping(&self, net: &IpNet, except: &str) -> Option<&str> {
        let (v6, start, end) = range(net);
        let before = self
            .by_start
            .range(..(v6, start))
            .next_back()
            .filter(|((cv6, _), (cend, _))| *cv6 == v6 && *cend >= start);
        before
            .into_iter()
            .chain(self.by_start.range((v6, start)..=(v6, end)))
            .map(|(_, (_, c))| c.as_str())
            .find(|c| *c != except)
    }

    /// The cluster other than `except` whose subnets contain `ip`.
    pub fn owner_of(&self, ip: IpAddr, except: &str) -> Option<&str> {
        let (v6, at) = point(ip);
        self.by_start
            .range(..=(v6, at))
            .next_back()
            .filter(|((cv6, _), (cend, c))| *cv6 == v6 && *cend >= at && c != except)
            .map(|(_, (_, c))| c.as_str())
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_start.len()
    }
}

/// The endpoint addresses of every remote gateway (two clusters behind NAT may share a
/// private address, so one address may belong to several).
#[derive(Debug, Default)]
pub struct GatewayIndex {
    ips: BTreeSet<(IpAddr, String)>,
}

impl GatewayIndex {
    pub fn insert(&mut self, cluster: &str, ips: &[IpAddr]) {
        for ip in ips {
            self.ips.insert((*ip, cluster.to_owned()));
        }
    }

    pub fn remove(&mut self, cluster: &str, ips: &[IpAddr]) {
        for ip in ips {
            self.ips.remove(&(*ip, cluster.to_owned()));
        }
    }

    /// A gateway address of a cluster other than `except` inside `net`.
    pub fn inside(&self, net: &IpNet, except: &str) -> Option<(IpAddr, &str)> {
        let (first, last) = match net {
            IpNet::V4(n) => (IpAddr::V4(n.network()), IpAddr::V4(n.broadcast())),
            IpNet::V6(n) => (IpAddr::V6(n.network()), IpAddr::V6(n.broadcast())),
        };
        self.ips
            .range((first, String::new())..)
            .take_while(|(ip, _)| *ip <= last)
            .find(|(_, c)| c != except)
            .map(|(ip, c)| (*ip, c.as_str()))
    }
}

/// Which cluster holds each public key.
#[derive(Debug, Default)]
pub struct KeyIndex {
    keys: HashMap<PublicKey, String>,
}

impl KeyIndex {
    pub fn insert(&mut self, cluster: &str, key: PublicKey) {
        self.keys.insert(key, cluster.to_owned());
    }

    pub fn remove(&mut self, cluster: &str, key: &PublicKey) {
        if self.keys.get(key).is_some_and(|c| c == cluster) {
            self.keys.remove(key);
        }
    }

    pub fn holder(&self, key: &PublicKey, except: &str) -> Option<&str> {
        self.keys
            .get(key)
            .map(String::as_str)
            .filter(|c| *c != except)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().expect("test CIDR")
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    #[test]
    fn overlaps_are_found_in_both_directions_and_per_family() {
        let mut index = SubnetIndex::default();
        index.insert("a", &[net("10.1.0.0/16"), net("10.1.2.0/24")]);
        index.insert("b", &[net("10.3.0.0/16"), net("fd00:3::/48")]);
        assert_eq!(index.len(), 3, "a's nested subnets are merged");
        let cases = [
            ("10.1.5.0/24", Some("a")), // inside
            ("10.0.0.0/8", Some("a")),  // covers a (and b)
            ("10.2.0.0/16", None),      // between
            ("10.3.255.0/24", Some("b")),
            ("10.4.0.0/16", None),
            ("fd00:3:0:1::/64", Some("b")),
            ("fd00:4::/48", None),
            ("0.0.0.0/1", Some("a")),
        ];
        for (probe, want) in cases {
            assert_eq!(index.overlapping(&net(probe), ""), want, "{probe}");
        }
        // A cluster never conflicts with itself, but a wider probe still finds the others.
        assert_eq!(index.overlapping(&net("10.1.0.0/16"), "a"), None);
        assert_eq!(index.overlapping(&net("10.0.0.0/8"), "a"), Some("b"));
        index.remove("a", &[net("10.1.0.0/16"), net("10.1.2.0/24")]);
        assert_eq!(index.overlapping(&net("10.0.0.0/8"), ""), Some("b"));
        assert_eq!(index.overlapping(&net("10.1.0.0/16"), ""), None);
    }

    #[test]
    fn owners_of_addresses() {
        let mut index = SubnetIndex::default();
        index.insert("a", &[net("10.1.0.0/16")]);
        assert_eq!(index.owner_of(ip("10.1.200.3"), ""), Some("a"));
        assert_eq!(index.owner_of(ip("10.1.200.3"), "a"), None);
        assert_eq!(index.owner_of(ip("10.2.0.1"), ""), None);
        assert_eq!(
            index.owner_of(ip("::a01:1"), ""),
            None,
            "families never mix"
        );
    }

    #[test]
    fn gateway_addresses_inside_a_subnet() {
        let mut index = GatewayIndex::default();
        index.insert("a", &[ip("192.168.7.3"), ip("203.0.113.1")]);
        index.insert("b", &[ip("192.168.7.3")]);
        assert_eq!(
            index.inside(&net("192.168.7.0/24"), "a"),
            Some((ip("192.168.7.3"), "b"))
        );
        assert_eq!(
            index.inside(&net("192.168.7.0/24"), "c").map(|(_, c)| c),
            Some("a")
        );
        assert_eq!(index.inside(&net("192.168.8.0/24"), ""), None);
        index.remove("b", &[ip("192.168.7.3")]);
        assert_eq!(index.inside(&net("192.168.7.0/24"), "a"), None);
    }
}
