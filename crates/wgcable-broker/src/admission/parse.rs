//! The one place where an object's bytes become a typed, validated Endpoint.
//!
//! [`parse_object`] is the only caller of the Endpoint parser and of the per-object policy
//! checks in the whole admission layer, so that replacing them is a change to this file only.
//! Until the bounded parser of `wgcable-api` (depth pre-scan, per-list limits, sanitized
//! errors) and its subnet/address policy land, it calls `Endpoint::from_yaml`/`from_json` and
//! `EndpointSpec::validate` and sanitizes their errors here: their messages quote input (a
//! private key read through a link was printed by serde's `invalid type: string "..."`), so
//! only positions and field names are kept, never a message.

use std::net::IpAddr;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wgcable_api::{ApiError, Endpoint, ValidatedSpec};

use super::config::{LocalIdentity, ObjectLimits};
use super::refusal::{Reason, Refusal};
use crate::{Format, RawObject};

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

/// Parses and validates one object: bounded, and every error sanitized (see the module
/// documentation). Identity and conflicts are not judged here.
pub fn parse_object(
    raw: &RawObject,
    limits: &ObjectLimits,
    local: &LocalIdentity,
) -> Result<Candidate, Refusal> {
    let key = &raw.key;
    if raw.bytes.len() > limits.max_bytes {
        return Err(Refusal::new(
            key,
            Reason::TooLarge,
            format!(
                "{key}: refused: larger than {} bytes, the limit per object (limits.max_bytes)",
                limits.max_bytes
            ),
        ));
    }
    let text = std::str::from_utf8(&raw.bytes).map_err(|e| {
        Refusal::new(
            key,
            Reason::NotUtf8,
            format!(
                "{key}: refused: not UTF-8 text (invalid byte at offset {})",
                e.valid_up_to()
            ),
        )
    })?;
    let parsed = match raw.format {
        Format::Yaml => Endpoint::from_yaml(text),
        Format::Json => Endpoint::from_json(text),
    };
    let endpoint = parsed.map_err(|e| parse_refusal(raw, &e))?;

    if endpoint.spec.subnets.len() > limits.max_subnets {
        return Err(Refusal::new(
            key,
            Reason::TooManySubnets,
            format!(
                "{key}: refused: publishes {} subnets, more than the limit of {} \
                 (limits.max_subnets)",
                endpoint.spec.subnets.len(),
                limits.max_subnets
            ),
        ));
    }
    let spec = endpoint.spec.validate().map_err(|errors| {
        // Only the field names: the messages of this validator quote the values.
        let mut fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        fields.dedup();
        let shown = fields.len().min(8);
        let more = if fields.len() > shown {
            format!(" and {} more", fields.len() - shown)
        } else {
            String::new()
        };
        Refusal::new(
            key,
            Reason::Invalid("invalid"),
            format!(
                "{key}: refused: invalid Endpoint: {}{more} (values are not shown; check these \
                 fields against the Endpoint CRD)",
                fields[..shown].join(", ")
            ),
        )
    })?;
    // Our own Endpoint is compared with what we published, not judged as a remote one.
    let ours = local.own_key.as_ref() == Some(key);
    for subnet in spec.subnets.iter().filter(|_| !ours) {
        if let Some(local_net) = local
            .subnets
            .iter()
            .find(|l| l.contains(&subnet.network()) || subnet.contains(&l.network()))
        {
            return Err(Refusal::new(
                key,
                Reason::Invalid("subnet_overlaps_local"),
                format!(
                    "{key}: refused: subnet {subnet} overlaps the local cluster's subnet \
                     {local_net}"
                ),
            )
            // Validated above: a DNS label, safe to name.
            .for_cluster(&spec.cluster_id));
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

/// A parse error as a refusal: what kind of error and where, never the parser's message.
fn parse_refusal(raw: &RawObject, error: &ApiError) -> Refusal {
    let key = &raw.key;
    let (code, what, position) = match error {
        ApiError::ParseYaml { source, .. } => (
            "malformed",
            "not a well-formed YAML Endpoint",
            source
                .location()
                .map(|l| format!(" (at line {}, column {})", l.line(), l.column())),
        ),
        ApiError::ParseJson { source, .. } => (
            match source.classify() {
                serde_json::error::Category::Data => "wrong_type",
                _ => "malformed",
            },
            "not a well-formed JSON Endpoint",
            Some(format!(
                " (at line {}, column {})",
                source.line(),
                source.column()
            )),
        ),
        ApiError::WrongType { .. } => (
            "wrong_type",
            "not a submariner.io/v1 Endpoint (apiVersion or kind differ)",
            None,
        ),
        _ => ("malformed", "not a well-formed Endpoint", None),
    };
    Refusal::new(
        key,
        Reason::Parse(code),
        format!(
            "{key}: refused: {what}{} (the parser's own message is not shown: it may quote the \
             object's content)",
            position.unwrap_or_default()
        ),
    )
}
