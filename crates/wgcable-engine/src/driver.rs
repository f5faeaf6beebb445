//! The WireGuard cable driver: Submariner's driver contract, carried out by reconciliation.
//!
//! Every operation (connect, disconnect, periodic resync) ends in the same place:
//! [`WireGuardDriver::reconcile`] computes what the device, the routes and the rule should be
//! from the endpoints the driver was given, compares with what the kernel and the device
//! have, and applies only the difference. That single path is why a restart adopts what is
//! already right, why drift is repaired, and why a bad endpoint never leaves half-applied
//! state: it is refused while planning, before anything is touched.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use ipnet::IpNet;
use wgcable_api::{
    Connection, ConnectionStatus, Endpoint, EndpointSpec, NatEndpointInfo,
    BACKEND_CONFIG_INTERFACE_NAME, BACKEND_CONFIG_PUBLIC_KEY, BACKEND_CONFIG_UDP_PORT,
};
use wgcable_keys::{PrivateKey, PublicKey};
use wgcable_metrics::{CableLabels, GatewayMetrics};
use wgcable_netlink::{IpFamily, Netlink, RouteSpec, Rule};
use wgcable_peers::{
    BackendKind, DesiredPeer, DeviceStatus, DeviceUpdate, LocalPeerConfig, PeerChange, PeerStatus,
    PeerTrack, WgDevice,
};

use crate::config::{DriverConfig, CABLE_DRIVER_NAME, WIREGUARD_OVERHEAD};
use crate::Error;

/// Submariner's cable driver contract (pkg/cable/driver.go), as a Rust trait.
#[async_trait]
pub trait CableDriver: Send + Sync {
    /// Prepares the device: creates or adopts it and makes sure it carries our key and port.
    async fn init(&self) -> Result<(), Error>;
    /// Connects to a remote cluster's gateway; returns the IP used to reach it.
    async fn connect_to_endpoint(&self, info: &NatEndpointInfo) -> Result<String, Error>;
    /// Removes the connection to a remote cluster.
    async fn disconnect_from_endpoint(&self, endpoint: &Endpoint) -> Result<(), Error>;
    /// The status of every connection, judged now.
    async fn connections(&self) -> Result<Vec<Connection>, Error>;
    /// Connections the driver keeps active itself (WireGuard keeps none, as upstream).
    async fn active_connections(&self) -> Result<Vec<Connection>, Error>;
    /// The driver's name, `wireguard`.
    fn name(&self) -> &'static str;
    /// Uninstalls: removes the rule, the routes and the device.
    async fn cleanup(&self) -> Result<(), Error>;
}

/// Why a reconcile runs: it decides whether differences found are drift.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The desired state changed (connect, disconnect, start): differences are expected.
    Intent,
    /// A periodic resync: any difference is drift and is counted as a repair.
    Resync,
}

/// What one reconcile did, for logs, metrics and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// The device had to be created.
    pub device_created: bool,
    /// The device's key or listen port had to be set.
    pub device_configured: bool,
    /// Peers added, updated, removed.
    pub peers_added: usize,
    /// Peers whose endpoint, allowed IPs, keepalive or PSK changed.
    pub peers_updated: usize,
    /// Peers removed (disconnected clusters and unknown peers).
    pub peers_removed: usize,
    /// Routes added or replaced.
    pub routes_added: usize,
    /// Routes removed.
    pub routes_removed: usize,
    /// Rules added.
    pub rules_added: usize,
    /// Link attributes changed (MTU, up, addresses).
    pub link_changes: usize,
    /// Endpoints refused, with the reason.
    pub refused: Vec<(String, String)>,
}

impl ReconcileReport {
    /// True when nothing at all was changed on the host.
    pub fn is_noop(&self) -> bool {
        !self.device_created
            && !self.device_configured
            && self.peers_added + self.peers_updated + self.peers_removed == 0
            && self.routes_added + self.routes_removed + self.rules_added + self.link_changes == 0
    }
}

/// One remote cluster the driver was asked to connect to.
#[derive(Clone, Debug)]
struct Remote {
    info: NatEndpointInfo,
    /// Validated once, when the endpoint arrives: planning thousands of endpoints at every
    /// reconcile must not decode every key and parse every address again.
    spec: wgcable_api::ValidatedSpec,
    use_ip: IpAddr,
}

/// Per-connection memory for status judgement and metrics.
#[derive(Clone, Debug)]
struct Tracked {
    key: PublicKey,
    track: PeerTrack,
    labels: CableLabels,
}

#[derive(Debug, Default)]
struct State {
    /// Remote clusters in the order they were accepted: earlier ones win conflicts.
    remotes: Vec<Remote>,
    /// The peers of the last plan, by cluster id.
    desired: BTreeMap<String, DesiredPeer>,
    /// Clusters refused by the last plan, with the reason.
    refused: BTreeMap<String, String>,
    tracked: HashMap<String, Tracked>,
    /// At least one reconcile went through: later device/rule creations are repairs.
    reconciled: bool,
    /// The endpoint we last configured for each peer (see roaming in `reconcile_inner`).
    applied_endpoints: HashMap<PublicKey, std::net::SocketAddr>,
    /// What the host looked like after the last reconcile, so that a single connect or
    /// disconnect is applied from the plan alone (see `apply_from_cache`).
    cache: Option<HostCache>,
}

/// The device's peers and our routes as the last reconcile left them.
#[derive(Debug)]
struct HostCache {
    link_index: u32,
    device: DeviceStatus,
    routes: Vec<RouteSpec>,
}

/// The WireGuard cable driver.
pub struct WireGuardDriver {
    config: DriverConfig,
    private_key: PrivateKey,
    public_key: PublicKey,
    netlink: Arc<dyn Netlink>,
    device: Arc<dyn WgDevice>,
    metrics: Arc<GatewayMetrics>,
    state: tokio::sync::Mutex<State>,
    /// Mirrors of state for the HTTP server, which must never wait on a reconcile.
    snapshot: std::sync::Mutex<(Arc<Vec<Connection>>, bool)>,
    /// Pings each remote gateway's health-check IP through the tunnel (optional).
    health: Option<Arc<crate::health::HealthChecker>>,
    /// Remote subnets already warned about for source NAT (warn once, not every resync).
    snat_warned: std::sync::Mutex<std::collections::BTreeSet<IpNet>>,
}

impl std::fmt::Debug for WireGuardDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireGuardDriver")
            .field("cluster_id", &self.config.cluster_id)
            .field("device", &self.config.device)
            .field("public_key", &self.public_key)
            .field("backend", &self.device.kind())
            .finish_non_exhaustive()
    }
}

impl WireGuardDriver {
    /// Builds a driver; nothing is touched until [`CableDriver::init`] or a reconcile.
    pub fn new(
        config: DriverConfig,
        private_key: PrivateKey,
        netlink: Arc<dyn Netlink>,
        device: Arc<dyn WgDevice>,
        metrics: Arc<GatewayMetrics>,
    ) -> Result<Self, Error> {
        config.validate()?;
        let public_key = private_key.public_key();
        metrics.set_backend(&device.kind().to_string());
        Ok(WireGuardDriver {
            config,
            private_key,
            public_key,
            netlink,
            device,
            metrics,
            state: tokio::sync::Mutex::new(State::default()),
            snapshot: std::sync::Mutex::new((Arc::default(), false)),
            snat_warned: std::sync::Mutex::new(Default::default()),
            health: None,
        })
    }

    /// Adds health checking: the checker is told which remote gateways to ping whenever the
    /// set of connections changes, and its verdicts feed the connections' latency and status.
    /// The caller runs it (`HealthChecker::run`); the driver spawns nothing.
    pub fn with_health(mut self, health: Arc<crate::health::HealthChecker>) -> Self {
        self.health = Some(health);
        self
    }

    /// The driver's configuration.
    pub fn config(&self) -> &DriverConfig {
        &self.config
    }

    /// The public key published for this gateway.
    pub fn public_key(&self) -> PublicKey {
        self.public_key
    }

    /// The backend the device lives in.
    pub fn backend(&self) -> BackendKind {
        self.device.kind()
    }

    /// The local cluster's Endpoint as Submariner would publish it.
    pub fn local_endpoint(&self) -> Endpoint {
        let c = &self.config;
        let mut spec = EndpointSpec {
            cluster_id: c.cluster_id.clone(),
            cable_name: format!(
                "submariner-cable-{}-{}",
                c.cluster_id,
                c.private_ip.to_string().replace(['.', ':'], "-")
            ),
            hostname: c.hostname.clone(),
            subnets: c.local_subnets.iter().map(|n| n.to_string()).collect(),
            private_ip: c.private_ip.to_string(),
            public_ip: c.public_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            nat_enabled: c.nat,
            backend: CABLE_DRIVER_NAME.to_string(),
            health_check_ip: c
                .health_check_ips
                .first()
                .map(|ip| ip.to_string())
                .unwrap_or_default(),
            // Upstream's dual-stack list; only written when there is more than one address.
            health_check_ips: if c.health_check_ips.len() > 1 {
                c.health_check_ips.iter().map(|ip| ip.to_string()).collect()
            } else {
                Vec::new()
            },
            ..EndpointSpec::default()
        };
        spec.set_backend_config(BACKEND_CONFIG_PUBLIC_KEY, self.public_key.to_base64());
        spec.set_backend_config(BACKEND_CONFIG_INTERFACE_NAME, c.device.clone());
        spec.set_backend_config(BACKEND_CONFIG_UDP_PORT, c.listen_port.to_string());
        Endpoint::new(spec)
    }

    /// Builds the `NatEndpointInfo` for a remote Endpoint as Submariner's engine does: the
    /// remote private IP, or its public IP when either side is behind NAT.
    pub fn nat_info(&self, endpoint: Endpoint) -> NatEndpointInfo {
        let use_nat = self.config.nat || endpoint.spec.nat_enabled;
        let use_ip = if use_nat && !endpoint.spec.public_ip.is_empty() {
            endpoint.spec.public_ip.clone()
        } else {
            endpoint.spec.private_ip.clone()
        };
        NatEndpointInfo {
            endpoint,
            use_ip,
            use_nat,
        }
    }

    /// Replaces the whole set of remote endpoints at once and reconciles once. Used at start
    /// with the broker's snapshot: reconciling after each endpoint would remove the peers of
    /// the endpoints not yet seen and cut their traffic.
    pub async fn set_endpoints(
        &self,
        infos: Vec<NatEndpointInfo>,
    ) -> Result<ReconcileReport, Error> {
        let mut st = self.state.lock().await;
        let observed = self.read_device().await?;
        // Clusters whose key is already on the device are incumbents: they go first, so a
        // newcomer that claims their subnets cannot take their traffic across a restart.
        let on_device: Vec<PublicKey> = observed
            .iter()
            .flat_map(|d| d.peers.iter().map(|p| p.config.public_key))
            .collect();
        let mut remotes = Vec::new();
        for info in infos {
            match self.remote(info) {
                Ok(r) => remotes.push(r),
                Err(e) => {
                    tracing::warn!(error = %crate::error::chain(&e), "endpoint skipped");
                    self.metrics.inc_endpoint_rejected("invalid");
                }
            }
        }
        remotes.sort_by_key(|r| {
            let key = r.info.endpoint.spec.public_key().ok().flatten();
            !key.is_some_and(|k| on_device.contains(&k))
        });
        st.remotes = remotes;
        self.reconcile_locked(&mut st, Trigger::Intent).await
    }

    fn remote(&self, info: NatEndpointInfo) -> Result<Remote, Error> {
        let cluster_id = info.endpoint.spec.cluster_id.clone();
        let spec = info
            .endpoint
            .spec
            .validate()
            .map_err(|source| Error::InvalidEndpoint {
                cluster_id: cluster_id.clone(),
                source: Box::new(source),
            })?;
        let use_ip: IpAddr = info.use_ip.parse().map_err(|_| Error::Refused {
            cluster_id: cluster_id.clone(),
            source: Box::new(wgcable_peers::PeerError::InvalidUseIp(info.use_ip.clone())),
        })?;
        Ok(Remote { info, spec, use_ip })
    }

    async fn read_device(&self) -> Result<Option<DeviceStatus>, Error> {
        let name = &self.config.device;
        self.device
            .read(name)
            .await
            .map_err(Error::device(format!("reading WireGuard device {name}")))
    }

    fn local_peer_config(&self) -> LocalPeerConfig {
        LocalPeerConfig {
            cluster_id: self.config.cluster_id.clone(),
            public_key: self.public_key,
            listen_port: self.config.listen_port,
            preshared_key: self.config.preshared_key.clone(),
            local_subnets: self.config.local_subnets.clone(),
            keepalive: wgcable_peers::KEEPALIVE.as_secs() as u16,
        }
    }

    /// Makes the device, routes and rule match the endpoints the driver holds.
    pub async fn reconcile(&self, trigger: Trigger) -> Result<ReconcileReport, Error> {
        let mut st = self.state.lock().await;
        self.reconcile_locked(&mut st, trigger).await
    }

    async fn reconcile_locked(
        &self,
        st: &mut State,
        trigger: Trigger,
    ) -> Result<ReconcileReport, Error> {
        self.reconcile_planned(st, trigger, None).await
    }

    /// A reconcile with the peers already planned from `st.remotes` (connect plans first, to
    /// refuse before touching anything, and need not plan twice).
    async fn reconcile_planned(
        &self,
        st: &mut State,
        trigger: Trigger,
        planned: Option<wgcable_peers::DesiredPeers>,
    ) -> Result<ReconcileReport, Error> {
        self.metrics.inc_reconcile();
        let result = self.reconcile_inner(st, trigger, planned).await;
        match &result {
            Ok(report) => {
                if !report.is_noop() {
                    tracing::info!(?trigger, ?report, "reconciled");
                }
                st.reconciled = true;
                self.set_ready(true);
            }
            Err(e) => {
                self.metrics.inc_reconcile_error();
                tracing::warn!(error = %crate::error::chain(e), "reconcile failed; retrying at the next resync");
            }
        }
        result
    }

    async fn reconcile_inner(
        &self,
        st: &mut State,
        trigger: Trigger,
        planned: Option<wgcable_peers::DesiredPeers>,
    ) -> Result<ReconcileReport, Error> {
        let c = &self.config;
        let mut report = ReconcileReport::default();

        // 1. Plan the peers first: a refused endpoint is dropped here, before anything is
        // touched, so it cannot leave half-applied state or disturb the others.
        let desired = planned.unwrap_or_else(|| {
            wgcable_peers::desired_peers_validated(
                &self.local_peer_config(),
                st.remotes.iter().map(|r| (&r.info, &r.spec)),
            )
        });
        // Clusters that were refused and are accepted now are intended changes, not drift.
        let newly_accepted = st
            .refused
            .keys()
            .any(|c| !desired.rejected.iter().any(|(r, _)| r == c));
        let counts_as_drift = trigger == Trigger::Resync && !newly_accepted;
        let mut refused = BTreeMap::new();
        for (cluster, err) in &desired.rejected {
            let msg = crate::error::chain(err);
            if st.refused.get(cluster) != Some(&msg) {
                tracing::warn!(cluster = %cluster, reason = %msg, "endpoint refused");
                self.metrics.inc_endpoint_rejected("refused");
            }
            report.refused.push((cluster.clone(), msg.clone()));
            refused.insert(cluster.clone(), msg);
        }
        st.refused = refused;

        let repair = |what: &str, happened: bool| {
            if happened && counts_as_drift {
                tracing::warn!(what, "drift repaired");
                self.metrics.inc_repair(what);
            }
        };

        // A connect or disconnect right after a reconcile: apply the plan against what that
        // reconcile left, without reading the whole device and routing table back. Drift is
        // the periodic resync's business; if the cache is stale, the full path below runs.
        if trigger == Trigger::Intent {
            if let Some(cache) = st.cache.take() {
                match self
                    .apply_from_cache(st, &desired.peers, cache, &mut report)
                    .await
                {
                    Ok(cache) => {
                        st.cache = Some(cache);
                        self.finish(st, desired.peers);
                        return Ok(report);
                    }
                    Err(e) => {
                        tracing::debug!(error = %crate::error::chain(&e), "incremental apply failed; reconciling in full");
                        report = ReconcileReport {
                            refused: report.refused,
                            ..Default::default()
                        };
                    }
                }
            }
        }

        // 2. The device exists.
        let created = self
            .device
            .ensure(&c.device)
            .await
            .map_err(Error::device(format!(
                "creating WireGuard device {}",
                c.device
            )))?;
        report.device_created = created;
        repair("device", created && st.reconciled);
        // 3. The link: up, MTU, the gateway's address, before any peer is configured: a
        // userspace device whose link is down when a peer is added sends that peer nothing,
        // so a handshake the other side started before it knew us would only be retried
        // after WireGuard's 5 s rekey timeout (seen as a 5 s first connection).
        let link = self
            .netlink
            .link_get(&c.device)
            .await
            .map_err(Error::netlink(format!("looking up link {}", c.device)))?
            .ok_or_else(|| Error::Config {
                message: format!("device {} exists but its link is missing", c.device),
            })?;
        let mtu = match c.mtu {
            Some(m) => m,
            None => self.auto_mtu(&st.remotes).await?,
        };
        if link.mtu != mtu {
            self.netlink
                .link_set_mtu(link.index, mtu)
                .await
                .map_err(Error::netlink(format!("setting MTU {mtu} on {}", c.device)))?;
            report.link_changes += 1;
        }
        if !link.up {
            self.netlink
                .link_set_up(link.index, true)
                .await
                .map_err(Error::netlink(format!("bringing {} up", c.device)))?;
            report.link_changes += 1;
        }
        let current = self
            .netlink
            .addr_list(link.index)
            .await
            .map_err(Error::netlink(format!("listing addresses of {}", c.device)))?;
        // Keep IPv6 link-local addresses the kernel may have added; everything else is ours.
        let mut wanted: Vec<IpNet> = current
            .iter()
            .filter(|a| matches!(a, IpNet::V6(n) if n.addr().segments()[0] & 0xffc0 == 0xfe80))
            .copied()
            .collect();
        wanted.extend(c.health_check_ips.iter().map(|&hc| IpNet::from(hc)));
        let addrs = wgcable_netlink::ensure_addrs(&*self.netlink, link.index, &wanted)
            .await
            .map_err(Error::netlink(format!(
                "setting the addresses of {}",
                c.device
            )))?;
        let addr_changes = addrs.to_add.len() + addrs.to_del.len();
        report.link_changes += addr_changes;
        repair("addr", addr_changes > 0 && !created);

        // 4. The peers, and the device's key and port.
        let observed = self.read_device().await?;
        let planned = mask_roaming(st, &desired.peers);
        let plan = wgcable_peers::plan(&planned, observed.as_ref());
        let mut update = plan.to_update();
        if needs_identity(observed.as_ref(), &self.public_key, c.listen_port) {
            update.private_key = Some(self.private_key.clone());
            update.listen_port = Some(c.listen_port);
            report.device_configured = true;
        }
        self.apply_peers(&plan, &update, &mut report).await?;
        repair("peer", !plan.is_empty() && !created);
        record_endpoints(st, &desired.peers, &plan, observed.as_ref());

        // 5. Routes to every accepted remote subnet, in our table, through the device.
        let routes = self.route_specs(&desired.peers, link.index);
        let diff = wgcable_netlink::sync_routes(&*self.netlink, c.table, link.index, &routes)
            .await
            .map_err(Error::netlink(format!(
                "syncing routes in table {} through {}",
                c.table, c.device
            )))?;
        report.routes_added = diff.to_add.len();
        report.routes_removed = diff.to_del.len();
        repair("route", !diff.to_add.is_empty() && !created);

        // 6. One rule per IP family in use, sending traffic to our table.
        let mut families = vec![IpFamily::V4];
        if c.local_subnets
            .iter()
            .chain(routes.iter().map(|r| &r.dst))
            .any(|n| matches!(n, IpNet::V6(_)))
        {
            families.push(IpFamily::V6);
        }
        for family in families {
            let added = wgcable_netlink::ensure_rule(&*self.netlink, &self.rule(family))
                .await
                .map_err(Error::netlink(format!(
                    "adding the rule that looks up table {}",
                    c.table
                )))?;
            if added {
                report.rules_added += 1;
            }
            repair("rule", added && st.reconciled);
        }

        // 7. Remember what the host looks like now, and what is connected.
        let mut device = observed.unwrap_or_else(|| DeviceStatus {
            name: c.device.clone(),
            public_key: None,
            listen_port: None,
            peers: Vec::new(),
        });
        apply_to(&mut device, &update);
        st.cache = Some(HostCache {
            link_index: link.index,
            device,
            routes,
        });
        self.finish(st, desired.peers);
        Ok(report)
    }

    /// Bookkeeping after a reconcile: forget what left, keep what stays, tell the metrics and
    /// the health checker.
    fn finish(&self, st: &mut State, peers: Vec<DesiredPeer>) {
        let c = &self.config;
        let new_desired: BTreeMap<String, DesiredPeer> = peers
            .into_iter()
            .map(|p| (p.cluster_id.clone(), p))
            .collect();
        let gone: Vec<String> = st
            .tracked
            .keys()
            .filter(|k| !new_desired.contains_key(*k))
            .cloned()
            .collect();
        for cluster in gone {
            if let Some(t) = st.tracked.remove(&cluster) {
                self.metrics.remove_cable(&t.labels);
            }
        }
        // A cluster whose key changed is a new connection.
        st.tracked.retain(|cluster, t| {
            new_desired
                .get(cluster)
                .is_some_and(|p| p.config.public_key == t.key)
        });
        st.desired = new_desired;
        self.metrics.set_peers(st.desired.len());
        if let Some(health) = &self.health {
            let targets = st
                .remotes
                .iter()
                .filter(|r| st.desired.contains_key(&r.info.endpoint.spec.cluster_id))
                .flat_map(|r| {
                    crate::health::HealthTarget::per_family(
                        &r.spec.cluster_id,
                        &r.spec.health_check_ips,
                        &c.health_check_ips,
                    )
                })
                .collect();
            health.set_targets(targets);
        }
    }

    /// Applies a peer plan (and any identity change in `update`) as one device update, and
    /// reports it.
    async fn apply_peers(
        &self,
        plan: &wgcable_peers::PeerPlan,
        update: &DeviceUpdate,
        report: &mut ReconcileReport,
    ) -> Result<(), Error> {
        report.peers_added = plan.add.len();
        report.peers_updated = plan.update.len();
        report.peers_removed = plan.remove.len();
        if update.is_empty() {
            return Ok(());
        }
        let name = &self.config.device;
        self.device
            .apply(name, update)
            .await
            .map_err(Error::device(format!(
                "configuring {} peer change(s) on device {name}",
                plan.len()
            )))
    }

    /// Routes to every accepted remote subnet, in our table, through the device.
    fn route_specs(&self, peers: &[DesiredPeer], link_index: u32) -> Vec<RouteSpec> {
        let c = &self.config;
        peers
            .iter()
            .flat_map(|p| p.config.allowed_ips.iter())
            .map(|dst| RouteSpec {
                dst: *dst,
                oif: link_index,
                table: c.table,
                pref_src: c.source_for(dst),
            })
            .collect()
    }

    /// The incremental path: plan against the cached device, one device update, and only the
    /// routes that differ. Costs one round trip per kind of change instead of a dump of every
    /// peer and route (at 1,000 clusters, milliseconds instead of a full read-back).
    async fn apply_from_cache(
        &self,
        st: &mut State,
        peers: &[DesiredPeer],
        mut cache: HostCache,
        report: &mut ReconcileReport,
    ) -> Result<HostCache, Error> {
        let c = &self.config;
        let planned = mask_roaming(st, peers);
        let plan = wgcable_peers::plan(&planned, Some(&cache.device));
        let update = plan.to_update();
        self.apply_peers(&plan, &update, report).await?;
        record_endpoints(st, peers, &plan, Some(&cache.device));
        apply_to(&mut cache.device, &update);

        let routes = self.route_specs(peers, cache.link_index);
        let key = |r: &RouteSpec| (r.dst, r.pref_src);
        let had: std::collections::HashSet<_> = cache.routes.iter().map(key).collect();
        let want: std::collections::HashSet<_> = routes.iter().map(key).collect();
        let to_add: Vec<RouteSpec> = routes
            .iter()
            .filter(|r| !had.contains(&key(r)))
            .cloned()
            .collect();
        let to_del: Vec<wgcable_netlink::Route> = cache
            .routes
            .iter()
            .filter(|r| !want.contains(&key(r)))
            .map(|r| wgcable_netlink::Route {
                dst: r.dst,
                table: r.table,
                oif: Some(r.oif),
                gateway: None,
                pref_src: r.pref_src,
                // Static, as installed; scope "nowhere" matches any scope, as `ip route del`.
                protocol: 4,
                scope: 255,
            })
            .collect();
        if !to_add.is_empty() {
            self.netlink
                .route_add(&to_add)
                .await
                .map_err(Error::netlink(format!(
                    "adding {} route(s) in table {} through {}",
                    to_add.len(),
                    c.table,
                    c.device
                )))?;
        }
        if !to_del.is_empty() {
            self.netlink
                .route_del(&to_del)
                .await
                .map_err(Error::netlink(format!(
                    "removing {} route(s) from table {}",
                    to_del.len(),
                    c.table
                )))?;
        }
        report.routes_added = to_add.len();
        report.routes_removed = to_del.len();
        cache.routes = routes;
        Ok(cache)
    }

    async fn auto_mtu(&self, remotes: &[Remote]) -> Result<u32, Error> {
        // The underlay towards the peers; with none yet, towards our own underlay address's
        // network (the route lookup of our own address would say `lo`).
        let target = remotes.first().map(|r| r.use_ip);
        let underlay = match target {
            Some(ip) => wgcable_netlink::underlay_mtu(&*self.netlink, ip).await,
            None => self.local_underlay_mtu().await,
        };
        match underlay {
            Ok(mtu) if mtu > WIREGUARD_OVERHEAD + 576 => Ok(mtu - WIREGUARD_OVERHEAD),
            Ok(_) | Err(_) => Ok(1420),
        }
    }

    async fn local_underlay_mtu(&self) -> Result<u32, wgcable_netlink::Error> {
        for link in self.netlink.link_list().await? {
            if link.name == self.config.device {
                continue;
            }
            let addrs = self.netlink.addr_list(link.index).await?;
            if addrs.iter().any(|a| a.addr() == self.config.private_ip) {
                return Ok(link.mtu);
            }
        }
        Ok(1500)
    }

    fn rule(&self, family: IpFamily) -> Rule {
        Rule {
            family,
            priority: Some(self.config.rule_priority),
            table: self.config.table,
            dst: None,
            src: None,
            fwmark: None,
            fwmask: None,
            invert: false,
        }
    }

    /// Looks for source NAT of traffic to remote subnets in the kernel's connection tracking
    /// (see [`crate::snat`]) and warns once per remote subnet. Without conntrack (module not
    /// loaded) there is nothing to look at and nothing is reported.
    pub async fn check_snat(&self) -> Vec<crate::snat::SnatFinding> {
        let remote: Vec<IpNet> = {
            let st = self.state.lock().await;
            st.desired
                .values()
                .flat_map(|p| p.config.allowed_ips.iter().copied())
                .collect()
        };
        if remote.is_empty() {
            return Vec::new();
        }
        let Ok(text) = tokio::fs::read_to_string("/proc/net/nf_conntrack").await else {
            return Vec::new();
        };
        let found = crate::snat::find_snat(&text, &remote);
        if let Ok(mut warned) = self.snat_warned.lock() {
            for f in &found {
                if warned.insert(f.remote_subnet) {
                    tracing::warn!(
                        remote_subnet = %f.remote_subnet,
                        src = %f.original_src,
                        rewritten_to = %f.translated_src,
                        "traffic to a remote cluster is source-NATed before it reaches the WireGuard device; \
                         the remote gateway will drop it. Exclude the remote subnets from the CNI's masquerading \
                         (the known incompatibility of this driver with some CNIs, e.g. Calico)"
                    );
                }
            }
        }
        found
    }

    fn set_ready(&self, ready: bool) {
        if let Ok(mut s) = self.snapshot.lock() {
            s.1 = ready;
        }
    }

    /// Judges every connection now, feeds the metrics and keeps the result for
    /// [`WireGuardDriver::last_connections`]; [`CableDriver::connections`] is this plus a copy.
    pub async fn poll(&self) -> Result<Arc<Vec<Connection>>, Error> {
        let mut st = self.state.lock().await;
        let observed = self.read_device().await?;
        let conns = Arc::new(self.judge_all(&mut st, observed.as_ref(), SystemTime::now()));
        if let Ok(mut s) = self.snapshot.lock() {
            s.0 = conns.clone();
        }
        Ok(conns)
    }

    /// The last judged connections, without waiting for a reconcile (for the HTTP server).
    pub fn last_connections(&self) -> Vec<Connection> {
        self.snapshot
            .lock()
            .map(|s| s.0.as_ref().clone())
            .unwrap_or_default()
    }

    /// True once the device is configured and the first reconcile went through.
    pub fn is_ready(&self) -> bool {
        self.snapshot.lock().map(|s| s.1).unwrap_or(false)
    }

    fn judge_all(
        &self,
        st: &mut State,
        observed: Option<&DeviceStatus>,
        now: SystemTime,
    ) -> Vec<Connection> {
        let c = &self.config;
        let mut out = Vec::new();
        let by_key: HashMap<PublicKey, &PeerStatus> = observed
            .map(|d| d.peers.iter().map(|p| (p.config.public_key, p)).collect())
            .unwrap_or_default();
        for remote in &st.remotes {
            let spec = &remote.info.endpoint.spec;
            let cluster = &spec.cluster_id;
            let labels = CableLabels {
                cable_driver: CABLE_DRIVER_NAME.to_string(),
                local_cluster: c.cluster_id.clone(),
                local_hostname: c.hostname.clone(),
                local_endpoint_ip: c.private_ip.to_string(),
                remote_cluster: cluster.clone(),
                remote_hostname: spec.hostname.clone(),
                remote_endpoint_ip: remote.use_ip.to_string(),
            };
            let mut conn = Connection {
                status: ConnectionStatus::Error,
                status_message: String::new(),
                endpoint: spec.clone(),
                using_ip: remote.use_ip.to_string(),
                using_nat: remote.info.use_nat,
                latency_rtt: None,
            };
            if let Some(reason) = st.refused.get(cluster) {
                conn.status_message = format!("refused: {reason}");
                out.push(conn);
                continue;
            }
            let Some(peer) = st.desired.get(cluster) else {
                continue;
            };
            let key = peer.config.public_key;
            let status = by_key.get(&key).copied();
            let Some(status) = status else {
                conn.status = ConnectionStatus::Connecting;
                conn.status_message = "peer not configured on the device yet".into();
                out.push(conn);
                continue;
            };
            let prev = st.tracked.get(cluster).filter(|t| t.key == key);
            if let Some(p) = prev.filter(|p| p.labels != labels) {
                // The endpoint IP or hostname changed: the old series would linger otherwise.
                self.metrics.remove_cable(&p.labels);
            }
            let track = wgcable_peers::judge(prev.map(|t| &t.track), status, now);
            conn.status = track.status;
            conn.status_message = track.message.clone();
            // The health check, when there is one and it has a verdict, refines WireGuard's:
            // a handshake proves the peer's key, a ping proves the path through the tunnel.
            if let Some(health) = &self.health {
                // One pinger per IP family; latency is reported for the first family that has
                // a verdict (IPv4 first, as Submariner's single healthCheckIP), and either
                // family failing is an error: a dual-stack tunnel that drops IPv6 is broken.
                let verdicts: Vec<(String, crate::health::HealthStatus)> =
                    crate::health::family_keys(cluster)
                        .into_iter()
                        .filter_map(|k| health.status(&k).map(|h| (k, h)))
                        .collect();
                if let Some((_, h)) = verdicts.iter().find(|(_, h)| h.latency.is_some()) {
                    conn.latency_rtt = h.latency.clone();
                    if let Some(rtt) = h.last_rtt {
                        self.metrics.set_latency(&labels, rtt.as_secs_f64());
                    }
                }
                if let Some((key, h)) = verdicts.iter().find(|(_, h)| h.failed) {
                    if conn.status == ConnectionStatus::Connected {
                        let family = key.rsplit('/').next().unwrap_or("ip");
                        conn.status = ConnectionStatus::Error;
                        conn.status_message = format!(
                            "Failed to successfully ping the remote endpoint's {family} health-check IP ({} lost in a row)",
                            h.consecutive_lost
                        );
                    }
                }
            }
            self.metrics.record_poll(
                &labels,
                &wgcable_metrics::CablePoll {
                    status: conn.status,
                    rx_bytes: status.rx_bytes,
                    tx_bytes: status.tx_bytes,
                    established: track
                        .established
                        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                        .map(|d| d.as_secs_f64()),
                    last_handshake_age: status
                        .last_handshake
                        .and_then(|t| now.duration_since(t).ok())
                        .map(|d| d.as_secs_f64()),
                },
            );
            st.tracked
                .insert(cluster.clone(), Tracked { key, track, labels });
            out.push(conn);
        }
        out
    }
}

/// Roaming: behind NAT the peer's packets may come from another address or port than the one
/// published, and WireGuard then follows them. Setting the published one again at every
/// reconcile would undo that and could cut the tunnel, so for NAT'd peers the endpoint is only
/// set when what the remote publishes changed since we last set it.
fn mask_roaming(st: &State, peers: &[DesiredPeer]) -> Vec<DesiredPeer> {
    let nat: std::collections::HashSet<&str> = st
        .remotes
        .iter()
        .filter(|r| r.info.use_nat)
        .map(|r| r.info.endpoint.spec.cluster_id.as_str())
        .collect();
    let mut planned = peers.to_vec();
    for p in &mut planned {
        if nat.contains(p.cluster_id.as_str())
            && p.config.endpoint.is_some()
            && st.applied_endpoints.get(&p.config.public_key) == p.config.endpoint.as_ref()
        {
            p.config.endpoint = None;
        }
    }
    planned
}

/// Remembers the endpoint each peer was given (for [`mask_roaming`]).
fn record_endpoints(
    st: &mut State,
    peers: &[DesiredPeer],
    plan: &wgcable_peers::PeerPlan,
    observed: Option<&DeviceStatus>,
) {
    let touched: std::collections::HashSet<PublicKey> = plan
        .add
        .iter()
        .chain(&plan.update)
        .map(|p| p.public_key)
        .collect();
    let wanted: std::collections::HashSet<PublicKey> =
        peers.iter().map(|p| p.config.public_key).collect();
    st.applied_endpoints.retain(|k, _| wanted.contains(k));
    let on_device: HashMap<PublicKey, std::net::SocketAddr> = observed
        .map(|d| {
            d.peers
                .iter()
                .filter_map(|o| Some((o.config.public_key, o.config.endpoint?)))
                .collect()
        })
        .unwrap_or_default();
    for p in peers {
        let key = p.config.public_key;
        if let Some(e) = p.config.endpoint {
            if touched.contains(&key) || on_device.get(&key) == Some(&e) {
                st.applied_endpoints.insert(key, e);
            }
        }
    }
}

/// What `device` looks like once `update` is applied (as far as configuration goes).
fn apply_to(device: &mut DeviceStatus, update: &DeviceUpdate) {
    if let Some(k) = &update.private_key {
        device.public_key = Some(k.public_key());
    }
    if let Some(p) = update.listen_port {
        device.listen_port = Some(p);
    }
    for change in &update.peers {
        match change {
            PeerChange::Add(config) => device.peers.push(PeerStatus {
                config: config.clone(),
                last_handshake: None,
                rx_bytes: 0,
                tx_bytes: 0,
            }),
            PeerChange::Update { config, .. } => {
                if let Some(p) = device
                    .peers
                    .iter_mut()
                    .find(|p| p.config.public_key == config.public_key)
                {
                    // An update without an endpoint leaves the one the peer has.
                    let endpoint = config.endpoint.or(p.config.endpoint);
                    p.config = config.clone();
                    p.config.endpoint = endpoint;
                }
            }
            PeerChange::Remove(key) => device.peers.retain(|p| p.config.public_key != *key),
        }
    }
}

fn needs_identity(observed: Option<&DeviceStatus>, key: &PublicKey, port: u16) -> bool {
    match observed {
        None => true,
        Some(d) => d.public_key.as_ref() != Some(key) || d.listen_port != Some(port),
    }
}

#[async_trait]
impl CableDriver for WireGuardDriver {
    async fn init(&self) -> Result<(), Error> {
        let c = &self.config;
        self.device
            .ensure(&c.device)
            .await
            .map_err(Error::device(format!(
                "creating WireGuard device {}",
                c.device
            )))?;
        let observed = self.read_device().await?;
        // Only the identity is set here; peers are left alone until the first reconcile
        // knows every endpoint, so adopting a running device cuts no traffic.
        if needs_identity(observed.as_ref(), &self.public_key, c.listen_port) {
            let update = DeviceUpdate {
                private_key: Some(self.private_key.clone()),
                listen_port: Some(c.listen_port),
                peers: Vec::new(),
            };
            self.device
                .apply(&c.device, &update)
                .await
                .map_err(Error::device(format!(
                    "setting the key and port of device {}",
                    c.device
                )))?;
            tracing::info!(device = %c.device, public_key = %self.public_key, port = c.listen_port, "device identity set");
        } else {
            tracing::info!(device = %c.device, public_key = %self.public_key, "adopted existing device");
        }
        Ok(())
    }

    async fn connect_to_endpoint(&self, info: &NatEndpointInfo) -> Result<String, Error> {
        let remote = self.remote(info.clone())?;
        let cluster = remote.info.endpoint.spec.cluster_id.clone();
        let used = remote.use_ip.to_string();
        let mut st = self.state.lock().await;
        let previous = st
            .remotes
            .iter()
            .position(|r| r.info.endpoint.spec.cluster_id == cluster);
        let old = match previous {
            Some(i) => Some(std::mem::replace(&mut st.remotes[i], remote)),
            None => {
                st.remotes.push(remote);
                None
            }
        };
        // Plan before touching anything: a refused endpoint is reported and neither it nor
        // the other clusters see any change.
        let planned = wgcable_peers::desired_peers_validated(
            &self.local_peer_config(),
            st.remotes.iter().map(|r| (&r.info, &r.spec)),
        );
        if let Some(i) = planned.rejected.iter().position(|(c, _)| *c == cluster) {
            let mut planned = planned;
            let (_, source) = planned.rejected.swap_remove(i);
            match (previous, old) {
                // A cluster that was fine keeps its last good endpoint.
                (Some(i), Some(old)) => st.remotes[i] = old,
                // A new one waits, refused and listed as such, at the back of the queue: it
                // is planned again at every reconcile, so it connects once the conflict is
                // gone (say, the cluster whose subnets it overlaps leaves), and it can never
                // take over what an earlier cluster holds.
                _ => {
                    st.refused
                        .insert(cluster.clone(), crate::error::chain(&source));
                }
            }
            self.metrics.inc_endpoint_rejected("refused");
            return Err(Error::Refused {
                cluster_id: cluster,
                source: Box::new(source),
            });
        }
        self.reconcile_planned(&mut st, Trigger::Intent, Some(planned))
            .await?;
        tracing::info!(cluster = %cluster, using_ip = %used, "connected to endpoint");
        Ok(used)
    }

    async fn disconnect_from_endpoint(&self, endpoint: &Endpoint) -> Result<(), Error> {
        let cluster = &endpoint.spec.cluster_id;
        let mut st = self.state.lock().await;
        let before = st.remotes.len();
        st.remotes
            .retain(|r| &r.info.endpoint.spec.cluster_id != cluster);
        st.refused.remove(cluster);
        if st.remotes.len() == before {
            return Ok(());
        }
        self.reconcile_locked(&mut st, Trigger::Intent).await?;
        tracing::info!(cluster = %cluster, "disconnected from endpoint");
        Ok(())
    }

    async fn connections(&self) -> Result<Vec<Connection>, Error> {
        Ok(self.poll().await?.as_ref().clone())
    }

    async fn active_connections(&self) -> Result<Vec<Connection>, Error> {
        // As upstream: WireGuard has no connections it keeps active on its own.
        Ok(Vec::new())
    }

    fn name(&self) -> &'static str {
        CABLE_DRIVER_NAME
    }

    async fn cleanup(&self) -> Result<(), Error> {
        let mut st = self.state.lock().await;
        cleanup_host(
            &*self.netlink,
            &*self.device,
            &self.config.device,
            self.config.table,
            self.config.rule_priority,
        )
        .await?;
        for (_, t) in st.tracked.drain() {
            self.metrics.remove_cable(&t.labels);
        }
        st.remotes.clear();
        st.desired.clear();
        st.refused.clear();
        st.cache = None;
        st.applied_endpoints.clear();
        self.set_ready(false);
        Ok(())
    }
}

/// Removes what a gateway installed: the rules looking up `table` at `priority`, the routes in
/// `table` through the device, and the device (for userspace, its process too). Absent parts
/// are fine, so it can run any number of times and after a crash.
pub async fn cleanup_host(
    netlink: &dyn Netlink,
    device: &dyn WgDevice,
    name: &str,
    table: u32,
    priority: u32,
) -> Result<(), Error> {
    let rules = netlink
        .rule_list()
        .await
        .map_err(Error::netlink("listing rules"))?;
    for rule in rules
        .iter()
        .filter(|r| r.table == table && r.priority == Some(priority))
    {
        match netlink.rule_del(rule).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                return Err(Error::netlink(format!(
                    "removing the rule that looks up table {table}"
                ))(e))
            }
        }
    }
    if let Some(link) = netlink
        .link_get(name)
        .await
        .map_err(Error::netlink(format!("looking up link {name}")))?
    {
        let routes = netlink
            .route_list(table)
            .await
            .map_err(Error::netlink(format!("listing table {table}")))?;
        let ours: Vec<_> = routes
            .into_iter()
            .filter(|r| r.oif == Some(link.index))
            .collect();
        netlink
            .route_del(&ours)
            .await
            .map_err(Error::netlink(format!("removing routes in table {table}")))?;
    }
    device
        .delete(name)
        .await
        .map_err(Error::device(format!("deleting WireGuard device {name}")))?;
    Ok(())
}
