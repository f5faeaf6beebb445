//! The subnet and address rules on arbitrary structured input.
//! Invariants: no panic; a subnet inside the allow-list is never "not allowed"; one outside
//! every special range, narrower than the limits and clear of the underlay, gateways and local
//! subnets has no problem at all.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use arbitrary::Arbitrary;
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use wgcable_api::{special_purpose_ranges, AdmissionPolicy, Reason, ValidatedSpec};

#[derive(Debug, Arbitrary)]
enum Addr {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl Addr {
    fn ip(&self) -> IpAddr {
        match self {
            Addr::V4(b) => IpAddr::V4(Ipv4Addr::from(*b)),
            Addr::V6(b) => IpAddr::V6(Ipv6Addr::from(*b)),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Net(Addr, u8);

impl Net {
    fn net(&self) -> IpNet {
        let ip = self.0.ip();
        let max = if ip.is_ipv4() { 32 } else { 128 };
        IpNet::new(ip, self.1 % (max + 1))
            .expect("prefix in range")
            .trunc()
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    underlay: Vec<Addr>,
    local_subnets: Vec<Net>,
    allowed: Vec<Net>,
    min_v4: u8,
    min_v6: u8,
    subnets: Vec<Net>,
    private_ips: Vec<Addr>,
    public_ips: Vec<Addr>,
    health_ips: Vec<Addr>,
    other_gateways: Vec<Addr>,
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fuzz_target!(|input: Input| {
    let policy = AdmissionPolicy {
        local_underlay: input.underlay.iter().map(Addr::ip).collect(),
        local_subnets: input.local_subnets.iter().map(Net::net).collect(),
        allowed_subnets: input.allowed.iter().map(Net::net).collect(),
        min_prefix_len_v4: input.min_v4,
        min_prefix_len_v6: input.min_v6,
    };
    let spec = ValidatedSpec {
        cluster_id: "fuzz".into(),
        subnets: input.subnets.iter().map(Net::net).collect(),
        private_ips: input.private_ips.iter().map(Addr::ip).collect(),
        public_ips: input.public_ips.iter().map(Addr::ip).collect(),
        health_check_ips: input.health_ips.iter().map(Addr::ip).collect(),
        public_key: None,
        udp_port: None,
        nat_enabled: false,
        backend: "wireguard".into(),
        hostname: String::new(),
    };
    let others: Vec<IpAddr> = input.other_gateways.iter().map(Addr::ip).collect();
    let errors = policy.check_remote(&spec, &others);
    for error in &errors {
        assert!(!error.message.is_empty());
        assert!(error.field.starts_with("spec."));
    }
    let mut gateways = others.clone();
    gateways.extend(spec.private_ips.iter().chain(&spec.public_ips));
    for subnet in &spec.subnets {
        let problems = policy.check_remote_subnet(*subnet, &gateways);
        let allowed = policy.allowed_subnets.iter().any(|a| a.contains(subnet));
        if allowed {
            assert!(problems
                .iter()
                .all(|p| p.reason != Reason::SubnetNotAllowed));
        }
        let min = if subnet.addr().is_ipv4() {
            policy.min_prefix_len_v4
        } else {
            policy.min_prefix_len_v6
        };
        let clean = (policy.allowed_subnets.is_empty() || allowed)
            && subnet.prefix_len() >= min
            && !special_purpose_ranges()
                .iter()
                .any(|r| overlaps(subnet, &r.net))
            && !policy
                .local_underlay
                .iter()
                .chain(&gateways)
                .any(|ip| subnet.contains(ip))
            && !policy.local_subnets.iter().any(|l| overlaps(subnet, l));
        assert_eq!(problems.is_empty(), clean, "{subnet}: {problems:?}");
    }
    for ip in spec.private_ips.iter().chain(&spec.public_ips) {
        let problems = policy.check_remote_address(*ip);
        if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
            assert!(!problems.is_empty(), "{ip}");
        }
    }
});
