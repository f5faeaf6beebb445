//! [`Remote`]: a remote cluster's Endpoint, typed once on arrival.

use std::net::IpAddr;
use std::sync::Arc;

use wgcable_api::{Endpoint, EndpointSpec, NatEndpointInfo, ValidatedSpec};
use wgcable_peers::{PeerCandidate, PeerError};

use crate::health::HealthTarget;
use crate::Error;

/// A remote cluster the driver connects to: the Endpoint as published (what its `Connection`
/// reports), its validated form, and how it is reached. Built once, when the Endpoint arrives;
/// nothing below it parses a string again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub endpoint: Arc<Endpoint>,
    /// The Endpoint's spec as its `Connection` reports it, shared by every status poll.
    pub published: Arc<EndpointSpec>,
    pub spec: Arc<ValidatedSpec>,
    /// The address its gateway is reached on (Submariner's `UseIP`).
    pub use_ip: IpAddr,
    /// Whether NAT is between the two gateways (either side behind NAT).
    pub use_nat: bool,
    /// Its priority in conflicts: lower wins. `None`: the driver decides (after every
    /// cluster it already has).
    pub seniority: Option<u64>,
}

impl Remote {
    /// Validates `endpoint` and picks the address to reach it on as Submariner's engine does:
    /// its public IP when either side is behind NAT and it publishes one, else its private IP.
    pub fn new(endpoint: Endpoint, local_nat: bool) -> Result<Self, Error> {
        let spec = endpoint
            .spec
            .validate()
            .map_err(|source| Error::InvalidEndpoint {
                cluster_id: endpoint.spec.cluster_id.clone(),
                source: Box::new(source),
            })?;
        Ok(Self::validated(endpoint, Arc::new(spec), local_nat))
    }

    /// [`Remote::new`] for an Endpoint validated by the caller (the admission layer).
    pub fn validated(endpoint: Endpoint, spec: Arc<ValidatedSpec>, local_nat: bool) -> Self {
        let use_nat = local_nat || spec.nat_enabled;
        let use_ip = spec
            .public_ips
            .first()
            .filter(|_| use_nat)
            .or(spec.private_ips.first())
            .copied()
            .expect("a validated spec has at least one private IP");
        Remote {
            published: Arc::new(endpoint.spec.clone()),
            endpoint: Arc::new(endpoint),
            spec,
            use_ip,
            use_nat,
            seniority: None,
        }
    }

    /// From Submariner's `NATEndpointInfo` (the cable driver contract): the caller chose the
    /// IP and NAT already.
    pub fn from_nat_info(info: &NatEndpointInfo) -> Result<Self, Error> {
        let cluster_id = info.endpoint.spec.cluster_id.clone();
        let spec = info
            .endpoint
            .spec
            .validate()
            .map_err(|source| Error::InvalidEndpoint {
                cluster_id: cluster_id.clone(),
                source: Box::new(source),
            })?;
        let use_ip: IpAddr = info.use_ip.trim().parse().map_err(|_| Error::Refused {
            cluster_id,
            source: Box::new(PeerError::InvalidUseIp(info.use_ip.clone())),
        })?;
        Ok(Remote {
            published: Arc::new(info.endpoint.spec.clone()),
            endpoint: Arc::new(info.endpoint.clone()),
            spec: Arc::new(spec),
            use_ip,
            use_nat: info.use_nat,
            seniority: None,
        })
    }

    /// With a seniority (see [`Remote::seniority`]).
    pub fn with_seniority(mut self, seniority: u64) -> Self {
        self.seniority = Some(seniority);
        self
    }

    pub fn cluster_id(&self) -> &str {
        &self.spec.cluster_id
    }

    pub(crate) fn candidate(&self) -> PeerCandidate {
        PeerCandidate {
            cluster_id: self.spec.cluster_id.clone(),
            endpoint_name: self.endpoint.name().to_owned(),
            spec: self.spec.clone(),
            use_ip: self.use_ip,
        }
    }

    /// The health-check targets of this remote: one per IP family both sides have an
    /// address of (see [`HealthTarget::per_family`]).
    pub(crate) fn health_targets(&self, local: &[IpAddr]) -> Vec<HealthTarget> {
        HealthTarget::per_family(self.cluster_id(), &self.spec.health_check_ips, local)
    }
}
