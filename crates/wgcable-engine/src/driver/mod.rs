//! The WireGuard cable driver: Submariner's driver contract, carried out as "observe, plan,
//! apply".
//!
//! Every trigger ends in the same place. The remotes the driver was given decide the peers
//! ([`PeerBook`], one change at a time); [`plan_host`] compares the desired host with an
//! observed one and [`host::apply`] carries the plan out. What is observed depends on the
//! trigger: a start-up adoption and every resync read the whole host (and report what drifted
//! since the last apply); a single connect or disconnect plans only the clusters it touches,
//! against the host as the last apply left it (the cache), so one change among thousands costs
//! what that change costs. Refusals happen while planning, before anything is touched, so a
//! bad endpoint never leaves half-applied state; a change the device itself refuses is
//! isolated by the executor and that cluster alone is refused.
//!
//! - `remote.rs`: [`Remote`], an Endpoint typed once on arrival.
//! - `status.rs`: connection status (judging handshakes and traffic, health checks, metrics).
//! - `cleanup.rs`: [`cleanup_host`], removing everything a gateway installed.

mod cleanup;
mod remote;
mod status;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;
use ipnet::IpNet;
use wgcable_api::{Connection, Endpoint, NatEndpointInfo};
use wgcable_keys::{PrivateKey, PublicKey};
use wgcable_metrics::GatewayMetrics;
use wgcable_netlink::{IpFamily, Netlink};
use wgcable_peers::{
    BackendKind, DesiredPeer, LocalPeerConfig, PeerBook, PeerDelta, PeerError, WgDevice,
};

pub use cleanup::{cleanup_host, CleanupReport};
pub use remote::Remote;

use crate::config::{DriverConfig, CABLE_DRIVER_NAME, WIREGUARD_OVERHEAD};
use crate::host::{self, plan_host, Applied, DesiredHost, Drift, HostPlan, ObservedHost, Scope};
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

/// Why a reconcile runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The desired state changed (connect, disconnect, start): differences are expected.
    Intent,
    /// A periodic resync: the whole host is read, and what changed behind the driver's back
    /// since its last apply is drift, repaired and counted.
    Resync,
}

/// A change of the set of remotes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteChange {
    /// The cluster's Endpoint appeared or changed.
    Upsert(Remote),
    /// The cluster is gone.
    Remove(String),
}

/// What one reconcile did, for logs, metrics and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// The device had to be created.
    pub device_created: bool,
    /// The device's key or listen port had to be set.
    pub device_configured: bool,
    pub peers_added: usize,
    /// Peers whose endpoint, allowed IPs, keepalive or PSK changed.
    pub peers_updated: usize,
    /// Peers removed (disconnected clusters and unknown peers).
    pub peers_removed: usize,
    /// Routes added or replaced.
    pub routes_added: usize,
    pub routes_removed: usize,
    pub rules_added: usize,
    /// Link attributes changed (MTU, up, addresses).
    pub link_changes: usize,
    /// Clusters refused, with the reason.
    pub refused: Vec<(String, String)>,
    /// What had changed behind the driver's back (resyncs only), and was repaired.
    pub drift: Drift,
}

impl ReconcileReport {
    /// True when nothing at all was changed on the host.
    pub fn is_noop(&self) -> bool {
        !self.device_created
            && !self.device_configured
            && self.peers_added + self.peers_updated + self.peers_removed == 0
            && self.routes_added + self.routes_removed + self.rules_added + self.link_changes == 0
    }

    fn add(&mut self, plan: &HostPlan, applied: &Applied) {
        let ok = |key: &PublicKey| !applied.peer_failures.iter().any(|f| f.key == *key);
        self.device_created |= applied.device_created;
        self.device_configured |= plan.identity.is_some();
        // Refused peer changes did not happen; they are listed as refused instead.
        self.peers_added += plan.peers.add.iter().filter(|p| ok(&p.public_key)).count();
        self.peers_updated += plan
            .peers
            .update
            .iter()
            .filter(|p| ok(&p.public_key))
            .count();
        self.peers_removed += plan.peers.remove.iter().filter(|k| ok(k)).count();
        self.routes_added += applied.routes_added.len();
        self.routes_removed += applied.routes_deleted.len();
        self.rules_added += applied.rules_added.len();
        self.link_changes += usize::from(plan.set_mtu.is_some())
            + usize::from(plan.set_up)
            + plan.addrs.to_add.len()
            + plan.addrs.to_del.len();
        self.drift.items.extend(plan.drift.items.iter().cloned());
    }
}

/// One line for people: what changed (`peers +1 ~0 -0; routes +2 -0`), then refusals and
/// drift when there are any.
impl fmt::Display for ReconcileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if self.device_created {
            parts.push("device created".into());
        }
        if self.device_configured {
            parts.push("key and port set".into());
        }
        if self.link_changes > 0 {
            parts.push(format!("{} link change(s)", self.link_changes));
        }
        if self.peers_added + self.peers_updated + self.peers_removed > 0 {
            parts.push(format!(
                "peers +{} ~{} -{}",
                self.peers_added, self.peers_updated, self.peers_removed
            ));
        }
        if self.routes_added + self.routes_removed > 0 {
            parts.push(format!(
                "routes +{} -{}",
                self.routes_added, self.routes_removed
            ));
        }
        if self.rules_added > 0 {
            parts.push(format!("rules +{}", self.rules_added));
        }
        if parts.is_empty() {
            parts.push("nothing changed".into());
        }
        if !self.refused.is_empty() {
            parts.push(format!("{} cluster(s) refused", self.refused.len()));
        }
        if !self.drift.is_empty() {
            parts.push(format!("repaired: {}", self.drift));
        }
        f.write_str(&parts.join("; "))
    }
}

/// Per-connection memory for status judgement and metrics.
#[derive(Clone, Debug)]
struct Tracked {
    key: PublicKey,
    /// The Endpoint `labels` were made from: while it is the same, they are kept.
    endpoint: Arc<Endpoint>,
    /// WireGuard's verdict, which the next judgement builds on.
    track: wgcable_peers::PeerTrack,
    labels: wgcable_metrics::CableLabels,
    /// The status last reported (health check included), to log each transition once.
    reported: wgcable_api::ConnectionStatus,
}

#[derive(Debug)]
struct State {
    /// Every remote the driver was given, as the book decides on it (a refused change of a
    /// cluster that was fine leaves its previous remote here).
    remotes: BTreeMap<String, Remote>,
    /// The peers, one change at a time.
    book: PeerBook,
    /// The seniority the next new cluster gets when its remote brings none.
    next_seniority: u64,
    /// The remote whose peer the device last accepted, per cluster: what a cluster goes back
    /// to when the device refuses its new peer.
    applied: HashMap<String, Remote>,
    tracked: HashMap<String, Tracked>,
    /// At least one apply went through.
    reconciled: bool,
    /// The endpoint we last configured for each peer (see [`mask_roaming`]).
    applied_endpoints: HashMap<PublicKey, SocketAddr>,
    /// The host as the last apply left it: the observation incremental changes plan against,
    /// and the expectation a resync finds drift against. `None` after a failed apply.
    cache: Option<ObservedHost>,
    /// The MTU the last full plan chose.
    mtu: Option<u32>,
    /// Why the automatic MTU fell back to the default, last time (warned once per reason).
    mtu_warning: Option<String>,
}

/// The WireGuard cable driver.
pub struct WireGuardDriver {
    config: DriverConfig,
    /// The local Endpoint as published (built once from the configuration and the key).
    local: Endpoint,
    private_key: PrivateKey,
    public_key: PublicKey,
    netlink: Arc<dyn Netlink>,
    device: Arc<dyn WgDevice>,
    metrics: Arc<GatewayMetrics>,
    state: tokio::sync::Mutex<State>,
    /// Mirrors of state for the HTTP server, which must never wait on a reconcile.
    snapshot: std::sync::Mutex<status::Snapshot>,
    /// Pings each remote gateway's health-check IP through the tunnel (optional).
    health: Option<Arc<crate::health::HealthChecker>>,
    /// Remote subnets already warned about for source NAT (warn once, not every resync).
    snat_warned: std::sync::Mutex<std::collections::BTreeSet<IpNet>>,
}

impl fmt::Debug for WireGuardDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
        let local = LocalPeerConfig {
            cluster_id: config.cluster_id.clone(),
            public_key,
            listen_port: config.listen_port,
            preshared_key: config.preshared_key.clone(),
            local_subnets: config.local_subnets.clone(),
            keepalive: wgcable_peers::KEEPALIVE.as_secs() as u16,
        };
        Ok(WireGuardDriver {
            state: tokio::sync::Mutex::new(State {
                remotes: BTreeMap::new(),
                book: PeerBook::new(local),
                next_seniority: 0,
                applied: HashMap::new(),
                tracked: HashMap::new(),
                reconciled: false,
                applied_endpoints: HashMap::new(),
                cache: None,
                mtu: None,
                mtu_warning: None,
            }),
            local: crate::config::local_endpoint(&config, &public_key),
            config,
            private_key,
            public_key,
            netlink,
            device,
            metrics,
            snapshot: std::sync::Mutex::new(status::Snapshot::default()),
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

    /// The local cluster's Endpoint as Submariner's gateway publishes it.
    pub fn local_endpoint(&self) -> Endpoint {
        self.local.clone()
    }

    /// Gives every peer a new pre-shared key (the PSK file changed): the book is planned
    /// again with it and the whole host reconciled, each peer updated in place.
    pub async fn set_preshared_key(
        &self,
        key: wgcable_keys::PresharedKey,
    ) -> Result<ReconcileReport, Error> {
        let mut st = self.state.lock().await;
        let local = LocalPeerConfig {
            preshared_key: key,
            ..st.book.local().clone()
        };
        let candidates: Vec<(u64, wgcable_peers::PeerCandidate)> = st
            .book
            .candidates()
            .into_iter()
            .map(|(s, c)| (s, c.clone()))
            .collect();
        st.book = PeerBook::new(local);
        st.book.replace_all(candidates);
        self.reconcile_full(&mut st, Trigger::Intent, None).await
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

    /// A [`Remote`] for an Endpoint, with this gateway's NAT setting.
    pub fn remote(&self, endpoint: Endpoint) -> Result<Remote, Error> {
        Remote::new(endpoint, self.config.nat)
    }

    /// Replaces the whole set of remote endpoints at once and reconciles once (see
    /// [`WireGuardDriver::set_remotes`]). Endpoints that do not validate are skipped and
    /// logged.
    pub async fn set_endpoints(
        &self,
        infos: Vec<NatEndpointInfo>,
    ) -> Result<ReconcileReport, Error> {
        let mut remotes = Vec::new();
        for info in infos {
            match Remote::from_nat_info(&info) {
                Ok(r) => remotes.push(r),
                Err(e) => {
                    tracing::warn!(error = %crate::error::chain(&e), "endpoint skipped");
                    self.metrics.inc_endpoint_rejected("invalid");
                }
            }
        }
        self.set_remotes(remotes).await
    }

    /// Replaces the whole set of remotes at once and reconciles the whole host once. Used at
    /// start with the broker's snapshot: reconciling after each endpoint would remove the
    /// peers of the endpoints not yet seen and cut their traffic. Remotes without a seniority
    /// are ranked after those with one, clusters whose key is already on the device first:
    /// they are incumbents, so a newcomer that claims their subnets cannot take their traffic
    /// across a restart.
    pub async fn set_remotes(&self, remotes: Vec<Remote>) -> Result<ReconcileReport, Error> {
        let mut st = self.state.lock().await;
        let observed = host::observe(
            &*self.netlink,
            &*self.device,
            &self.config.device,
            self.config.table,
        )
        .await?;
        self.load_locked(&mut st, remotes, &observed);
        self.reconcile_full(&mut st, Trigger::Intent, Some(observed))
            .await
    }

    /// Replaces the whole set of remotes without touching the host (for a dry run: see
    /// [`WireGuardDriver::dry_run`]); ranked as [`WireGuardDriver::set_remotes`] ranks them.
    pub async fn load_remotes(&self, remotes: Vec<Remote>) {
        let mut st = self.state.lock().await;
        let observed = host::observe(
            &*self.netlink,
            &*self.device,
            &self.config.device,
            self.config.table,
        )
        .await
        .unwrap_or_default();
        self.load_locked(&mut st, remotes, &observed);
    }

    fn load_locked(&self, st: &mut State, mut remotes: Vec<Remote>, observed: &ObservedHost) {
        let on_device: HashSet<PublicKey> = observed
            .device
            .iter()
            .flat_map(|d| d.peers.iter().map(|p| p.config.public_key))
            .collect();
        // Stable: among equals, the order given.
        remotes.sort_by_key(|r| {
            (
                r.seniority.is_none(),
                r.seniority,
                !r.spec.public_key.is_some_and(|k| on_device.contains(&k)),
            )
        });
        let base = remotes
            .iter()
            .filter_map(|r| r.seniority)
            .max()
            .map_or(0, |m| m + 1);
        let mut ranked = Vec::with_capacity(remotes.len());
        for (i, mut r) in remotes.into_iter().enumerate() {
            let seniority = r.seniority.unwrap_or(base + i as u64);
            r.seniority = Some(seniority);
            ranked.push(r);
        }
        st.next_seniority = ranked
            .iter()
            .filter_map(|r| r.seniority)
            .max()
            .map_or(0, |m| m + 1);
        st.remotes = ranked
            .iter()
            .map(|r| (r.cluster_id().to_owned(), r.clone()))
            .collect();
        let deltas = st.book.replace_all(
            ranked
                .iter()
                .map(|r| (r.seniority.unwrap_or_default(), r.candidate())),
        );
        self.log_refusals(&deltas);
    }

    /// Applies changes of the set of remotes, planning only the clusters they touch against
    /// the host as the last apply left it (or the whole host when there is no such state).
    /// Refused remotes are listed in the report (and logged); an error means the host failed.
    pub async fn apply_changes(
        &self,
        changes: Vec<RemoteChange>,
    ) -> Result<ReconcileReport, Error> {
        Ok(self.apply_changes_typed(changes).await?.0)
    }

    /// [`WireGuardDriver::apply_changes`], plus why each refused change was refused (also
    /// the changes of clusters that keep their previous, good endpoint).
    async fn apply_changes_typed(
        &self,
        changes: Vec<RemoteChange>,
    ) -> Result<(ReconcileReport, Vec<(String, PeerError)>), Error> {
        let mut st = self.state.lock().await;
        let mut deltas = Vec::new();
        for change in changes {
            deltas.extend(self.book_change(&mut st, change));
        }
        self.log_refusals(&deltas);
        let refusals: Vec<(String, PeerError)> = deltas
            .iter()
            .filter_map(|d| d.refused.clone().map(|e| (d.cluster_id.clone(), e)))
            .collect();
        let mut report = self.reconcile_deltas(&mut st, deltas).await?;
        for (cluster, e) in &refusals {
            if !report.refused.iter().any(|(c, _)| c == cluster) {
                report
                    .refused
                    .push((cluster.clone(), crate::error::chain(e)));
            }
        }
        Ok((report, refusals))
    }

    /// One change into the book; returns the deltas.
    fn book_change(&self, st: &mut State, change: RemoteChange) -> Vec<PeerDelta> {
        match change {
            RemoteChange::Upsert(mut remote) => {
                let cluster = remote.cluster_id().to_owned();
                let seniority = remote
                    .seniority
                    .or_else(|| st.remotes.get(&cluster).and_then(|r| r.seniority))
                    .unwrap_or_else(|| {
                        let s = st.next_seniority;
                        st.next_seniority += 1;
                        s
                    });
                st.next_seniority = st.next_seniority.max(seniority + 1);
                remote.seniority = Some(seniority);
                let deltas = st.book.upsert(seniority, remote.candidate(), true);
                // The book kept the previous candidate when the new one was refused and the
                // old one was fine: keep the matching remote.
                let kept_new = st
                    .book
                    .candidate(&cluster)
                    .is_some_and(|(_, c)| Arc::ptr_eq(&c.spec, &remote.spec));
                if kept_new {
                    st.remotes.insert(cluster, remote);
                }
                deltas
            }
            RemoteChange::Remove(cluster) => {
                st.remotes.remove(&cluster);
                st.applied.remove(&cluster);
                st.book.remove(&cluster)
            }
        }
    }

    fn log_refusals(&self, deltas: &[PeerDelta]) {
        for d in deltas {
            if let Some(reason) = &d.refused {
                let kept = d.after.is_some();
                tracing::warn!(
                    cluster = %d.cluster_id,
                    reason = %crate::error::chain(reason),
                    kept_previous = kept,
                    "endpoint refused"
                );
                self.metrics.inc_endpoint_rejected(refusal_reason(reason));
            }
        }
    }

    /// Makes the device, routes and rule match the remotes the driver holds, reading the
    /// whole host.
    pub async fn reconcile(&self, trigger: Trigger) -> Result<ReconcileReport, Error> {
        let mut st = self.state.lock().await;
        self.reconcile_full(&mut st, trigger, None).await
    }

    /// The plan a full reconcile would apply now, without applying it (`wgcable plan`).
    pub async fn dry_run(&self) -> Result<HostPlan, Error> {
        let mut st = self.state.lock().await;
        let observed = host::observe(
            &*self.netlink,
            &*self.device,
            &self.config.device,
            self.config.table,
        )
        .await?;
        let mtu = self.resolve_mtu(&mut st).await;
        let peers: Vec<DesiredPeer> = st.book.peers().into_iter().cloned().collect();
        let desired = self.desired_host(&st, mask_roaming(&st, &peers), mtu);
        Ok(plan_host(
            &desired,
            &observed,
            &Scope::Full,
            st.cache.as_ref(),
        ))
    }

    async fn reconcile_full(
        &self,
        st: &mut State,
        trigger: Trigger,
        observed: Option<ObservedHost>,
    ) -> Result<ReconcileReport, Error> {
        self.metrics.inc_reconcile();
        let result = self.full_pass(st, trigger, observed).await;
        self.after_reconcile(st, trigger, result)
    }

    async fn full_pass(
        &self,
        st: &mut State,
        trigger: Trigger,
        observed: Option<ObservedHost>,
    ) -> Result<ReconcileReport, Error> {
        let observed = match observed {
            Some(o) => o,
            None => {
                host::observe(
                    &*self.netlink,
                    &*self.device,
                    &self.config.device,
                    self.config.table,
                )
                .await?
            }
        };
        let mtu = self.resolve_mtu(st).await;
        st.mtu = Some(mtu);
        let peers: Vec<DesiredPeer> = st.book.peers().into_iter().cloned().collect();
        let desired = self.desired_host(st, mask_roaming(st, &peers), mtu);
        // Drift only counts on a resync: at start-up (adoption) and after an intended change
        // there is no expectation to compare with.
        let expected = (trigger == Trigger::Resync)
            .then_some(st.cache.as_ref())
            .flatten();
        let plan = plan_host(&desired, &observed, &Scope::Full, expected);
        let mut report = ReconcileReport::default();
        let deltas = self
            .execute(st, &plan, observed, &peers, &mut report)
            .await?;
        if !deltas.is_empty() {
            // The device refused some peers: those clusters are refused (or back on their
            // last good endpoint) now; apply what that changes.
            self.retry_refused(st, deltas, &mut report).await?;
        }
        Ok(report)
    }

    /// Plans and applies what `deltas` changed: against the cache when there is one, in full
    /// otherwise.
    async fn reconcile_deltas(
        &self,
        st: &mut State,
        deltas: Vec<PeerDelta>,
    ) -> Result<ReconcileReport, Error> {
        self.metrics.inc_reconcile();
        let scoped = async {
            let (Some(cache), Some(mtu)) = (st.cache.take(), st.mtu) else {
                return None;
            };
            let mut report = ReconcileReport::default();
            let (scope, peers) = scope_of(&deltas);
            let desired = self.desired_host(st, mask_roaming(st, &peers), mtu);
            let plan = plan_host(&desired, &cache, &scope, None);
            let result: Result<ReconcileReport, Error> = async {
                let refused = self.execute(st, &plan, cache, &peers, &mut report).await?;
                if !refused.is_empty() {
                    self.retry_refused(st, refused, &mut report).await?;
                }
                Ok(report)
            }
            .await;
            Some(result)
        }
        .await;
        let result = match scoped {
            Some(Ok(report)) => Ok(report),
            // No cache, or it was stale (the device vanished since, say): read the whole host.
            None => self.full_pass(st, Trigger::Intent, None).await,
            Some(Err(e)) => {
                tracing::debug!(error = %crate::error::chain(&e), "incremental apply failed; reconciling in full");
                st.cache = None;
                self.full_pass(st, Trigger::Intent, None).await
            }
        };
        self.after_reconcile(st, Trigger::Intent, result)
    }

    /// The device refused some peers: put the refused clusters back on what it last accepted
    /// (or refuse them), and apply what that changes. Bounded: a second refusal of the same
    /// clusters blocks them.
    async fn retry_refused(
        &self,
        st: &mut State,
        deltas: Vec<PeerDelta>,
        report: &mut ReconcileReport,
    ) -> Result<(), Error> {
        let mut deltas = deltas;
        for _round in 0..2 {
            let Some(cache) = st.cache.take() else {
                return Ok(());
            };
            let mtu = st.mtu.unwrap_or(1420);
            let (scope, peers) = scope_of(&deltas);
            let desired = self.desired_host(st, mask_roaming(st, &peers), mtu);
            let plan = plan_host(&desired, &cache, &scope, None);
            deltas = self.execute(st, &plan, cache, &peers, report).await?;
            if deltas.is_empty() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Applies `plan` (made against `observed`), updates the cache and the bookkeeping, and
    /// returns the book's deltas for the peers the device refused (empty when it refused
    /// none).
    async fn execute(
        &self,
        st: &mut State,
        plan: &HostPlan,
        observed: ObservedHost,
        peers: &[DesiredPeer],
        report: &mut ReconcileReport,
    ) -> Result<Vec<PeerDelta>, Error> {
        let applied = host::apply(
            plan,
            host::Target {
                netlink: &*self.netlink,
                device: &*self.device,
                name: &self.config.device,
                table: self.config.table,
                private_key: &self.private_key,
            },
        )
        .await?;
        report.add(plan, &applied);
        record_endpoints(st, peers, plan, &applied);
        st.cache = Some(observed.after(plan, &applied, &self.config.device));
        let failed: HashMap<PublicKey, &str> = applied
            .peer_failures
            .iter()
            .map(|f| (f.key, f.reason.as_str()))
            .collect();
        // What the device accepted is what a cluster goes back to if a later change is
        // refused.
        for p in peers {
            if !failed.contains_key(&p.config.public_key) {
                if let Some(r) = st.remotes.get(&p.cluster_id) {
                    st.applied.insert(p.cluster_id.clone(), r.clone());
                }
            }
        }
        let mut deltas = Vec::new();
        for p in peers {
            let Some(reason) = failed.get(&p.config.public_key) else {
                continue;
            };
            let cluster = p.cluster_id.clone();
            tracing::warn!(cluster = %cluster, reason = %reason, "the WireGuard device refused this cluster's peer; the other peers were applied");
            self.metrics.inc_endpoint_rejected("device");
            report.refused.push((
                cluster.clone(),
                format!("the WireGuard device refused it: {reason}"),
            ));
            let last_good = st
                .applied
                .get(&cluster)
                .filter(|r| st.remotes.get(&cluster) != Some(*r))
                .cloned();
            match last_good {
                Some(good) => {
                    let seniority = good.seniority.unwrap_or_default();
                    deltas.extend(st.book.upsert(seniority, good.candidate(), false));
                    st.remotes.insert(cluster, good);
                }
                None => deltas.extend(st.book.block(&cluster, (*reason).to_owned())),
            }
        }
        Ok(deltas)
    }

    /// Bookkeeping after every reconcile, whatever its outcome.
    fn after_reconcile(
        &self,
        st: &mut State,
        trigger: Trigger,
        result: Result<ReconcileReport, Error>,
    ) -> Result<ReconcileReport, Error> {
        match result {
            Ok(mut report) => {
                report.refused.extend(
                    st.book
                        .refused()
                        .map(|(c, e)| (c.to_owned(), crate::error::chain(e))),
                );
                report.refused.sort();
                report.refused.dedup_by(|a, b| a.0 == b.0);
                if trigger == Trigger::Resync {
                    for (what, n) in report.drift.by_kind() {
                        for _ in 0..n {
                            self.metrics.inc_repair(what);
                        }
                    }
                    if !report.drift.is_empty() {
                        tracing::warn!(repaired = %report.drift, "drift repaired");
                    }
                } else {
                    report.drift = Drift::default();
                }
                if !report.is_noop() {
                    tracing::info!(?trigger, "reconciled: {report}");
                }
                st.reconciled = true;
                self.finish(st);
                self.set_ready(true);
                Ok(report)
            }
            Err(e) => {
                // What the host looks like now is unknown: the next change reads it whole.
                st.cache = None;
                self.metrics.inc_reconcile_error();
                tracing::warn!(error = %crate::error::chain(&e), "reconcile failed; retrying at the next resync");
                Err(e)
            }
        }
    }

    /// The desired host for `peers` (in scope) and `mtu`.
    fn desired_host(&self, st: &State, peers: Vec<DesiredPeer>, mtu: u32) -> DesiredHost {
        let c = &self.config;
        let (remote_v4, remote_v6) = st.book.families();
        let local_v6 = c.local_subnets.iter().any(|n| matches!(n, IpNet::V6(_)));
        let mut families = vec![IpFamily::V4];
        if local_v6 || remote_v6 {
            families.push(IpFamily::V6);
        }
        let _ = remote_v4;
        let source = |v6: bool| {
            c.health_check_ips
                .iter()
                .copied()
                .find(|ip| ip.is_ipv6() == v6)
        };
        DesiredHost {
            identity: host::Identity {
                public_key: self.public_key,
                listen_port: c.listen_port,
            },
            mtu,
            addrs: c
                .health_check_ips
                .iter()
                .map(|&ip| IpNet::from(ip))
                .collect(),
            peers,
            table: c.table,
            rule_priority: c.rule_priority,
            families,
            sources: [source(false), source(true)],
        }
    }

    /// The device MTU: the configured one, or the underlay's minus WireGuard's overhead. A
    /// fallback to 1420 is logged with its reason, once per reason.
    async fn resolve_mtu(&self, st: &mut State) -> u32 {
        if let Some(mtu) = self.config.mtu {
            return mtu;
        }
        // The underlay towards the most senior peer; with none yet, the link that carries
        // our own underlay address (a route lookup of our own address would say `lo`).
        let target: Option<IpAddr> = st.book.peers().first().map(|p| p.use_ip);
        let underlay = match target {
            Some(ip) => wgcable_netlink::underlay_mtu(&*self.netlink, ip)
                .await
                .map_err(|e| {
                    format!(
                        "looking up the underlay towards {ip}: {}",
                        crate::error::chain(&e)
                    )
                }),
            None => self.local_underlay_mtu().await,
        };
        let fallback = 1420;
        let (mtu, warning) = match underlay {
            Ok(m) if m > WIREGUARD_OVERHEAD + 576 => (m - WIREGUARD_OVERHEAD, None),
            Ok(m) => (
                fallback,
                Some(format!(
                    "the underlay MTU {m} leaves too little room for WireGuard's {WIREGUARD_OVERHEAD} bytes of overhead"
                )),
            ),
            Err(reason) => (fallback, Some(reason)),
        };
        if warning != st.mtu_warning {
            if let Some(w) = &warning {
                tracing::warn!(reason = %w, mtu = fallback, "cannot size the device MTU from the underlay; using the default (set --mtu to choose)");
            }
            st.mtu_warning = warning;
        }
        mtu
    }

    async fn local_underlay_mtu(&self) -> Result<u32, String> {
        let links = self
            .netlink
            .link_list()
            .await
            .map_err(|e| format!("listing links: {}", crate::error::chain(&e)))?;
        for link in links {
            if link.name == self.config.device {
                continue;
            }
            let addrs = self.netlink.addr_list(link.index).await.map_err(|e| {
                format!(
                    "listing addresses of {}: {}",
                    link.name,
                    crate::error::chain(&e)
                )
            })?;
            if addrs.iter().any(|a| a.addr() == self.config.private_ip) {
                return Ok(link.mtu);
            }
        }
        Err(format!(
            "no link carries the gateway's private IP {}",
            self.config.private_ip
        ))
    }

    /// Bookkeeping after a reconcile: forget connections that left, tell the metrics and the
    /// health checker.
    fn finish(&self, st: &mut State) {
        let gone: Vec<String> = st
            .tracked
            .iter()
            .filter(|(cluster, t)| {
                st.book
                    .peer(cluster)
                    .is_none_or(|p| p.config.public_key != t.key)
            })
            .map(|(c, _)| c.clone())
            .collect();
        for cluster in gone {
            if let Some(t) = st.tracked.remove(&cluster) {
                self.metrics.remove_cable(&t.labels);
            }
        }
        let peers = st.book.peers();
        self.metrics.set_peers(peers.len());
        if let Some(health) = &self.health {
            let targets = peers
                .iter()
                .filter_map(|p| st.remotes.get(&p.cluster_id))
                .flat_map(|r| r.health_targets(&self.config.health_check_ips))
                .collect();
            health.set_targets(targets);
        }
    }

    /// Looks for source NAT of traffic to remote subnets in the kernel's connection tracking
    /// (see [`crate::snat`]) and warns once per remote subnet. Without conntrack (module not
    /// loaded) there is nothing to look at and nothing is reported.
    pub async fn check_snat(&self) -> Vec<crate::snat::SnatFinding> {
        let remote: Vec<IpNet> = {
            let st = self.state.lock().await;
            st.book
                .peers()
                .iter()
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
}

/// The metric reason of a refusal.
fn refusal_reason(e: &PeerError) -> &'static str {
    match e {
        PeerError::DeviceRefused(_) => "device",
        PeerError::InvalidEndpoint(_) | PeerError::InvalidUseIp(_) => "invalid",
        _ => "refused",
    }
}

/// The scope of a set of deltas (old and new keys and subnets of the clusters they are
/// about), and the peers those clusters have now.
fn scope_of(deltas: &[PeerDelta]) -> (Scope, Vec<DesiredPeer>) {
    let mut keys = HashSet::new();
    let mut subnets = HashSet::new();
    let mut peers: BTreeMap<String, DesiredPeer> = BTreeMap::new();
    for d in deltas {
        for p in d.before.iter().chain(&d.after) {
            keys.insert(p.config.public_key);
            subnets.extend(p.config.allowed_ips.iter().map(IpNet::trunc));
        }
        match &d.after {
            Some(p) => {
                peers.insert(d.cluster_id.clone(), p.clone());
            }
            None => {
                peers.remove(&d.cluster_id);
            }
        }
    }
    (
        Scope::Clusters { keys, subnets },
        peers.into_values().collect(),
    )
}

/// Roaming: behind NAT the peer's packets may come from another address or port than the one
/// published, and WireGuard then follows them. Setting the published one again at every
/// reconcile would undo that and could cut the tunnel, so for NAT'd peers the endpoint is only
/// set when what the remote publishes changed since we last set it.
fn mask_roaming(st: &State, peers: &[DesiredPeer]) -> Vec<DesiredPeer> {
    let mut planned = peers.to_vec();
    for p in &mut planned {
        let nat = st.remotes.get(&p.cluster_id).is_some_and(|r| r.use_nat);
        if nat
            && p.config.endpoint.is_some()
            && st.applied_endpoints.get(&p.config.public_key) == p.config.endpoint.as_ref()
        {
            p.config.endpoint = None;
        }
    }
    planned
}

/// Remembers the endpoint each peer in scope was given (for [`mask_roaming`]).
fn record_endpoints(st: &mut State, peers: &[DesiredPeer], plan: &HostPlan, applied: &Applied) {
    let failed: HashSet<PublicKey> = applied.peer_failures.iter().map(|f| f.key).collect();
    for key in &plan.peers.remove {
        if !failed.contains(key) {
            st.applied_endpoints.remove(key);
        }
    }
    let touched: HashSet<PublicKey> = plan
        .peers
        .add
        .iter()
        .chain(&plan.peers.update)
        .map(|p| p.public_key)
        .filter(|k| !failed.contains(k))
        .collect();
    for p in peers {
        let key = p.config.public_key;
        if let Some(e) = p.config.endpoint {
            if touched.contains(&key) || !st.applied_endpoints.contains_key(&key) {
                st.applied_endpoints.insert(key, e);
            }
        }
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
        let observed = self
            .device
            .read(&c.device)
            .await
            .map_err(Error::device(format!(
                "reading WireGuard device {}",
                c.device
            )))?;
        // Only the identity is set here; peers are left alone until the first reconcile
        // knows every endpoint, so adopting a running device cuts no traffic.
        let right = observed.as_ref().is_some_and(|d| {
            d.public_key == Some(self.public_key) && d.listen_port == Some(c.listen_port)
        });
        if right {
            tracing::info!(device = %c.device, public_key = %self.public_key, "adopted existing device");
            return Ok(());
        }
        let update = wgcable_peers::DeviceUpdate {
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
        Ok(())
    }

    async fn connect_to_endpoint(&self, info: &NatEndpointInfo) -> Result<String, Error> {
        let remote = Remote::from_nat_info(info)?;
        let cluster = remote.cluster_id().to_owned();
        let used = remote.use_ip.to_string();
        let (_, refusals) = self
            .apply_changes_typed(vec![RemoteChange::Upsert(remote)])
            .await?;
        // Refused: either it waits (refused and listed as such, planned again at every change
        // that could free what it needs) or, when it was fine before, it keeps its last good
        // endpoint. Either way the caller hears why.
        if let Some((_, reason)) = refusals.into_iter().find(|(c, _)| *c == cluster) {
            return Err(Error::Refused {
                cluster_id: cluster,
                source: Box::new(reason),
            });
        }
        tracing::info!(cluster = %cluster, using_ip = %used, "connected to endpoint");
        Ok(used)
    }

    async fn disconnect_from_endpoint(&self, endpoint: &Endpoint) -> Result<(), Error> {
        let cluster = endpoint.spec.cluster_id.clone();
        let known = self.state.lock().await.remotes.contains_key(&cluster);
        if !known {
            return Ok(());
        }
        self.apply_changes(vec![RemoteChange::Remove(cluster.clone())])
            .await?;
        tracing::info!(cluster = %cluster, "disconnected from endpoint");
        Ok(())
    }

    async fn connections(&self) -> Result<Vec<Connection>, Error> {
        Ok(self
            .poll()
            .await?
            .iter()
            .map(|r| r.connection.clone())
            .collect())
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
            Some(&*self.device),
            &self.config.device,
            self.config.table,
            self.config.rule_priority,
        )
        .await?;
        for (_, t) in st.tracked.drain() {
            self.metrics.remove_cable(&t.labels);
        }
        st.remotes.clear();
        st.applied.clear();
        st.book = PeerBook::new(st.book.local().clone());
        st.cache = None;
        st.applied_endpoints.clear();
        self.set_ready(false);
        Ok(())
    }
}
