use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use wgcable_keys::PublicKey;

use crate::endpoint::{
    parse_port, EndpointSpec, BACKEND_CONFIG_NATT_DISCOVERY_PORT, BACKEND_CONFIG_PUBLIC_KEY,
    BACKEND_CONFIG_UDP_PORT, BACKEND_WIREGUARD, MAX_CLUSTER_ID_LEN,
};

/// An [`EndpointSpec`] whose strings have been parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedSpec {
    pub cluster_id: String,
    /// Normalized (no host bits), in the published order, without duplicates.
    pub subnets: Vec<IpNet>,
    /// `private_ip` then `private_ips`, duplicates removed, order kept. Never empty.
    pub private_ips: Vec<IpAddr>,
    /// `public_ip` then `public_ips`, duplicates removed, order kept.
    pub public_ips: Vec<IpAddr>,
    /// `healthCheckIP` then `healthCheckIPs`, duplicates removed, order kept.
    pub health_check_ips: Vec<IpAddr>,
    /// Always `Some` for a `wireguard` endpoint; for other backends, `Some` only if a
    /// well-formed key happens to be published.
    pub public_key: Option<PublicKey>,
    pub udp_port: Option<u16>,
    pub nat_enabled: bool,
    pub backend: String,
    pub hostname: String,
}

/// Why a field was refused: a small stable set, for metrics labels
/// (`endpoint_rejected{reason=...}`) and for tests. [`Reason::as_str`] never changes for a
/// variant once released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Reason {
    ClusterId,
    PrivateIpMissing,
    AddressUnparseable,
    SubnetsMissing,
    SubnetUnparseable,
    SubnetDefaultRoute,
    SubnetHostBits,
    SubnetDuplicate,
    Port,
    PublicKeyMissing,
    PublicKeyMalformed,
    /// A remote subnet overlaps a special-purpose range (loopback, multicast, ...).
    SubnetSpecialPurpose,
    /// A remote subnet is broader than the policy's broadest prefix.
    SubnetTooBroad,
    /// A remote subnet is not inside the operator's allow-list.
    SubnetNotAllowed,
    /// A remote subnet covers a local underlay address.
    SubnetCoversUnderlay,
    /// A remote subnet covers the endpoint IP of its own or another remote gateway.
    SubnetCoversGateway,
    /// A remote subnet overlaps one of the local cluster's subnets.
    SubnetOverlapsLocal,
    /// An endpoint or health-check address is special-purpose (loopback, broadcast, ...).
    AddressSpecialPurpose,
    /// An endpoint address is one of the local gateway's own.
    AddressIsLocal,
}

impl Reason {
    /// The stable metrics label of this reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterId => "cluster_id",
            Self::PrivateIpMissing => "private_ip_missing",
            Self::AddressUnparseable => "address_unparseable",
            Self::SubnetsMissing => "subnets_missing",
            Self::SubnetUnparseable => "subnet_unparseable",
            Self::SubnetDefaultRoute => "subnet_default_route",
            Self::SubnetHostBits => "subnet_host_bits",
            Self::SubnetDuplicate => "subnet_duplicate",
            Self::Port => "port",
            Self::PublicKeyMissing => "public_key_missing",
            Self::PublicKeyMalformed => "public_key_malformed",
            Self::SubnetSpecialPurpose => "subnet_special_purpose",
            Self::SubnetTooBroad => "subnet_too_broad",
            Self::SubnetNotAllowed => "subnet_not_allowed",
            Self::SubnetCoversUnderlay => "subnet_covers_underlay",
            Self::SubnetCoversGateway => "subnet_covers_gateway",
            Self::SubnetOverlapsLocal => "subnet_overlaps_local",
            Self::AddressSpecialPurpose => "address_special_purpose",
            Self::AddressIsLocal => "address_is_local",
        }
    }

    /// Every reason, for tests and for pre-registering metric series.
    pub const ALL: &'static [Reason] = &[
        Self::ClusterId,
        Self::PrivateIpMissing,
        Self::AddressUnparseable,
        Self::SubnetsMissing,
        Self::SubnetUnparseable,
        Self::SubnetDefaultRoute,
        Self::SubnetHostBits,
        Self::SubnetDuplicate,
        Self::Port,
        Self::PublicKeyMissing,
        Self::PublicKeyMalformed,
        Self::SubnetSpecialPurpose,
        Self::SubnetTooBroad,
        Self::SubnetNotAllowed,
        Self::SubnetCoversUnderlay,
        Self::SubnetCoversGateway,
        Self::SubnetOverlapsLocal,
        Self::AddressSpecialPurpose,
        Self::AddressIsLocal,
    ];
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem with one field of an Endpoint.
///
/// Neither `field` nor `message` contains a raw string from the input. `field` is made of the
/// CRD's field names and indices. `message` may contain only values that were parsed into typed
/// addresses, CIDRs, ports or a validated cluster id (their canonical text can hold nothing but
/// digits, hex letters, `.`, `:`, `/` or a DNS label, so it can neither carry a secret read
/// through a link nor inject log lines), numbers such as lengths and limits, and this crate's
/// own names (special-purpose range names, field names).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ValidationError {
    /// Where, in the CRD's own names: `spec.subnets[1]`, `spec.backend_config.publicKey`, ...
    pub field: String,
    /// Why, as a stable code.
    pub reason: Reason,
    /// What is wrong and, where possible, what was probably meant.
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in an Endpoint; never empty when returned as an error.
///
/// Its `Display` lists them all on one line; callers add which endpoint it was, e.g.
/// `validating endpoint cluster-b: endpoint spec is invalid: spec.subnets[1]: ...`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl ValidationErrors {
    pub fn iter(&self) -> std::slice::Iter<'_, ValidationError> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The distinct reasons, in a stable order (for counting rejections by reason).
    pub fn reasons(&self) -> Vec<Reason> {
        let mut reasons: Vec<Reason> = self.0.iter().map(|e| e.reason).collect();
        reasons.sort();
        reasons.dedup();
        reasons
    }

    /// The problems with `field` (exact match), e.g. `"spec.cluster_id"`.
    pub fn for_field<'a>(&'a self, field: &'a str) -> impl Iterator<Item = &'a ValidationError> {
        self.0.iter().filter(move |e| e.field == field)
    }

    pub(crate) fn push(
        &mut self,
        field: impl Into<String>,
        reason: Reason,
        message: impl Into<String>,
    ) {
        self.0.push(ValidationError {
            field: field.into(),
            reason,
            message: message.into(),
        });
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("endpoint spec is invalid: ")?;
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

impl<'a> IntoIterator for &'a ValidationErrors {
    type Item = &'a ValidationError;
    type IntoIter = std::slice::Iter<'a, ValidationError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl IntoIterator for ValidationErrors {
    type Item = ValidationError;
    type IntoIter = std::vec::IntoIter<ValidationError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl EndpointSpec {
    /// Parses and checks every field, reporting every problem found rather than the first.
    ///
    /// Rules: `cluster_id` is a DNS-1123 label of at most 63 characters; addresses parse (empty
    /// strings count as absent; a private address is required); `subnets` holds at least one
    /// CIDR, none unparseable, duplicated, with host bits set or a default route; ports in
    /// backend_config are 1-65535; a `wireguard` endpoint publishes a well-formed public key.
    pub fn validate(&self) -> Result<ValidatedSpec, ValidationErrors> {
        let mut errors = ValidationErrors::default();

        check_cluster_id(&self.cluster_id, &mut errors);

        let private_ips = collect_ips(
            ("spec.private_ip", &self.private_ip),
            ("spec.private_ips", &self.private_ips),
            &mut errors,
        );
        if private_ips.is_empty() && self.private_ip.is_empty() && self.private_ips.is_empty() {
            errors.push(
                "spec.private_ip",
                Reason::PrivateIpMissing,
                "missing: an endpoint needs its private IP (set private_ip or private_ips)",
            );
        }
        let public_ips = collect_ips(
            ("spec.public_ip", &self.public_ip),
            ("spec.public_ips", &self.public_ips),
            &mut errors,
        );
        let health_check_ips = collect_ips(
            ("spec.healthCheckIP", &self.health_check_ip),
            ("spec.healthCheckIPs", &self.health_check_ips),
            &mut errors,
        );

        let subnets = check_subnets(&self.subnets, &mut errors);

        let udp_port = check_port(self, BACKEND_CONFIG_UDP_PORT, &mut errors);
        check_port(self, BACKEND_CONFIG_NATT_DISCOVERY_PORT, &mut errors);

        let public_key = check_public_key(self, &mut errors);

        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(ValidatedSpec {
            cluster_id: self.cluster_id.clone(),
            subnets,
            private_ips,
            public_ips,
            health_check_ips,
            public_key,
            udp_port,
            nat_enabled: self.nat_enabled,
            backend: self.backend.clone(),
            hostname: self.hostname.clone(),
        })
    }
}

fn check_cluster_id(id: &str, errors: &mut ValidationErrors) {
    const FIELD: &str = "spec.cluster_id";
    if id.is_empty() {
        errors.push(FIELD, Reason::ClusterId, "must not be empty");
        return;
    }
    let len = id.chars().count();
    if len > MAX_CLUSTER_ID_LEN {
        errors.push(
            FIELD,
            Reason::ClusterId,
            format!("is {len} characters long, at most {MAX_CLUSTER_ID_LEN} are allowed"),
        );
    }
    let bytes = id.as_bytes();
    let label_char = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let valid = bytes.iter().all(label_char)
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum);
    if !valid {
        errors.push(
            FIELD,
            Reason::ClusterId,
            "is not a DNS-1123 label (lowercase letters, digits and '-', starting and ending \
             with a letter or digit)",
        );
    }
}

fn parse_ip(field: &str, text: &str, errors: &mut ValidationErrors) -> Option<IpAddr> {
    match text.parse::<IpAddr>() {
        Ok(ip) => Some(ip),
        Err(_) => {
            let hint = if text.parse::<IpNet>().is_ok() {
                " (an address is expected here, not a CIDR)"
            } else if text.trim() != text {
                " (remove the surrounding whitespace)"
            } else {
                ""
            };
            errors.push(
                field,
                Reason::AddressUnparseable,
                format!("is not an IP address{hint}"),
            );
            None
        }
    }
}

/// Parses a legacy single-address field and its dual-stack list into one de-duplicated list.
fn collect_ips(
    (single_field, single): (&str, &str),
    (list_field, list): (&str, &[String]),
    errors: &mut ValidationErrors,
) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = Vec::new();
    let mut add = |ip: Option<IpAddr>| {
        if let Some(ip) = ip {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    };
    if !single.is_empty() {
        add(parse_ip(single_field, single, errors));
    }
    for (i, text) in list.iter().enumerate() {
        add(parse_ip(&format!("{list_field}[{i}]"), text, errors));
    }
    ips
}

fn check_subnets(subnets: &[String], errors: &mut ValidationErrors) -> Vec<IpNet> {
    if subnets.is_empty() {
        errors.push(
            "spec.subnets",
            Reason::SubnetsMissing,
            "at least one subnet is required (the cluster's pod and service CIDRs)",
        );
        return Vec::new();
    }
    // (normalized net, index of first occurrence, as published)
    let mut seen: Vec<(IpNet, usize, IpNet)> = Vec::new();
    for (i, text) in subnets.iter().enumerate() {
        let field = format!("spec.subnets[{i}]");
        let net = match text.parse::<IpNet>() {
            Ok(net) => net,
            Err(_) => {
                let hint = match text.parse::<IpAddr>() {
                    Ok(IpAddr::V4(ip)) => format!(" (did you mean {ip}/32?)"),
                    Ok(IpAddr::V6(ip)) => format!(" (did you mean {ip}/128?)"),
                    Err(_) => " (expected e.g. 10.42.0.0/16 or fd00:42::/56)".to_owned(),
                };
                errors.push(
                    field,
                    Reason::SubnetUnparseable,
                    format!("is not a CIDR{hint}"),
                );
                continue;
            }
        };
        if net.prefix_len() == 0 {
            errors.push(
                field,
                Reason::SubnetDefaultRoute,
                format!(
                    "{net} is a default route; a cable only carries the remote cluster's own \
                     subnets"
                ),
            );
            continue;
        }
        let normalized = net.trunc();
        if normalized != net {
            errors.push(
                &field,
                Reason::SubnetHostBits,
                format!("{net} has host bits set (did you mean {normalized}?)"),
            );
        }
        match seen.iter().find(|(other, _, _)| *other == normalized) {
            Some((_, first, first_net)) => errors.push(
                field,
                Reason::SubnetDuplicate,
                format!("{net} duplicates spec.subnets[{first}] ({first_net})"),
            ),
            None => seen.push((normalized, i, net)),
        }
    }
    seen.into_iter().map(|(net, _, _)| net).collect()
}

fn check_port(spec: &EndpointSpec, key: &str, errors: &mut ValidationErrors) -> Option<u16> {
    // Present-but-empty counts as absent, like every other empty string in the spec.
    let value = spec.backend_config_value(key)?;
    let port = parse_port(value);
    if port.is_none() {
        errors.push(
            format!("spec.backend_config.{key}"),
            Reason::Port,
            "is not a port number (1-65535)",
        );
    }
    port
}

fn check_public_key(spec: &EndpointSpec, errors: &mut ValidationErrors) -> Option<PublicKey> {
    const FIELD: &str = "spec.backend_config.publicKey";
    let wireguard = spec.backend == BACKEND_WIREGUARD;
    match spec.public_key_str() {
        None => {
            if wireguard {
                errors.push(
                    FIELD,
                    Reason::PublicKeyMissing,
                    format!(
                        "missing: a {BACKEND_WIREGUARD} endpoint must publish its WireGuard public \
                         key in backend_config[\"{BACKEND_CONFIG_PUBLIC_KEY}\"]"
                    ),
                );
            }
            None
        }
        Some(text) => match PublicKey::from_base64(text) {
            Ok(key) => Some(key),
            Err(e) => {
                if wireguard {
                    let problem = match &e {
                        wgcable_keys::KeyError::Format { problem, .. } => problem.to_string(),
                        other => other.to_string(),
                    };
                    errors.push(
                        FIELD,
                        Reason::PublicKeyMalformed,
                        format!("is not a WireGuard public key: {problem}"),
                    );
                }
                None
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "b98wRzVxljvjDMk9tpg4DKZtbSE/V/iyLBPXQhjn6Bo=";

    fn good_spec() -> EndpointSpec {
        let mut spec = EndpointSpec {
            cluster_id: "cluster-a".into(),
            cable_name: "submariner-cable-cluster-a-172-18-0-4".into(),
            hostname: "cluster-a-worker".into(),
            subnets: vec!["10.42.0.0/16".into(), "fd00:42::/56".into()],
            private_ip: "172.18.0.4".into(),
            private_ips: vec!["172.18.0.4".into(), "fc00:f853:ccd:e793::4".into()],
            backend: "wireguard".into(),
            ..EndpointSpec::default()
        };
        spec.set_backend_config("publicKey", KEY);
        spec
    }

    #[test]
    fn valid_spec_is_parsed() {
        let mut spec = good_spec();
        spec.set_backend_config("udp-port", "4500");
        spec.public_ip = "203.0.113.7".into();
        let v = spec.validate().expect("valid");
        assert_eq!(v.cluster_id, "cluster-a");
        assert_eq!(
            v.private_ips,
            vec![
                "172.18.0.4".parse::<IpAddr>().expect("ip"),
                "fc00:f853:ccd:e793::4".parse().expect("ip")
            ]
        );
        assert_eq!(
            v.public_ips,
            vec!["203.0.113.7".parse::<IpAddr>().expect("ip")]
        );
        assert!(v.health_check_ips.is_empty());
        assert_eq!(v.subnets.len(), 2);
        assert_eq!(v.udp_port, Some(4500));
        assert_eq!(v.public_key.map(|k| k.to_base64()), Some(KEY.to_owned()));
        assert_eq!(v.backend, "wireguard");
    }

    #[test]
    fn private_ips_alone_are_enough() {
        let mut spec = good_spec();
        spec.private_ip.clear();
        spec.private_ips = vec!["fd00::4".into()];
        let v = spec.validate().expect("valid");
        assert_eq!(
            v.private_ips,
            vec!["fd00::4".parse::<IpAddr>().expect("ip")]
        );
    }

    #[test]
    fn other_backends_need_no_key() {
        let mut spec = good_spec();
        spec.backend = "libreswan".into();
        spec.backend_config.clear();
        assert_eq!(spec.validate().expect("valid").public_key, None);
        spec.set_backend_config("publicKey", "not-a-key");
        assert_eq!(spec.validate().expect("still valid").public_key, None);
    }

    #[test]
    fn cluster_id_rules() {
        let cases = [
            ("", Some("must not be empty")),
            ("a", None),
            ("cluster-1", None),
            (&*"a".repeat(63), None),
            (&*"a".repeat(64), Some("is 64 characters long, at most 63")),
            ("Cluster", Some("not a DNS-1123 label")),
            ("-cluster", Some("not a DNS-1123 label")),
            ("cluster-", Some("not a DNS-1123 label")),
            ("clu_ster", Some("not a DNS-1123 label")),
            ("clu.ster", Some("not a DNS-1123 label")),
        ];
        for (id, want) in cases {
            let mut spec = good_spec();
            spec.cluster_id = id.to_owned();
            match (spec.validate(), want) {
                (Ok(_), None) => {}
                (Err(errors), Some(fragment)) => {
                    let messages: Vec<_> = errors.for_field("spec.cluster_id").collect();
                    assert_eq!(messages.len(), 1, "{id:?}: {errors}");
                    assert!(messages[0].message.contains(fragment), "{id:?}: {errors}");
                }
                (result, want) => panic!("{id:?}: got {result:?}, wanted {want:?}"),
            }
        }
    }

    #[test]
    fn display_lists_every_problem() {
        let mut spec = good_spec();
        spec.subnets = vec!["10.0.0.0/16".into(), "10.0.0.1/16".into()];
        spec.set_backend_config("publicKey", "abc");
        let errors = spec.validate().expect_err("invalid");
        assert_eq!(
            errors.to_string(),
            "endpoint spec is invalid: spec.subnets[1]: 10.0.0.1/16 has host bits set (did you mean \
             10.0.0.0/16?); spec.subnets[1]: 10.0.0.1/16 duplicates spec.subnets[0] (10.0.0.0/16); \
             spec.backend_config.publicKey: is not a WireGuard public key: expected 44 \
             characters of padded standard base64 (as `wg genkey` prints), found 3"
        );
    }
}
