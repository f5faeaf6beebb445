//! The one place where an object's bytes become a typed, validated Endpoint.
//!
//! [`ObjectParser::parse`] is the only caller of the Endpoint parser and of the per-object
//! policy in the whole admission layer: `wgcable_api::parse_endpoint` (bounded by
//! [`ParseLimits`], a depth pre-scan before libyaml sees the text, errors that never quote
//! input), `EndpointSpec::validate` and `AdmissionPolicy::check_remote` (special-purpose
//! ranges, the operator's allow-list and broadest prefix, the local underlay and subnets, the
//! remote's own gateway address). Their messages hold no input values, so they are passed on.
//! The rules that need the other clusters (who holds a subnet, a key, a gateway address) are
//! judged afterwards, in [`super::Admission`].

use std::net::IpAddr;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wgcable_api::{AdmissionPolicy, Endpoint, ParseLimits, ValidatedSpec, ValidationError};

use super::config::{AdmissionConfig, LocalIdentity};
use super::refusal::{Reason, Refusal};
use crate::{Format, ObjectKey, RawObject};

/// What one object parsed into, with what admission derives from it once.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub endpoint: Endpoint,
    /// Shared with the admitted Endpoint and the engine's planner (no copy per hand-over).
    pub spec: Arc<ValidatedSpec>,
    /// The addresses the remote gateway is reached on (private and public IPs), sorted, each
    /// once: no other cluster's subnet may cover them.
    pub gateway_ips: Vec<IpAddr>,
}

/// A digest of what a source delivered for one object, to tell a change from a re-delivery
/// without keeping every object's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn of(raw: &RawObject) -> Self {
        let mut hash = Sha256::new();
        hash.update([match raw.format {
            Format::Yaml => b'y',
            Format::Json => b'j',
        }]);
        hash.update(raw.bound_cluster.as_deref().unwrap_or("").as_bytes());
        hash.update([0]);
        hash.update(&raw.bytes);
        Fingerprint(hash.finalize().into())
    }
}

/// Parses and checks single objects (cheap to clone; shared by the parsing threads).
#[derive(Clone, Debug)]
pub struct ObjectParser {
    limits: ParseLimits,
    policy: AdmissionPolicy,
    own_key: Option<ObjectKey>,
}

/// At most this many problems are listed in one refusal (all are in `validate`'s result).
const SHOWN: usize = 4;

impl ObjectParser {
    pub fn new(config: &AdmissionConfig, local: &LocalIdentity) -> Self {
        ObjectParser {
            limits: config.limits.clone(),
            policy: AdmissionPolicy {
                local_underlay: local.underlay.clone(),
                local_subnets: local.subnets.clone(),
                allowed_subnets: config.allowed_subnets.clone(),
                min_prefix_len_v4: config.min_prefix_len_v4,
                min_prefix_len_v6: config.min_prefix_len_v6,
            },
            own_key: local.own_key.clone(),
        }
    }

    /// Parses, validates and checks one object against the per-object policy. Identity and
    /// conflicts are not judged here. Our own Endpoint (at the source's own key) is only
    /// parsed and validated: it is compared with what we published, not judged as a remote.
    pub fn parse(&self, raw: &RawObject) -> Result<Candidate, Refusal> {
        let key = &raw.key;
        let format = match raw.format {
            Format::Yaml => wgcable_api::Format::Yaml,
            Format::Json => wgcable_api::Format::Json,
        };
        let endpoint =
            wgcable_api::parse_endpoint(&raw.bytes, format, &self.limits).map_err(|e| {
                Refusal::new(
                    key,
                    Reason::Parse(e.reason()),
                    format!("{key}: refused: {e}"),
                )
            })?;
        let spec = endpoint
            .spec
            .validate()
            .map_err(|errors| invalid(key, None, &errors.0))?;
        if self.own_key.as_ref() != Some(key) {
            let problems = self.policy.check_remote(&spec, &[]);
            if !problems.is_empty() {
                return Err(invalid(key, Some(&spec.cluster_id), &problems));
            }
        }
        let mut gateway_ips: Vec<IpAddr> = spec
            .private_ips
            .iter()
            .chain(&spec.public_ips)
            .copied()
            .collect();
        gateway_ips.sort();
        gateway_ips.dedup();
        Ok(Candidate {
            endpoint,
            spec: Arc::new(spec),
            gateway_ips,
        })
    }
}

/// A refusal for validation or policy problems: the first problem's reason, the first few
/// problems' messages (which hold only parsed addresses, CIDRs, limits and names, never raw
/// input: see `wgcable_api::ValidationError`).
fn invalid(key: &ObjectKey, cluster: Option<&str>, problems: &[ValidationError]) -> Refusal {
    let reason = problems.first().map_or("invalid", |p| p.reason.as_str());
    let mut listed: Vec<String> = problems
        .iter()
        .take(SHOWN)
        .map(ToString::to_string)
        .collect();
    if problems.len() > SHOWN {
        listed.push(format!("{} more", problems.len() - SHOWN));
    }
    let refusal = Refusal::new(
        key,
        Reason::Invalid(reason),
        format!("{key}: refused: {}", listed.join("; ")),
    );
    match cluster {
        // Validated: a DNS label, safe to name.
        Some(cluster) => refusal.for_cluster(cluster),
        None => refusal,
    }
}
