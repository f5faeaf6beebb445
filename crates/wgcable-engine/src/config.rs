//! The cable driver's configuration and its validation.

use std::net::IpAddr;

use ipnet::IpNet;
use wgcable_api::Endpoint;
use wgcable_keys::{PresharedKey, PublicKey};

use crate::Error;

/// Submariner's WireGuard device name.
pub const DEFAULT_DEVICE: &str = "submariner";
/// Submariner's default NAT-T/WireGuard UDP port (env `CE_IPSEC_NATTPORT`).
pub const DEFAULT_PORT: u16 = 4500;
/// The routing table remote subnets are routed in (Submariner's route agent uses 150).
pub const DEFAULT_TABLE: u32 = 150;
/// Priority of the policy rule that sends traffic to [`DEFAULT_TABLE`].
pub const DEFAULT_RULE_PRIORITY: u32 = 100;
/// WireGuard overhead that is safe for both IPv4 and IPv6 underlays.
pub const WIREGUARD_OVERHEAD: u32 = 80;
/// The name Submariner registers this driver under.
pub const CABLE_DRIVER_NAME: &str = "wireguard";

/// Everything the WireGuard cable driver needs to know about the local cluster.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// The local cluster's id.
    pub cluster_id: String,
    /// The gateway node's hostname, published in the Endpoint.
    pub hostname: String,
    /// The local cluster's subnets (pods and services).
    pub local_subnets: Vec<IpNet>,
    /// The gateway's private (underlay) IP.
    pub private_ip: IpAddr,
    /// The gateway's public IPs (at most one per family), used by remote clusters when NAT
    /// is in play.
    pub public_ips: Vec<IpAddr>,
    /// The namespace the local Endpoint is published in (`SUBMARINER_NAMESPACE`).
    pub namespace: Option<String>,
    /// Whether this side is behind NAT (remote gateways then use our public IP).
    pub nat: bool,
    /// The gateway's addresses inside the local subnets (at most one per IP family), put on
    /// the device and used as the preferred source of routes to remote clusters of that family.
    pub health_check_ips: Vec<IpAddr>,
    /// The UDP port WireGuard listens on.
    pub listen_port: u16,
    /// The pre-shared key for every peer, derived from the PSK string as Submariner does.
    pub preshared_key: PresharedKey,
    /// The WireGuard device name.
    pub device: String,
    /// The routing table remote subnets go in.
    pub table: u32,
    /// The priority of the policy rule that looks up [`DriverConfig::table`].
    pub rule_priority: u32,
    /// A fixed device MTU; `None` = the underlay MTU minus [`WIREGUARD_OVERHEAD`].
    pub mtu: Option<u32>,
}

impl DriverConfig {
    /// Checks the configuration as a whole and lists every problem, so that a gateway with
    /// a bad configuration fails before it touches the host.
    pub fn validate(&self) -> Result<(), Error> {
        let mut problems = Vec::new();
        let id = &self.cluster_id;
        if id.is_empty() || id.len() > 63 {
            problems.push(format!("cluster id {id:?} must be 1 to 63 characters"));
        } else if !id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            || id.starts_with('-')
            || id.ends_with('-')
        {
            problems.push(format!(
                "cluster id {id:?} must be a DNS label: lowercase letters, digits and '-', not starting or ending with '-'"
            ));
        }
        if self.local_subnets.is_empty() {
            problems.push("at least one local subnet is needed (--subnets)".to_string());
        }
        for net in &self.local_subnets {
            if net.prefix_len() == 0 {
                problems.push(format!("local subnet {net} is a default route; list the cluster's pod and service CIDRs instead"));
            }
            if net.trunc() != *net {
                problems.push(format!(
                    "local subnet {net} has host bits set (did you mean {}?)",
                    net.trunc()
                ));
            }
        }
        if self
            .health_check_ips
            .iter()
            .filter(|ip| ip.is_ipv4())
            .count()
            > 1
            || self
                .health_check_ips
                .iter()
                .filter(|ip| ip.is_ipv6())
                .count()
                > 1
        {
            problems.push("give at most one health-check IP per IP family".to_string());
        }
        for &hc in &self.health_check_ips {
            if !self.local_subnets.iter().any(|n| n.contains(&hc)) {
                problems.push(format!(
                    "health-check IP {hc} is not inside the local subnets; pick an address of one of them"
                ));
            }
        }
        if self.listen_port == 0 {
            problems.push("port 0 is not a valid WireGuard listen port; use 1..65535".to_string());
        }
        if self.device.is_empty()
            || self.device.len() > 15
            || self.device.contains(['/', ' ', ':'])
            || self.device == "."
            || self.device == ".."
        {
            problems.push(format!(
                "device name {:?} is not a valid interface name (1 to 15 characters, no '/', ':' or spaces)",
                self.device
            ));
        }
        // 0 is unspecified; 253..=255 are the kernel's default, main and local tables.
        if self.table == 0 || (253..=255).contains(&self.table) {
            problems.push(format!(
                "routing table {} is reserved by the kernel; use a dedicated table such as 150",
                self.table
            ));
        }
        if let Some(mtu) = self.mtu {
            if !(1280..=65535).contains(&mtu) && !(576..1280).contains(&mtu) {
                problems.push(format!("MTU {mtu} is out of range (576..65535)"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Config {
                message: problems.join("; "),
            })
        }
    }
}

/// The local cluster's Endpoint as Submariner's gateway publishes it.
pub fn local_endpoint(c: &DriverConfig, public_key: &PublicKey) -> Endpoint {
    wgcable_api::local_endpoint(&wgcable_api::LocalEndpointConfig {
        cluster_id: c.cluster_id.clone(),
        namespace: c.namespace.clone(),
        hostname: c.hostname.clone(),
        subnets: c.local_subnets.clone(),
        private_ips: vec![c.private_ip],
        public_ips: c.public_ips.clone(),
        nat_enabled: c.nat,
        health_check_ips: c.health_check_ips.clone(),
        public_key: *public_key,
        udp_port: c.listen_port,
        interface_name: c.device.clone(),
        // No NAT discovery yet: without the port, stock gateways use the configured choice
        // at once instead of waiting for discovery to time out.
        natt_discovery_port: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> DriverConfig {
        DriverConfig {
            cluster_id: "cluster-a".into(),
            hostname: "gw-a".into(),
            local_subnets: vec!["10.201.0.0/16".parse().expect("cidr")],
            private_ip: "192.168.77.11".parse().expect("ip"),
            public_ips: Vec::new(),
            namespace: None,
            nat: false,
            health_check_ips: vec!["10.201.0.1".parse().expect("ip")],
            listen_port: DEFAULT_PORT,
            preshared_key: PresharedKey::from_passphrase(wgcable_keys::DEFAULT_PSK),
            device: DEFAULT_DEVICE.into(),
            table: DEFAULT_TABLE,
            rule_priority: DEFAULT_RULE_PRIORITY,
            mtu: None,
        }
    }

    #[test]
    fn sample_is_valid() {
        sample().validate().expect("valid");
    }

    #[test]
    fn every_problem_is_reported() {
        let mut c = sample();
        c.cluster_id = "Bad_Id".into();
        c.health_check_ips = vec!["10.9.9.9".parse().expect("ip")];
        c.table = 254;
        c.device = "a-name-that-is-too-long".into();
        c.listen_port = 0;
        let msg = c.validate().expect_err("invalid").to_string();
        for fragment in [
            "DNS label",
            "health-check IP 10.9.9.9",
            "table 254",
            "interface name",
            "port 0",
        ] {
            assert!(msg.contains(fragment), "{fragment:?} missing from {msg}");
        }
    }

    #[test]
    fn default_route_and_host_bits_refused() {
        let mut c = sample();
        c.local_subnets = vec![
            "0.0.0.0/0".parse().expect("cidr"),
            "10.1.2.3/16".parse().expect("cidr"),
        ];
        c.health_check_ips = Vec::new();
        let msg = c.validate().expect_err("invalid").to_string();
        assert!(msg.contains("default route"), "{msg}");
        assert!(msg.contains("did you mean 10.1.0.0/16"), "{msg}");
    }
}
