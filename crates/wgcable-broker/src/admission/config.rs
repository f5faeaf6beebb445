//! What admission is configured with: the limits (all with documented defaults) and what it
//! must know about the local gateway.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use wgcable_api::{AdmissionPolicy, Endpoint, ParseLimits, PublicKey};

use crate::ObjectKey;

/// How source events are coalesced into batches (see [`crate::debounce`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebounceConfig {
    /// A batch is closed once no event arrived for this long. Default 100 ms.
    pub window: Duration,
    /// ... or at the latest this long after its first event, however busy the source is, so
    /// continuous churn still yields one batch per `max_wait`. Default 1 s.
    pub max_wait: Duration,
}

impl Default for DebounceConfig {
    fn default() -> Self {
        DebounceConfig {
            window: Duration::from_millis(100),
            max_wait: Duration::from_secs(1),
        }
    }
}

/// Everything admission is configured with.
#[derive(Clone, Debug, PartialEq)]
pub struct AdmissionConfig {
    /// Structural limits on one object (`wgcable_api::ParseLimits`, whose defaults are
    /// documented there), except `max_bytes`: 32 KiB here. A Submariner Endpoint is under
    /// 2 KiB, one with Kubernetes' managed fields and last-applied annotation under 8 KiB;
    /// sources read at most this plus one byte, and a snapshot holds at most `max_objects`
    /// times this in memory (320 MiB at worst with the defaults; 10 MiB for 5,000 real
    /// Endpoints). One object must hold exactly one Endpoint (a List is refused).
    pub limits: ParseLimits,
    /// When not empty, every remote subnet must lie inside one of these (the operator's
    /// allow-list). Default: empty.
    pub allowed_subnets: Vec<IpNet>,
    /// The broadest IPv4 / IPv6 prefix a remote may claim. Defaults /8 and /32 (see
    /// `wgcable_api::AdmissionPolicy`).
    pub min_prefix_len_v4: u8,
    pub min_prefix_len_v6: u8,
    /// Most objects one source may hold (admitted, waiting and refused together); also the
    /// largest snapshot taken in. Beyond it, the objects already held and then the oldest (by
    /// the source's creation order) are kept, the others refused (`too_many_objects`).
    /// Default 10,000.
    pub max_objects: usize,
    /// How long parsing one batch may take before the objects still being parsed are refused
    /// (`parse_deadline`). Parsing runs on the blocking pool, so a slow object never stalls the
    /// gateway loop; the deadline bounds how long a batch waits for it. Default 5 s.
    pub parse_deadline: Duration,
    /// Threads parsing one batch at once; 0: as many as the machine has cores. Default 0.
    pub parse_workers: usize,
    /// Refusal warnings: at most one per object per `warn_interval` (a new reason is reported
    /// at once) and at most `max_warnings_per_interval` in all; the rest are counted and
    /// summarized once per interval. Defaults 60 s and 100.
    pub warn_interval: Duration,
    pub max_warnings_per_interval: usize,
    pub debounce: DebounceConfig,
    /// Largest registry file read back at start; a bigger one is treated as corrupt.
    /// Default 16 MiB (10,000 clusters take about 3 MiB).
    pub max_registry_bytes: usize,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        let policy = AdmissionPolicy::default();
        AdmissionConfig {
            limits: ParseLimits {
                max_bytes: 32 * 1024,
                ..ParseLimits::default()
            },
            allowed_subnets: Vec::new(),
            min_prefix_len_v4: policy.min_prefix_len_v4,
            min_prefix_len_v6: policy.min_prefix_len_v6,
            max_objects: 10_000,
            parse_deadline: Duration::from_secs(5),
            parse_workers: 0,
            warn_interval: Duration::from_secs(60),
            max_warnings_per_interval: 100,
            debounce: DebounceConfig::default(),
            max_registry_bytes: 16 * 1024 * 1024,
        }
    }
}

/// What admission must know about the local gateway.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalIdentity {
    pub cluster_id: String,
    pub public_key: PublicKey,
    /// The local cluster's subnets: no remote may claim any part of them.
    pub subnets: Vec<IpNet>,
    /// This gateway's underlay addresses (private and public IP).
    pub underlay: Vec<IpAddr>,
    /// Where the source publishes the local Endpoint ([`crate::EndpointSource::own_key`]).
    pub own_key: Option<ObjectKey>,
    /// The local Endpoint as published: an object at `own_key` that differs from it makes
    /// admission ask for a republish.
    pub published: Endpoint,
}
