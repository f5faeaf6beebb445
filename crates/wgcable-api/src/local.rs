//! The local Endpoint, built the way Submariner's gateway publishes its own.
//!
//! Upstream (submariner pkg/endpoint/local_endpoint.go `GetLocalSpec`, pkg/apis/submariner.io/v1
//! `EndpointSpec.GenerateName`, admiral's syncer for the label) publishes: object name
//! `<clusterID>-<cableName>` made DNS-safe, cable name
//! `submariner-cable-<clusterID>-<privateIP with dots as dashes>`, the label
//! `submariner-io/clusterID=<id>` that the broker sync filters on, the gateway's namespace, the
//! node name as `hostname` (the route agent on each node recognises the gateway node by it), and
//! backend_config `udp-port` and `natt-discovery-port` next to the driver's `publicKey` and
//! `interface-name`. A dual-stack gateway also lists every address in `private_ips`,
//! `public_ips` and `healthCheckIPs`; the singular fields, deprecated upstream, still carry the
//! IPv4 address so that older gateways keep working.

use std::net::IpAddr;

use ipnet::IpNet;
use wgcable_keys::PublicKey;

use crate::endpoint::{
    Endpoint, EndpointSpec, BACKEND_CONFIG_INTERFACE_NAME, BACKEND_CONFIG_NATT_DISCOVERY_PORT,
    BACKEND_CONFIG_PUBLIC_KEY, BACKEND_CONFIG_UDP_PORT, BACKEND_WIREGUARD,
};

/// The label Submariner puts on every Endpoint and the broker sync selects on.
pub const CLUSTER_ID_LABEL: &str = "submariner-io/clusterID";

/// Everything the local Endpoint is made of; [`local_endpoint`] turns it into the object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEndpointConfig {
    /// The local cluster's id.
    pub cluster_id: String,
    /// The namespace the Endpoint lives in (`SUBMARINER_NAMESPACE`); `None` leaves it unset.
    pub namespace: Option<String>,
    /// The gateway node's name (`NODE_NAME`), published as `hostname`.
    pub hostname: String,
    /// The local cluster's subnets, in the order to publish them.
    pub subnets: Vec<IpNet>,
    /// The gateway's private (underlay) addresses, at most one per IP family; not empty.
    pub private_ips: Vec<IpAddr>,
    /// The gateway's public addresses, at most one per IP family; may be empty.
    pub public_ips: Vec<IpAddr>,
    /// Whether the gateway is behind NAT.
    pub nat_enabled: bool,
    /// The gateway's addresses inside the local subnets, pinged by remote health checkers.
    pub health_check_ips: Vec<IpAddr>,
    /// The WireGuard public key.
    pub public_key: PublicKey,
    /// The WireGuard listen port.
    pub udp_port: u16,
    /// The WireGuard link's name.
    pub interface_name: String,
    /// The NAT discovery port, once NAT discovery runs; `None` leaves it out, which tells stock
    /// gateways to skip discovery and use the configured choice at once.
    pub natt_discovery_port: Option<u16>,
}

/// The local Endpoint for `config`: pure, the same input always gives the same object.
pub fn local_endpoint(config: &LocalEndpointConfig) -> Endpoint {
    let private_ip = preferred(&config.private_ips);
    let cable_name = format!(
        "submariner-cable-{}-{}",
        config.cluster_id,
        private_ip
            .map(|ip| ip.to_string().replace(['.', ':'], "-"))
            .unwrap_or_default()
    );
    let mut spec = EndpointSpec {
        cluster_id: config.cluster_id.clone(),
        cable_name,
        hostname: config.hostname.clone(),
        subnets: config.subnets.iter().map(IpNet::to_string).collect(),
        private_ip: text(private_ip),
        private_ips: plural(&config.private_ips),
        public_ip: text(preferred(&config.public_ips)),
        public_ips: plural(&config.public_ips),
        nat_enabled: config.nat_enabled,
        backend: BACKEND_WIREGUARD.to_owned(),
        health_check_ip: text(preferred(&config.health_check_ips)),
        health_check_ips: plural(&config.health_check_ips),
        ..EndpointSpec::default()
    };
    spec.set_backend_config(BACKEND_CONFIG_PUBLIC_KEY, config.public_key.to_base64());
    spec.set_backend_config(BACKEND_CONFIG_INTERFACE_NAME, config.interface_name.clone());
    spec.set_backend_config(BACKEND_CONFIG_UDP_PORT, config.udp_port.to_string());
    if let Some(port) = config.natt_discovery_port {
        spec.set_backend_config(BACKEND_CONFIG_NATT_DISCOVERY_PORT, port.to_string());
    }
    let mut endpoint = Endpoint::new(spec);
    endpoint.metadata.namespace = config.namespace.clone();
    endpoint
        .metadata
        .labels
        .insert(CLUSTER_ID_LABEL.to_owned(), config.cluster_id.clone());
    endpoint
}

/// The address for a singular field: the IPv4 one if there is one (as upstream fills the
/// deprecated singular fields), else the first.
fn preferred(ips: &[IpAddr]) -> Option<IpAddr> {
    ips.iter()
        .copied()
        .find(IpAddr::is_ipv4)
        .or_else(|| ips.first().copied())
}

/// The list for a plural field: written only for a dual-stack gateway (more than one address),
/// so a single-stack gateway publishes exactly what pre-dual-stack Submariner does.
fn plural(ips: &[IpAddr]) -> Vec<String> {
    if ips.len() > 1 {
        ips.iter().map(IpAddr::to_string).collect()
    } else {
        Vec::new()
    }
}

fn text(ip: Option<IpAddr>) -> String {
    ip.map(|ip| ip.to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "b98wRzVxljvjDMk9tpg4DKZtbSE/V/iyLBPXQhjn6Bo=";

    fn single_stack() -> LocalEndpointConfig {
        LocalEndpointConfig {
            cluster_id: "cluster-a".into(),
            namespace: Some("submariner-operator".into()),
            hostname: "worker-1".into(),
            subnets: vec![
                "10.96.0.0/16".parse().expect("cidr"),
                "10.42.0.0/16".parse().expect("cidr"),
            ],
            private_ips: vec!["172.18.0.4".parse().expect("ip")],
            public_ips: vec!["203.0.113.7".parse().expect("ip")],
            nat_enabled: true,
            health_check_ips: vec!["10.42.0.1".parse().expect("ip")],
            public_key: PublicKey::from_base64(KEY).expect("key"),
            udp_port: 4500,
            interface_name: "submariner".into(),
            natt_discovery_port: None,
        }
    }

    #[test]
    fn a_single_stack_gateway_publishes_what_submariner_publishes() {
        let endpoint = local_endpoint(&single_stack());
        let want = format!(
            "apiVersion: submariner.io/v1
kind: Endpoint
metadata:
  name: cluster-a-submariner-cable-cluster-a-172-18-0-4
  namespace: submariner-operator
  labels:
    submariner-io/clusterID: cluster-a
spec:
  cluster_id: cluster-a
  cable_name: submariner-cable-cluster-a-172-18-0-4
  healthCheckIP: 10.42.0.1
  hostname: worker-1
  subnets:
  - 10.96.0.0/16
  - 10.42.0.0/16
  private_ip: 172.18.0.4
  public_ip: 203.0.113.7
  nat_enabled: true
  backend: wireguard
  backend_config:
    interface-name: submariner
    publicKey: {KEY}
    udp-port: '4500'
"
        );
        assert_eq!(endpoint.to_yaml().expect("yaml"), want);
        // What we publish passes our own admission, and parses back to the same object.
        endpoint.spec.validate().expect("valid");
        assert_eq!(Endpoint::from_yaml(&want).expect("parse"), endpoint);
    }

    #[test]
    fn a_dual_stack_gateway_lists_every_address_and_keeps_ipv4_in_the_singular_fields() {
        let mut config = single_stack();
        // IPv6 given first: the singular fields still carry IPv4, the lists keep the order.
        config.private_ips = vec![
            "fc00:f853:ccd:e793::4".parse().expect("ip"),
            "172.18.0.4".parse().expect("ip"),
        ];
        config.public_ips = vec![
            "203.0.113.7".parse().expect("ip"),
            "2001:db8::7".parse().expect("ip"),
        ];
        config.subnets.push("fd00:42::/56".parse().expect("cidr"));
        config.health_check_ips = vec![
            "10.42.0.1".parse().expect("ip"),
            "fd00:42::1".parse().expect("ip"),
        ];
        config.natt_discovery_port = Some(4490);
        let endpoint = local_endpoint(&config);
        let spec = &endpoint.spec;
        assert_eq!(spec.private_ip, "172.18.0.4");
        assert_eq!(spec.private_ips, ["fc00:f853:ccd:e793::4", "172.18.0.4"]);
        assert_eq!(spec.public_ip, "203.0.113.7");
        assert_eq!(spec.public_ips, ["203.0.113.7", "2001:db8::7"]);
        assert_eq!(spec.health_check_ip, "10.42.0.1");
        assert_eq!(spec.health_check_ips, ["10.42.0.1", "fd00:42::1"]);
        assert_eq!(spec.cable_name, "submariner-cable-cluster-a-172-18-0-4");
        assert_eq!(spec.natt_discovery_port().expect("port"), Some(4490));
        let yaml = endpoint.to_yaml().expect("yaml");
        for field in [
            "private_ips:",
            "public_ips:",
            "healthCheckIPs:",
            "natt-discovery-port: '4490'",
        ] {
            assert!(yaml.contains(field), "{field} missing from {yaml}");
        }
        let parsed = spec.validate().expect("valid");
        assert_eq!(parsed.private_ips.len(), 2);
        assert_eq!(parsed.public_ips.len(), 2);
    }

    #[test]
    fn an_ipv6_only_gateway_dashes_its_address_in_the_cable_name() {
        let mut config = single_stack();
        config.private_ips = vec!["fd00:77::11".parse().expect("ip")];
        config.public_ips.clear();
        config.nat_enabled = false;
        config.namespace = None;
        config.health_check_ips.clear();
        let endpoint = local_endpoint(&config);
        assert_eq!(
            endpoint.spec.cable_name,
            "submariner-cable-cluster-a-fd00-77--11"
        );
        assert_eq!(
            endpoint.name(),
            "cluster-a-submariner-cable-cluster-a-fd00-77--11"
        );
        assert_eq!(endpoint.spec.private_ip, "fd00:77::11");
        assert!(endpoint.spec.private_ips.is_empty());
        // Always written, even empty: older CRDs list public_ip as required.
        assert!(endpoint.to_yaml().expect("yaml").contains("public_ip: ''"));
        assert_eq!(endpoint.metadata.namespace, None);
        assert!(endpoint.spec.health_check_ip.is_empty());
        endpoint.spec.validate().expect("valid");
    }
}
