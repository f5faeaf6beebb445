//! What a remote cluster may claim: the subnet and address rules of admission.
//!
//! [`EndpointSpec::validate`](crate::EndpointSpec::validate) checks that an Endpoint is well
//! formed; [`AdmissionPolicy::check_remote`] checks that what it claims is safe to install on
//! this gateway: its subnets (routes in table 150 through the tunnel) must not capture the
//! underlay, the gateways' own endpoint IPs, special-purpose ranges or the local cluster, and
//! its endpoint IPs (where WireGuard sends) must be ordinary unicast addresses that are not our
//! own. All checks are pure and return every problem, each a [`ValidationError`] with a stable
//! [`Reason`]. Messages contain only parsed addresses and CIDRs, the configured limits and the
//! names of the ranges (see [`ValidationError`] for why those are safe to log).
//!
//! # Special-purpose ranges
//! From IANA's IPv4 and IPv6 Special-Purpose Address Registries; a remote subnet that
//! *overlaps* a refused range (in either direction: `128.0.0.0/1` contains `224.0.0.0/4`) is
//! refused. Decisions, one by one:
//!
//! | range | as a remote subnet | as an endpoint IP | why |
//! |---|---|---|---|
//! | `0.0.0.0/8` this network | refused | refused | not a destination |
//! | `127.0.0.0/8`, `::1/128` loopback | refused | refused | the host itself |
//! | `169.254.0.0/16`, `fe80::/10` link-local | refused | refused | per link; holds cloud metadata (169.254.169.254) |
//! | `224.0.0.0/4`, `ff00::/8` multicast | refused | refused | not unicast |
//! | `240.0.0.0/4` reserved, `255.255.255.255/32` broadcast | refused | refused | not usable |
//! | `192.0.0.0/24` IETF protocol assignments | refused | refused | protocol use only |
//! | `192.88.99.0/24` 6to4 relay anycast | refused | refused | deprecated relay |
//! | `::/128` unspecified, `::/96` v4-compatible | refused | refused | not a destination; deprecated |
//! | `::ffff:0:0/96` v4-mapped | refused | refused | an IPv4 address in disguise, a bypass of the IPv4 rules |
//! | `100::/64` discard-only | refused | refused | traffic is dropped |
//! | `2001::/23` IETF protocol assignments (Teredo, ORCHID, ...) | refused | allowed | tunnels to the Internet; a Teredo peer is still reachable |
//! | `2002::/16` 6to4 | refused | allowed | embeds IPv4 underlay addresses; a 6to4 peer is still reachable |
//! | `64:ff9b::/96`, `64:ff9b:1::/48` NAT64 | refused | allowed | capturing them hijacks the node's NAT64 traffic; an IPv6-only node reaches an IPv4 gateway through them |
//! | `fec0::/10` site-local | refused | refused | deprecated |
//! | `10/8`, `172.16/12`, `192.168/16`, `fc00::/7` private | allowed | allowed | what clusters use |
//! | `100.64.0.0/10` shared (CGN) | allowed | allowed | Submariner and kind use `100.x` for service CIDRs |
//! | `192.0.2/24`, `198.51.100/24`, `203.0.113/24`, `2001:db8::/32`, `3fff::/20` documentation; `198.18.0.0/15` benchmarking | allowed | allowed | never routed on the Internet, so capturing them disturbs nothing, and labs and tests use them; restrict them with the allow-list |
//!
//! The default route (`0.0.0.0/0`, `::/0`) is already refused by validation.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::validate::{Reason, ValidatedSpec, ValidationError};

/// Where a special-purpose range is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// As a remote subnet and as an endpoint address.
    Both,
    /// Only as a remote subnet.
    Subnet,
}

/// A special-purpose range and the name shown in messages.
#[derive(Debug, Clone, Copy)]
pub struct SpecialRange {
    pub net: IpNet,
    pub name: &'static str,
    refused: Refused,
}

fn net(text: &str) -> IpNet {
    text.parse()
        .expect("the special-purpose table holds valid CIDRs")
}

/// The special-purpose ranges this module refuses; see the module documentation.
pub fn special_purpose_ranges() -> Vec<SpecialRange> {
    use Refused::{Both, Subnet};
    [
        ("0.0.0.0/8", "\"this network\"", Both),
        ("127.0.0.0/8", "loopback", Both),
        ("169.254.0.0/16", "link-local", Both),
        ("224.0.0.0/4", "multicast", Both),
        ("240.0.0.0/4", "reserved (and broadcast)", Both),
        ("192.0.0.0/24", "IETF protocol assignments", Both),
        ("192.88.99.0/24", "6to4 relay anycast", Both),
        ("::/128", "unspecified", Both),
        ("::1/128", "loopback", Both),
        ("::/96", "IPv4-compatible", Both),
        ("::ffff:0:0/96", "IPv4-mapped", Both),
        ("100::/64", "discard-only", Both),
        ("fe80::/10", "link-local", Both),
        ("fec0::/10", "site-local (deprecated)", Both),
        ("ff00::/8", "multicast", Both),
        ("2001::/23", "IETF protocol assignments", Subnet),
        ("2002::/16", "6to4", Subnet),
        ("64:ff9b::/96", "NAT64", Subnet),
        ("64:ff9b:1::/48", "local-use NAT64", Subnet),
    ]
    .into_iter()
    .map(|(text, name, refused)| SpecialRange {
        net: net(text),
        name,
        refused,
    })
    .collect()
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The context admission needs about this gateway and the operator's wishes.
///
/// Defaults: no underlay, local subnets or gateways known (fill them in), no allow-list (any
/// subnet that passes the other rules), nothing broader than a /8 for IPv4 and a /32 for IPv6.
/// A /8 is the largest block one private range (`10.0.0.0/8`) offers and more than any
/// cluster's pod and service CIDRs together; a /32 is the smallest IPv6 block a registry hands
/// an operator, while clusters use a /48 to a /64. Anything broader than these captures traffic
/// that is not the remote cluster's (`128.0.0.0/1` took the underlay into the tunnel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionPolicy {
    /// This gateway's own underlay addresses (private and public IPs, the address the tunnel's
    /// packets leave from). No remote subnet may cover them; no remote may use them.
    pub local_underlay: Vec<IpAddr>,
    /// The local cluster's subnets. No remote subnet may overlap them.
    pub local_subnets: Vec<IpNet>,
    /// When not empty, every remote subnet must lie inside one of these.
    pub allowed_subnets: Vec<IpNet>,
    /// The broadest IPv4 prefix a remote may claim (smallest prefix length). Default 8.
    pub min_prefix_len_v4: u8,
    /// The broadest IPv6 prefix a remote may claim (smallest prefix length). Default 32.
    pub min_prefix_len_v6: u8,
}

impl Default for AdmissionPolicy {
    fn default() -> Self {
        Self {
            local_underlay: Vec::new(),
            local_subnets: Vec::new(),
            allowed_subnets: Vec::new(),
            min_prefix_len_v4: 8,
            min_prefix_len_v6: 32,
        }
    }
}

/// One problem found by a check, before it is attached to a field.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Problem {
    pub reason: Reason,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

fn problem(reason: Reason, message: String) -> Problem {
    Problem { reason, message }
}

impl AdmissionPolicy {
    /// Every problem with one remote subnet. `gateway_ips` are the endpoint IPs of every
    /// remote gateway (the one publishing `subnet` included): a subnet covering one of them
    /// would route the tunnel's own packets into the tunnel.
    pub fn check_remote_subnet(&self, subnet: IpNet, gateway_ips: &[IpAddr]) -> Vec<Problem> {
        let mut problems = Vec::new();
        for range in special_purpose_ranges() {
            if overlaps(&subnet, &range.net) {
                problems.push(problem(
                    Reason::SubnetSpecialPurpose,
                    format!(
                        "{subnet} overlaps the {} range {}; a remote cluster may only claim \
                         ordinary unicast ranges",
                        range.name, range.net
                    ),
                ));
            }
        }
        let min = match subnet {
            IpNet::V4(_) => self.min_prefix_len_v4,
            IpNet::V6(_) => self.min_prefix_len_v6,
        };
        if subnet.prefix_len() < min {
            problems.push(problem(
                Reason::SubnetTooBroad,
                format!(
                    "{subnet} is broader than /{min}, the broadest prefix a remote cluster may \
                     claim (raise the limit if this is really one cluster's range)"
                ),
            ));
        }
        if !self.allowed_subnets.is_empty()
            && !self
                .allowed_subnets
                .iter()
                .any(|allowed| allowed.contains(&subnet))
        {
            problems.push(problem(
                Reason::SubnetNotAllowed,
                format!(
                    "{subnet} is outside the subnets remote clusters may claim (the operator's \
                     allow-list)"
                ),
            ));
        }
        for ip in &self.local_underlay {
            if subnet.contains(ip) {
                problems.push(problem(
                    Reason::SubnetCoversUnderlay,
                    format!(
                        "{subnet} covers this gateway's underlay address {ip}; installing it \
                         would route the gateway's own traffic into the tunnel"
                    ),
                ));
            }
        }
        for ip in gateway_ips {
            if subnet.contains(ip) {
                problems.push(problem(
                    Reason::SubnetCoversGateway,
                    format!(
                        "{subnet} covers the gateway endpoint address {ip}; the tunnel's own \
                         packets would be routed into the tunnel"
                    ),
                ));
            }
        }
        for local in &self.local_subnets {
            if overlaps(&subnet, local) {
                problems.push(problem(
                    Reason::SubnetOverlapsLocal,
                    format!("{subnet} overlaps the local cluster's subnet {local}"),
                ));
            }
        }
        problems
    }

    /// Every problem with one address a remote publishes as where to reach its gateway
    /// (private, public or health-check IP).
    pub fn check_remote_address(&self, ip: IpAddr) -> Vec<Problem> {
        let mut problems = Vec::new();
        let host = IpNet::from(ip);
        for range in special_purpose_ranges() {
            if range.refused == Refused::Both && range.net.contains(&host) {
                problems.push(problem(
                    Reason::AddressSpecialPurpose,
                    format!(
                        "{ip} is in the {} range {}, not an address a remote gateway can \
                         have",
                        range.name, range.net
                    ),
                ));
            }
        }
        if self.local_underlay.contains(&ip) {
            problems.push(problem(
                Reason::AddressIsLocal,
                format!("{ip} is this gateway's own address"),
            ));
        }
        problems
    }

    /// Every problem with what `remote` claims. `other_gateway_ips` are the endpoint IPs
    /// (private and public) of the other accepted remote gateways; the remote's own are added.
    pub fn check_remote(
        &self,
        remote: &ValidatedSpec,
        other_gateway_ips: &[IpAddr],
    ) -> Vec<ValidationError> {
        let mut errors = Vec::new();
        let mut gateway_ips: Vec<IpAddr> = other_gateway_ips.to_vec();
        gateway_ips.extend(remote.private_ips.iter().chain(&remote.public_ips));
        gateway_ips.sort();
        gateway_ips.dedup();
        let mut add = |field: String, problems: Vec<Problem>| {
            errors.extend(problems.into_iter().map(|p| ValidationError {
                field: field.clone(),
                reason: p.reason,
                message: p.message,
            }));
        };
        for (i, subnet) in remote.subnets.iter().enumerate() {
            add(
                format!("spec.subnets[{i}]"),
                self.check_remote_subnet(*subnet, &gateway_ips),
            );
        }
        // ValidatedSpec merges the single and list fields, so the list name is the field.
        for (field, ips) in [
            ("spec.private_ips", &remote.private_ips),
            ("spec.public_ips", &remote.public_ips),
            ("spec.healthCheckIPs", &remote.health_check_ips),
        ] {
            for (i, ip) in ips.iter().enumerate() {
                add(format!("{field}[{i}]"), self.check_remote_address(*ip));
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    fn policy() -> AdmissionPolicy {
        AdmissionPolicy {
            local_underlay: vec![ip("192.168.77.2"), ip("fd77::2")],
            local_subnets: vec![net("10.1.0.0/16"), net("fd00:1::/56")],
            ..AdmissionPolicy::default()
        }
    }

    fn reasons(problems: &[Problem]) -> Vec<Reason> {
        let mut reasons: Vec<Reason> = problems.iter().map(|p| p.reason).collect();
        reasons.sort();
        reasons.dedup();
        reasons
    }

    #[test]
    fn remote_subnet_rules() {
        use Reason::*;
        let gateways = [ip("192.168.77.3"), ip("203.0.113.9")];
        let cases: &[(&str, &[Reason])] = &[
            // Ordinary cluster ranges.
            ("10.2.0.0/16", &[]),
            ("100.2.0.0/16", &[]),
            ("172.16.0.0/12", &[]),
            ("10.0.0.0/8", &[SubnetOverlapsLocal]),
            ("fd00:2::/56", &[]),
            ("192.0.2.0/24", &[]),
            ("198.18.0.0/15", &[]),
            ("2001:db8::/48", &[]),
            // What the issue reproduced.
            (
                "128.0.0.0/1",
                &[
                    SubnetSpecialPurpose,
                    SubnetTooBroad,
                    SubnetCoversUnderlay,
                    SubnetCoversGateway,
                ],
            ),
            (
                "192.168.77.0/24",
                &[SubnetCoversUnderlay, SubnetCoversGateway],
            ),
            ("192.168.77.3/32", &[SubnetCoversGateway]),
            ("203.0.113.0/24", &[SubnetCoversGateway]),
            ("224.0.0.0/4", &[SubnetSpecialPurpose, SubnetTooBroad]),
            ("239.1.0.0/16", &[SubnetSpecialPurpose]),
            ("169.254.0.0/16", &[SubnetSpecialPurpose]),
            ("169.254.169.254/32", &[SubnetSpecialPurpose]),
            ("127.0.0.0/8", &[SubnetSpecialPurpose]),
            ("0.0.0.0/8", &[SubnetSpecialPurpose]),
            ("255.255.255.255/32", &[SubnetSpecialPurpose]),
            ("240.0.0.0/4", &[SubnetSpecialPurpose, SubnetTooBroad]),
            ("192.0.0.0/24", &[SubnetSpecialPurpose]),
            ("::ffff:0:0/96", &[SubnetSpecialPurpose]),
            ("::ffff:10.2.0.0/112", &[SubnetSpecialPurpose]),
            ("::/96", &[SubnetSpecialPurpose]),
            ("::1/128", &[SubnetSpecialPurpose]),
            ("fe80::/64", &[SubnetSpecialPurpose]),
            ("ff02::/32", &[SubnetSpecialPurpose]),
            ("fec0::/48", &[SubnetSpecialPurpose]),
            ("64:ff9b::/96", &[SubnetSpecialPurpose]),
            ("2001::/32", &[SubnetSpecialPurpose]),
            ("2002::/16", &[SubnetSpecialPurpose, SubnetTooBroad]),
            ("100::/64", &[SubnetSpecialPurpose]),
            // Too broad, without touching anything special.
            ("64.0.0.0/3", &[SubnetTooBroad]),
            ("11.0.0.0/8", &[]),
            (
                "fc00::/7",
                &[SubnetTooBroad, SubnetCoversUnderlay, SubnetOverlapsLocal],
            ),
            ("fd00:2::/32", &[]),
            ("2400::/16", &[SubnetTooBroad]),
            // Local overlaps, both directions.
            ("10.1.2.0/24", &[SubnetOverlapsLocal]),
            ("fd00:1:0:1::/64", &[SubnetOverlapsLocal]),
            ("fd77::/64", &[SubnetCoversUnderlay]),
        ];
        let policy = policy();
        for (text, want) in cases {
            let problems = policy.check_remote_subnet(net(text), &gateways);
            assert_eq!(reasons(&problems), *want, "{text}: {problems:?}");
            for p in &problems {
                assert!(!p.message.is_empty());
            }
        }
    }

    #[test]
    fn the_allow_list_and_prefix_limits_are_the_operators() {
        let policy = AdmissionPolicy {
            allowed_subnets: vec![net("10.0.0.0/8"), net("fd00::/16")],
            min_prefix_len_v4: 16,
            min_prefix_len_v6: 48,
            ..AdmissionPolicy::default()
        };
        let cases: &[(&str, &[Reason])] = &[
            ("10.2.0.0/16", &[]),
            ("10.2.0.0/15", &[Reason::SubnetTooBroad]),
            ("10.0.0.0/8", &[Reason::SubnetTooBroad]),
            ("100.2.0.0/16", &[Reason::SubnetNotAllowed]),
            ("fd00:2::/56", &[]),
            ("fd00::/40", &[Reason::SubnetTooBroad]),
            ("fd01::/48", &[Reason::SubnetNotAllowed]),
        ];
        for (text, want) in cases {
            let problems = policy.check_remote_subnet(net(text), &[]);
            assert_eq!(reasons(&problems), *want, "{text}: {problems:?}");
        }
        let message = &policy.check_remote_subnet(net("10.0.0.0/8"), &[])[0].message;
        assert_eq!(
            message,
            "10.0.0.0/8 is broader than /16, the broadest prefix a remote cluster may claim \
             (raise the limit if this is really one cluster's range)"
        );
    }

    #[test]
    fn remote_address_rules() {
        use Reason::*;
        let cases: &[(&str, &[Reason])] = &[
            ("172.18.0.9", &[]),
            ("203.0.113.7", &[]),
            ("100.64.0.1", &[]),
            ("fd00::9", &[]),
            ("2001:db8::9", &[]),
            ("64:ff9b::c633:6401", &[]),
            ("2002:c000:204::1", &[]),
            ("2001:0:4136:e378::1", &[]),
            ("127.0.0.1", &[AddressSpecialPurpose]),
            ("127.1.2.3", &[AddressSpecialPurpose]),
            ("::1", &[AddressSpecialPurpose]),
            ("0.0.0.0", &[AddressSpecialPurpose]),
            ("::", &[AddressSpecialPurpose]),
            ("255.255.255.255", &[AddressSpecialPurpose]),
            ("224.0.0.1", &[AddressSpecialPurpose]),
            ("ff02::1", &[AddressSpecialPurpose]),
            ("169.254.169.254", &[AddressSpecialPurpose]),
            ("fe80::1", &[AddressSpecialPurpose]),
            ("::ffff:127.0.0.1", &[AddressSpecialPurpose]),
            ("::ffff:172.18.0.9", &[AddressSpecialPurpose]),
            ("192.168.77.2", &[AddressIsLocal]),
            ("fd77::2", &[AddressIsLocal]),
        ];
        let policy = policy();
        for (text, want) in cases {
            let problems = policy.check_remote_address(ip(text));
            assert_eq!(reasons(&problems), *want, "{text}: {problems:?}");
        }
        // ::1 is both in ::/96 and ::1/128; each is reported.
        assert_eq!(policy.check_remote_address(ip("::1")).len(), 2);
    }

    #[test]
    fn check_remote_reports_every_problem_with_its_field() {
        let mut spec = crate::EndpointSpec {
            cluster_id: "b".into(),
            subnets: vec![
                "10.2.0.0/16".into(),
                "128.0.0.0/1".into(),
                "192.168.77.0/24".into(),
            ],
            private_ip: "192.168.77.3".into(),
            public_ip: "127.0.0.1".into(),
            health_check_ips: vec!["10.2.0.1".into(), "255.255.255.255".into()],
            backend: "wireguard".into(),
            ..crate::EndpointSpec::default()
        };
        spec.set_backend_config("publicKey", "b98wRzVxljvjDMk9tpg4DKZtbSE/V/iyLBPXQhjn6Bo=");
        let validated = spec.validate().expect("well formed");
        let errors = policy().check_remote(&validated, &[ip("192.168.77.4")]);
        let mut found: Vec<(&str, Reason)> = errors
            .iter()
            .map(|e| (e.field.as_str(), e.reason))
            .collect();
        found.dedup();
        use Reason::*;
        assert_eq!(
            found,
            vec![
                ("spec.subnets[1]", SubnetSpecialPurpose),
                ("spec.subnets[1]", SubnetTooBroad),
                ("spec.subnets[1]", SubnetCoversUnderlay),
                ("spec.subnets[1]", SubnetCoversGateway),
                ("spec.subnets[2]", SubnetCoversUnderlay),
                ("spec.subnets[2]", SubnetCoversGateway),
                ("spec.public_ips[0]", AddressSpecialPurpose),
                ("spec.healthCheckIPs[1]", AddressSpecialPurpose),
            ],
            "{errors:#?}"
        );
        // A clean remote has no problem.
        spec.subnets = vec!["10.2.0.0/16".into()];
        spec.public_ip = "203.0.113.9".into();
        spec.health_check_ips = vec!["10.2.0.1".into()];
        let validated = spec.validate().expect("well formed");
        assert_eq!(policy().check_remote(&validated, &[]), vec![]);
    }

    #[test]
    fn reasons_are_stable_and_distinct() {
        let mut names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count);
        assert!(names
            .iter()
            .all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
    }
}
