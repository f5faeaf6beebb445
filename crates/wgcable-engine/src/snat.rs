//! Detection of source NAT on traffic to remote clusters.
//!
//! The WireGuard driver routes, it does not NAT: a remote gateway only accepts packets whose
//! source lies in our subnets (its peer's allowed IPs). A CNI that source-NATs pod traffic to the
//! node's address before it reaches the device (seen with Calico) breaks every connection in a
//! way that looks like a dead tunnel. The kernel's connection tracking shows it plainly: an
//! entry whose original destination is a remote subnet but whose reply goes back to an address
//! other than the original source has been source-NATed.

use std::net::IpAddr;

use ipnet::IpNet;

/// One connection-tracking entry that was source-NATed on its way to a remote cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnatFinding {
    /// The original source (a pod, usually).
    pub original_src: IpAddr,
    /// The remote address it was sent to.
    pub dst: IpAddr,
    /// The address the source was rewritten to.
    pub translated_src: IpAddr,
    /// The remote subnet `dst` is in.
    pub remote_subnet: IpNet,
}

/// Finds source-NATed flows to `remote` subnets in the text of `/proc/net/nf_conntrack`.
///
/// Each line holds the original tuple (`src=` `dst=`) first and the reply tuple second. A flow
/// to a remote subnet whose reply destination differs from its original source was rewritten.
/// Flows that start at our own gateway address (the device's) are not NAT and are skipped by
/// the same rule, since their reply comes back to them.
pub fn find_snat(conntrack: &str, remote: &[IpNet]) -> Vec<SnatFinding> {
    let mut out = Vec::new();
    for line in conntrack.lines() {
        let mut srcs = Vec::with_capacity(2);
        let mut dsts = Vec::with_capacity(2);
        for field in line.split_ascii_whitespace() {
            if let Some(v) = field.strip_prefix("src=") {
                srcs.push(v);
            } else if let Some(v) = field.strip_prefix("dst=") {
                dsts.push(v);
            }
        }
        let (Some(osrc), Some(odst), Some(rdst)) = (srcs.first(), dsts.first(), dsts.get(1)) else {
            continue;
        };
        let (Ok(osrc), Ok(odst), Ok(rdst)) = (
            osrc.parse::<IpAddr>(),
            odst.parse::<IpAddr>(),
            rdst.parse::<IpAddr>(),
        ) else {
            continue;
        };
        let Some(subnet) = remote.iter().find(|n| n.contains(&odst)) else {
            continue;
        };
        if rdst != osrc {
            out.push(SnatFinding {
                original_src: osrc,
                dst: odst,
                translated_src: rdst,
                remote_subnet: *subnet,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().expect("cidr")).collect()
    }

    #[test]
    fn detects_masqueraded_flow_to_remote_subnet() {
        let text = "ipv4     2 icmp     1 29 src=10.201.1.10 dst=10.202.1.10 type=8 code=0 id=7 src=10.202.1.10 dst=192.168.77.11 type=0 code=0 id=7 mark=0 zone=0 use=2\n";
        let found = find_snat(text, &nets(&["10.202.0.0/16"]));
        assert_eq!(
            found,
            vec![SnatFinding {
                original_src: "10.201.1.10".parse().expect("ip"),
                dst: "10.202.1.10".parse().expect("ip"),
                translated_src: "192.168.77.11".parse().expect("ip"),
                remote_subnet: "10.202.0.0/16".parse().expect("cidr"),
            }]
        );
    }

    #[test]
    fn routed_flows_and_other_destinations_are_fine() {
        let text = "\
ipv4     2 tcp      6 431999 ESTABLISHED src=10.201.1.10 dst=10.202.1.10 sport=40000 dport=5201 src=10.202.1.10 dst=10.201.1.10 sport=5201 dport=40000 [ASSURED] mark=0 use=1
ipv4     2 tcp      6 431999 ESTABLISHED src=10.201.1.10 dst=8.8.8.8 sport=40000 dport=53 src=8.8.8.8 dst=192.168.77.11 sport=53 dport=40000 [ASSURED] mark=0 use=1
ipv6     10 udp      17 29 src=fd00:201::10 dst=fd00:202::10 sport=1 dport=2 src=fd00:202::10 dst=fd00:201::10 sport=2 dport=1 mark=0 use=1
garbage line
";
        assert!(find_snat(text, &nets(&["10.202.0.0/16", "fd00:202::/48"])).is_empty());
    }

    #[test]
    fn ipv6_masquerade_detected() {
        let text = "ipv6     10 udp      17 29 src=fd00:201::10 dst=fd00:202::10 sport=1 dport=2 src=fd00:202::10 dst=2001:db8::1 sport=2 dport=1 mark=0 use=1\n";
        assert_eq!(find_snat(text, &nets(&["fd00:202::/48"])).len(), 1);
    }
}
