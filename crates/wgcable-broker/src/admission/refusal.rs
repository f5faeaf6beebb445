//! Why an object was not admitted: a stable reason code and a message safe to log.

use std::fmt;

use crate::ObjectKey;

/// Why an object was refused. [`Reason::as_str`] is a stable metrics label
/// (`wgcable_endpoints_rejected_total{reason=...}`); it never changes for a variant once
/// released. Parse, validation and source reasons carry their owner's stable code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Reason {
    /// The source would not read the object (a symlink, a FIFO, a bad file name, ...); the
    /// code is the source's (see the source's documentation).
    Source(&'static str),
    /// Not one well-formed Endpoint within the limits; the code is `wgcable_api`'s
    /// `ParseProblem::reason` (`too_large`, `too_deep`, `syntax`, `too_many_subnets`, ...).
    Parse(&'static str),
    /// Parsing did not finish before the deadline.
    ParseDeadline,
    /// The Endpoint is malformed or claims what no remote may claim; the code is the
    /// validation or policy rule broken (`wgcable_api::Reason`: `subnet_special_purpose`,
    /// `subnet_covers_underlay`, `address_is_local`, ...).
    Invalid(&'static str),
    /// The object claims a cluster other than the one its location binds it to.
    Impostor,
    /// The object claims the local cluster but is not where this gateway publishes.
    LocalCluster,
    /// The object publishes this gateway's own WireGuard public key.
    OwnPublicKey,
    /// A cable driver other than WireGuard.
    UnsupportedBackend,
    /// No WireGuard public key.
    PublicKeyMissing,
    /// The source holds more objects than `max_objects`.
    TooManyObjects,
    /// Another object already holds this cluster.
    DuplicateCluster,
    /// Another cluster already uses this public key.
    DuplicateKey,
    /// A subnet overlaps a subnet another cluster holds.
    SubnetConflict,
    /// A subnet covers another remote gateway's endpoint IP, or this gateway's endpoint IP
    /// lies in a subnet another cluster holds.
    GatewayConflict,
}

impl Reason {
    /// The stable metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Source(code) | Reason::Parse(code) | Reason::Invalid(code) => code,
            Reason::ParseDeadline => "parse_deadline",
            Reason::Impostor => "impostor",
            Reason::LocalCluster => "local_cluster",
            Reason::OwnPublicKey => "own_public_key",
            Reason::UnsupportedBackend => "unsupported_backend",
            Reason::PublicKeyMissing => "public_key_missing",
            Reason::TooManyObjects => "too_many_objects",
            Reason::DuplicateCluster => "duplicate_cluster",
            Reason::DuplicateKey => "duplicate_key",
            Reason::SubnetConflict => "subnet_conflict",
            Reason::GatewayConflict => "gateway_conflict",
        }
    }

    /// Every code [`Reason::as_str`] is known to return (the admission layer's own, the file
    /// source's, the parser's most common and every validation rule's), for metrics to export
    /// at 0 before the first refusal. Other sources' codes are added as they occur.
    pub fn known_codes() -> Vec<&'static str> {
        let own = [
            Reason::ParseDeadline,
            Reason::Impostor,
            Reason::LocalCluster,
            Reason::OwnPublicKey,
            Reason::UnsupportedBackend,
            Reason::PublicKeyMissing,
            Reason::TooManyObjects,
            Reason::DuplicateCluster,
            Reason::DuplicateKey,
            Reason::SubnetConflict,
            Reason::GatewayConflict,
        ]
        .map(Reason::as_str);
        let file = [
            crate::file::SYMLINK,
            crate::file::NOT_REGULAR_FILE,
            crate::file::BAD_NAME,
            crate::file::UNREADABLE,
        ];
        let parse = [
            "too_large",
            "not_utf8",
            "nul_byte",
            "syntax",
            "too_deep",
            "too_many_subnets",
            "wrong_kind",
            "schema",
        ];
        let mut codes: Vec<&'static str> = own
            .into_iter()
            .chain(file)
            .chain(parse)
            .chain(wgcable_api::Reason::ALL.iter().map(|r| r.as_str()))
            .collect();
        codes.sort_unstable();
        codes.dedup();
        codes
    }

    /// A conflict with another cluster: the object waits and is admitted as soon as the
    /// conflict is gone, without changing.
    pub fn is_conflict(self) -> bool {
        matches!(
            self,
            Reason::DuplicateCluster
                | Reason::DuplicateKey
                | Reason::SubnetConflict
                | Reason::GatewayConflict
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One object refused, and why.
///
/// `message` names the object key and the rule broken. It never contains a value read from
/// the object, except a cluster id that passed validation (a DNS label: it cannot hold a
/// secret or break a log line) and addresses or CIDRs that were parsed into typed values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub key: ObjectKey,
    /// The cluster the object claims, once that claim passed validation.
    pub cluster: Option<String>,
    pub reason: Reason,
    pub message: String,
    /// For a conflict: the cluster that holds what this object wants.
    pub conflicts_with: Option<String>,
}

impl Refusal {
    pub(crate) fn new(key: &ObjectKey, reason: Reason, message: impl Into<String>) -> Self {
        Refusal {
            key: key.clone(),
            cluster: None,
            reason,
            message: message.into(),
            conflicts_with: None,
        }
    }

    pub(crate) fn for_cluster(mut self, cluster: &str) -> Self {
        self.cluster = Some(cluster.to_owned());
        self
    }

    pub(crate) fn against(mut self, other: &str) -> Self {
        self.conflicts_with = Some(other.to_owned());
        self
    }

    /// Whether the object is re-evaluated on its own once the conflict is gone.
    pub fn is_waiting(&self) -> bool {
        self.reason.is_conflict()
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}
