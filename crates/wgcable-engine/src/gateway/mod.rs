//! The gateway: one long-running loop assembled from parts.
//!
//! [`Gateway::builder`] takes the configuration and the parts: an [`EndpointSource`] (the file
//! broker, Kubernetes, etcd: whichever the binary built), a [`LeaderElector`] (always-leader
//! unless active/passive gateways elect one), and optionally the [`Netlink`] and [`WgDevice`]
//! (the kernel's and the chosen backend by default; fakes in tests). [`GatewayBuilder::run`]
//! checks everything that can fail for local reasons before the first host change, then runs:
//! source events are debounced and admitted ([`wgcable_broker::admission`]) and handed to the
//! driver as changes; a resync timer repairs drift; a status timer judges connections, repairs
//! a data plane that lost its device or peers at once, and reports the gateway's status to the
//! source.
//!
//! Stopping leaves the data path (device, peers, routes, rule, userspace process) in place on
//! purpose: a restarted gateway adopts it, so a restart or upgrade does not cut traffic.
//! `wgcable cleanup` is the way to remove it.

mod lock;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use wgcable_api::{ConnectionReport, Endpoint};
use wgcable_broker::admission::{AdmissionConfig, AdmissionRunner, AdmissionUpdate, LocalIdentity};
use wgcable_broker::{
    AlwaysLeader, EndpointSource, GatewayReport, LeaderElector, Role, SourceHealth,
};
use wgcable_keys::{KeyStore, PrivateKey, PskFile, PskWatcher};
use wgcable_metrics::{GatewayMetrics, GatewayState, HttpConfig};
use wgcable_netlink::{Netlink, RtNetlink};
use wgcable_peers::{BackendPreference, WgDevice};

pub use lock::{StateLock, LOCK_FILE_NAME};

use crate::driver::{CableDriver, Remote, RemoteChange, Trigger, WireGuardDriver};
use crate::health::HealthChecker;
use crate::{DriverConfig, Error};

/// Everything `wgcable gateway` is configured with, besides the parts.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// The cable driver's configuration.
    pub driver: DriverConfig,
    /// Kernel, userspace or auto (when no device is handed to the builder).
    pub backend: BackendPreference,
    /// Where the private key, the admission registry and a copy of the local Endpoint live.
    pub state_dir: PathBuf,
    /// A read-only directory the private key is provided in (a mounted Kubernetes Secret),
    /// used instead of `state_dir/private.key`; the gateway never writes there.
    pub key_dir: Option<PathBuf>,
    /// The HTTP server's address (`/metrics`, `/healthz`, `/readyz`, `/connections`,
    /// `/conflicts`).
    pub metrics_addr: SocketAddr,
    /// How often connection status is judged (Submariner: 5 s).
    pub status_interval: Duration,
    /// How often the host is compared with the desired state and drift repaired.
    pub resync_interval: Duration,
    /// Pinging remote gateways through the tunnels; `None` turns it off.
    pub health_check: Option<HealthCheckConfig>,
    /// Limits and rules for what the source delivers.
    pub admission: AdmissionConfig,
    /// A pre-shared key file to follow (a mounted Secret): a change re-keys every peer.
    pub psk_refresh: Option<PskRefresh>,
    /// Version and git commit, for `wgcable_build_info`.
    pub build: BuildInfo,
}

/// Submariner's gateway health check: one ICMP echo per interval to each remote gateway's
/// health-check IP, through the tunnel; more than `max_lost` lost in a row is an error.
#[derive(Clone, Copy, Debug)]
pub struct HealthCheckConfig {
    /// Time between pings (Submariner: 1 s).
    pub interval: Duration,
    /// Consecutive losses tolerated (Submariner: 5).
    pub max_lost: u32,
}

/// A pre-shared key read from a file that may change.
#[derive(Clone, Debug)]
pub struct PskRefresh {
    pub file: PskFile,
    /// Accept a weak key on a change too (`--insecure-default-psk`).
    pub allow_weak: bool,
}

/// What `wgcable_build_info` says.
#[derive(Clone, Debug, Default)]
pub struct BuildInfo {
    pub version: String,
    pub git_commit: String,
}

/// Runs a gateway with `source` and the defaults for every other part until `shutdown`
/// resolves (see [`Gateway::builder`]).
pub async fn run(
    config: GatewayConfig,
    source: Box<dyn EndpointSource>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), Error> {
    Gateway::builder(config).source(source).run(shutdown).await
}

/// A gateway, assembled from parts.
#[derive(Debug)]
pub struct Gateway;

impl Gateway {
    pub fn builder(config: GatewayConfig) -> GatewayBuilder {
        GatewayBuilder {
            config,
            source: None,
            leader: None,
            netlink: None,
            device: None,
            private_key: None,
            metrics: None,
            listener: None,
        }
    }
}

/// The parts of a gateway; see [`Gateway::builder`].
pub struct GatewayBuilder {
    config: GatewayConfig,
    source: Option<Box<dyn EndpointSource>>,
    leader: Option<Arc<dyn LeaderElector>>,
    netlink: Option<Arc<dyn Netlink>>,
    device: Option<Arc<dyn WgDevice>>,
    private_key: Option<PrivateKey>,
    metrics: Option<Arc<GatewayMetrics>>,
    listener: Option<tokio::net::TcpListener>,
}

impl std::fmt::Debug for GatewayBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayBuilder")
            .field("cluster_id", &self.config.driver.cluster_id)
            .field("source", &self.source)
            .field("leader", &self.leader)
            .finish_non_exhaustive()
    }
}

impl GatewayBuilder {
    /// Where remote Endpoints come from and the local one is published (required).
    pub fn source(mut self, source: Box<dyn EndpointSource>) -> Self {
        self.source = Some(source);
        self
    }

    /// Who leads among the cluster's gateways (default: this one, always).
    pub fn leader(mut self, leader: Arc<dyn LeaderElector>) -> Self {
        self.leader = Some(leader);
        self
    }

    /// The kernel's links, routes and rules (default: rtnetlink in this network namespace).
    pub fn netlink(mut self, netlink: Arc<dyn Netlink>) -> Self {
        self.netlink = Some(netlink);
        self
    }

    /// The WireGuard device backend (default: the one `config.backend` selects).
    pub fn device(mut self, device: Arc<dyn WgDevice>) -> Self {
        self.device = Some(device);
        self
    }

    /// The private key (default: loaded from, or created in, the state directory).
    pub fn private_key(mut self, key: PrivateKey) -> Self {
        self.private_key = Some(key);
        self
    }

    /// The metrics to export (default: a fresh registry).
    pub fn metrics(mut self, metrics: Arc<GatewayMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// An HTTP listener already bound (default: bind `config.metrics_addr`).
    pub fn listener(mut self, listener: tokio::net::TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// Runs the gateway until `shutdown` resolves.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), Error> {
        let GatewayBuilder {
            config,
            source,
            leader,
            netlink,
            device,
            private_key,
            metrics,
            listener,
        } = self;
        let source: Arc<dyn EndpointSource> = Arc::from(source.ok_or_else(|| Error::Config {
            message: "the gateway needs an endpoint source (--broker)".into(),
        })?);
        let leader = leader.unwrap_or_else(|| Arc::new(AlwaysLeader));

        // 1. Everything that can fail for local reasons, before the first host change.
        config.driver.validate()?;
        let lock = StateLock::acquire(&config.state_dir)?;
        let private_key = match private_key {
            Some(k) => k,
            None => {
                let store = match &config.key_dir {
                    Some(dir) => KeyStore::read_only(dir),
                    None => KeyStore::new(&config.state_dir),
                };
                let (key, created) = store.load_or_create().map_err(Error::Keys)?;
                if created {
                    tracing::info!(path = %store.path().display(), "generated a new private key");
                } else {
                    tracing::info!(path = %store.path().display(), "loaded the private key");
                }
                key
            }
        };
        let public_key = private_key.public_key();
        let local = crate::config::local_endpoint(&config.driver, &public_key);
        // Writing the copy of the local Endpoint proves the state directory is writable (a
        // full or read-only one is found now, not after the device was configured).
        write_state_endpoint(&config, &local)?;
        let kind = source.kind();
        source.preflight().await.map_err(|source| Error::Source {
            action: format!("checking the {kind} broker"),
            source,
        })?;
        let listener = match listener {
            Some(l) => l,
            None => tokio::net::TcpListener::bind(config.metrics_addr)
                .await
                .map_err(Error::io(format!(
                    "listening on {} for metrics (is another gateway or program using the port? set --metrics-addr)",
                    config.metrics_addr
                )))?,
        };
        let mut psk_watcher = match &config.psk_refresh {
            Some(r) => Some(PskWatcher::new(r.file.clone(), r.allow_weak).map_err(Error::Keys)?),
            None => None,
        };
        let c = &config.driver;
        let mut admission = AdmissionRunner::open(
            config.admission.clone(),
            LocalIdentity {
                cluster_id: c.cluster_id.clone(),
                public_key,
                subnets: c.local_subnets.clone(),
                underlay: std::iter::once(c.private_ip)
                    .chain(c.public_ips.iter().copied())
                    .collect(),
                own_key: source.own_key(&local),
                published: local.clone(),
            },
            &config.state_dir,
        )
        .await
        .map_err(|source| Error::Source {
            action: format!(
                "opening the admission registry in {}",
                config.state_dir.display()
            ),
            source,
        })?;
        let metrics = match metrics {
            Some(m) => m,
            None => Arc::new(GatewayMetrics::new().map_err(Error::Metrics)?),
        };
        metrics.set_build_info(&config.build.version, &config.build.git_commit);
        metrics.preregister_rejections(wgcable_broker::admission::Reason::known_codes());

        // 2. The parts that touch the host.
        let netlink = match netlink {
            Some(n) => n,
            None => {
                let (nl, conn) =
                    RtNetlink::connect().map_err(Error::netlink("opening a netlink socket"))?;
                // The netlink connection task: it ends when every handle is dropped.
                tokio::spawn(conn);
                Arc::new(nl)
            }
        };
        let device = match device {
            Some(d) => d,
            None => Arc::from(
                wgcable_peers::select_backend(config.backend, netlink.clone(), &c.device)
                    .await
                    .map_err(Error::device(format!(
                        "choosing a WireGuard backend for {}",
                        c.device
                    )))?,
            ),
        };
        tracing::info!(backend = %device.kind(), device = %c.device, broker = source.kind(), "WireGuard backend selected");
        let mut driver = WireGuardDriver::new(
            config.driver.clone(),
            private_key,
            netlink,
            device,
            metrics.clone(),
        )?;
        let (stop_health, health_stopped) = tokio::sync::oneshot::channel::<()>();
        if let Some(hc) = config.health_check {
            let health = Arc::new(
                HealthChecker::new(hc.interval, hc.interval.max(Duration::from_secs(1)))
                    .with_max_lost(hc.max_lost),
            );
            // One task for all pingers; it ends when the gateway stops.
            tokio::spawn(health.clone().run(async move {
                let _ = health_stopped.await;
            }));
            driver = driver.with_health(health);
        }
        let driver = Arc::new(driver);

        let view = Arc::new(View {
            driver: driver.clone(),
            role: Mutex::new(Role::Follower { leader: None }),
            source_health: Mutex::new(SourceHealth::Healthy),
            conflicts: admission.view(),
        });
        let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
        let http = tokio::spawn(wgcable_metrics::serve(
            listener,
            metrics.clone(),
            view.clone(),
            HttpConfig::default(),
            async move {
                let _ = http_stopped.await;
            },
        ));

        // Leadership runs on a task of its own, so renewing a lease never waits on a
        // reconcile.
        let (role_tx, mut roles) = tokio::sync::watch::channel(Role::Follower { leader: None });
        let mut elector_roles = leader.roles();
        let elector = tokio::spawn(async move {
            while let Some(role) = elector_roles.next().await {
                if role_tx.send(role).is_err() {
                    break;
                }
            }
        });

        let mut run = Running {
            config: &config,
            source: source.clone(),
            driver: driver.clone(),
            metrics: metrics.clone(),
            view: view.clone(),
            local,
            started: SystemTime::now(),
            initialized: false,
        };
        let result = run
            .main_loop(&mut admission, &mut roles, &mut psk_watcher, shutdown)
            .await;

        tracing::info!(
            "stopping; the data path stays in place (run `wgcable cleanup` to remove it)"
        );
        source.shutdown().await;
        leader.release().await;
        elector.abort();
        let _ = stop_http.send(());
        let _ = stop_health.send(());
        match tokio::time::timeout(Duration::from_secs(2), http).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server task failed"),
            _ => {}
        }
        drop(lock);
        if let Err(e) = &result {
            if run.initialized {
                tracing::warn!(
                    error = %crate::error::chain(e),
                    device = %config.driver.device,
                    "the gateway stopped on an error after configuring the host: the device, its peers, routes and rule are left in place (run `wgcable cleanup` to remove them)"
                );
            }
        }
        result
    }
}

/// The running gateway's loop state.
struct Running<'a> {
    config: &'a GatewayConfig,
    source: Arc<dyn EndpointSource>,
    driver: Arc<WireGuardDriver>,
    metrics: Arc<GatewayMetrics>,
    view: Arc<View>,
    local: Endpoint,
    started: SystemTime,
    /// The device was set up (created or adopted): from here on a failure leaves it.
    initialized: bool,
}

impl Running<'_> {
    async fn main_loop(
        &mut self,
        admission: &mut AdmissionRunner,
        roles: &mut tokio::sync::watch::Receiver<Role>,
        psk: &mut Option<PskWatcher>,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), Error> {
        let debounce = admission.admission().config().debounce;
        let mut batches = wgcable_broker::debounce::debounce(self.source.watch(), debounce);
        let mut resync = tokio::time::interval(self.config.resync_interval);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.reset();
        let mut status = tokio::time::interval(self.config.status_interval);
        status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        status.reset();
        // The first batch is the source's snapshot: until it arrived nothing is reconciled, so
        // a restarted gateway removes no peer of an Endpoint it has not seen yet.
        let mut synced = false;
        tokio::pin!(shutdown);

        loop {
            let leading = roles.borrow().is_leader();
            if leading && !self.initialized {
                self.lead().await?;
            }
            // A gateway that was passive when the source's snapshot arrived catches up with
            // the admitted set once it leads (the snapshot will not come again).
            if leading && !synced && admission.admission().is_synced() {
                self.sync_all(admission).await;
                synced = true;
            }
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                changed = roles.changed() => {
                    if changed.is_err() {
                        tracing::warn!("leader election ended; staying in the last role");
                        // Never ask again.
                        std::future::pending::<()>().await;
                    }
                    let role = roles.borrow().clone();
                    self.set_role(&role).await;
                }
                batch = batches.next() => {
                    let Some(batch) = batch else {
                        tracing::warn!("the endpoint source ended; no more endpoint changes will be seen");
                        return Ok(());
                    };
                    let update = admission.apply(batch).await;
                    self.count_refusals(&update);
                    if let Some(health) = &update.health {
                        self.set_source_health(health);
                    }
                    if update.republish && roles.borrow().is_leader() {
                        tracing::warn!("the published local Endpoint was changed or removed by someone else; publishing ours again");
                        self.publish().await;
                    }
                    if !roles.borrow().is_leader() {
                        // A passive gateway changes nothing on the host; it catches up with
                        // the admitted set when it leads.
                        continue;
                    }
                    if update.snapshot && !synced {
                        self.sync_all(admission).await;
                        synced = true;
                    } else if synced {
                        self.apply_update(&update).await;
                    }
                }
                _ = resync.tick(), if synced && leading => {
                    // Errors are logged and counted inside; the next tick retries.
                    let _ = self.driver.reconcile(Trigger::Resync).await;
                    self.driver.check_snat().await;
                }
                _ = status.tick() => {
                    admission.tick();
                    self.status_tick(psk, leading && synced).await;
                }
            }
        }
    }

    /// This gateway leads: set the device up (adopting what is there) and publish.
    async fn lead(&mut self) -> Result<(), Error> {
        tracing::info!("leading: configuring the device and publishing the local Endpoint");
        self.driver.init().await?;
        self.initialized = true;
        // The source first learns it leads: a source that was told it is passive publishes
        // nothing until then.
        self.source.set_role(&Role::Leader).await;
        self.publish().await;
        let c = &self.config.driver;
        self.metrics.set_gateways(1);
        self.metrics.set_gateway_creation_timestamp(
            &c.cluster_id,
            &c.hostname,
            self.started
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default(),
        );
        *self.view.role.lock().unwrap_or_else(|p| p.into_inner()) = Role::Leader;
        Ok(())
    }

    async fn set_role(&mut self, role: &Role) {
        *self.view.role.lock().unwrap_or_else(|p| p.into_inner()) = role.clone();
        match role {
            Role::Leader => {
                tracing::info!("this gateway is now the active one");
                // Leading again after a spell as a standby (the first time, `lead` does this):
                // the source must know before publishing (the Kubernetes source publishes and
                // syncs only while it leads).
                if self.initialized {
                    self.source.set_role(role).await;
                    self.publish().await;
                }
            }
            Role::Follower { leader } => {
                // What is on the host stays: a data path that works is not torn down because
                // the lease changed hands (upstream issue 2747); the new leader's Endpoint
                // replaces ours at the other gateways.
                tracing::info!(leader = leader.as_deref().unwrap_or("unknown"), "this gateway is passive: it stops publishing and leaves the data path as it is");
                self.source.set_role(role).await;
            }
        }
    }

    async fn publish(&self) {
        match self.source.publish(&self.local).await {
            Ok(()) => tracing::info!(
                cluster = %self.config.driver.cluster_id,
                public_key = %self.driver.public_key(),
                broker = self.source.kind(),
                "published the local endpoint"
            ),
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), broker = self.source.kind(), "publishing the local endpoint failed; retrying at the next status interval")
            }
        }
    }

    fn set_source_health(&self, health: &SourceHealth) {
        match health {
            SourceHealth::Healthy => tracing::info!(
                broker = self.source.kind(),
                "the endpoint source is reachable"
            ),
            SourceHealth::Unhealthy(why) => {
                tracing::warn!(broker = self.source.kind(), reason = %why, "the endpoint source is unreachable; every tunnel stays as it is until it returns")
            }
        }
        self.metrics
            .set_broker_healthy(self.source.kind(), health.is_healthy());
        *self
            .view
            .source_health
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = health.clone();
    }

    fn count_refusals(&self, update: &AdmissionUpdate) {
        for r in &update.refused {
            self.metrics.inc_endpoint_rejected(r.reason.as_str());
        }
    }

    fn remote(&self, a: &wgcable_broker::admission::AdmittedEndpoint) -> Remote {
        Remote::validated(a.endpoint.clone(), a.spec.clone(), self.config.driver.nat)
            .with_seniority(a.seniority)
    }

    /// The first snapshot: every admitted Endpoint at once, one reconcile of the whole host.
    async fn sync_all(&self, admission: &AdmissionRunner) {
        let remotes: Vec<Remote> = admission
            .admission()
            .admitted()
            .map(|a| self.remote(a))
            .collect();
        tracing::info!(
            remotes = remotes.len(),
            "first snapshot of the endpoint source"
        );
        if let Err(e) = self.driver.set_remotes(remotes).await {
            tracing::warn!(error = %crate::error::chain(&e), "first reconcile failed; retrying at the next resync");
        }
        let _ = self.driver.poll().await;
    }

    /// One admitted batch: the removals and upserts as one change of the driver.
    async fn apply_update(&self, update: &AdmissionUpdate) {
        if update.upserted.is_empty() && update.removed.is_empty() {
            return;
        }
        let changes: Vec<RemoteChange> = update
            .removed
            .iter()
            .cloned()
            .map(RemoteChange::Remove)
            .chain(
                update
                    .upserted
                    .iter()
                    .map(|a| RemoteChange::Upsert(self.remote(a))),
            )
            .collect();
        match self.driver.apply_changes(changes).await {
            Ok(report) => {
                for (cluster, why) in &report.refused {
                    if update.upserted.iter().any(|a| &a.cluster_id == cluster) {
                        tracing::warn!(cluster = %cluster, reason = %why, "cannot connect to endpoint");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "applying endpoint changes failed; retrying at the next resync")
            }
        }
        let _ = self.driver.poll().await;
    }

    /// Judges connections; a data plane that lost its device or peers is repaired now, not
    /// at the next resync; reports to the source; follows the PSK file.
    async fn status_tick(&self, psk: &mut Option<PskWatcher>, acting: bool) {
        self.metrics.inc_gateway_sync();
        self.metrics
            .set_broker_operations(self.source.kind(), &self.source.counters());
        match self.driver.poll().await {
            Ok(_) if acting && self.driver.needs_repair() => {
                tracing::warn!("the data plane lost its device or peers; repairing now");
                let _ = self.driver.reconcile(Trigger::Resync).await;
                let _ = self.driver.poll().await;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "reading connection status failed")
            }
        }
        if let Some(w) = psk {
            match w.poll() {
                Ok(Some(key)) => {
                    tracing::info!("the pre-shared key file changed; every peer gets the new key");
                    if let Err(e) = self.driver.set_preshared_key(key).await {
                        tracing::warn!(error = %crate::error::chain(&e), "applying the new pre-shared key failed; retrying at the next resync");
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %crate::error::chain(&e), "cannot read the pre-shared key file; keeping the current key")
                }
            }
        }
        let role = self
            .view
            .role
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let report = GatewayReport {
            local: self.local.clone(),
            role,
            connections: self.driver.last_connections(),
            status_failure: String::new(),
            reported_at: SystemTime::now(),
        };
        if let Err(e) = self.source.report(&report).await {
            tracing::debug!(error = %crate::error::chain(&e), "reporting the gateway's status to the source failed");
        }
    }
}

/// What the HTTP server sees of the gateway: the last judged connections, readiness, the
/// admission's conflicts.
struct View {
    driver: Arc<WireGuardDriver>,
    role: Mutex<Role>,
    source_health: Mutex<SourceHealth>,
    conflicts: wgcable_broker::admission::AdmissionView,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View").finish_non_exhaustive()
    }
}

impl GatewayState for View {
    fn connections(&self) -> Vec<ConnectionReport> {
        self.driver.last_reports()
    }

    fn ready(&self) -> bool {
        let passive = !self
            .role
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_leader();
        // A passive gateway has nothing to be ready for; an active one is ready once its
        // device is configured and the first reconcile went through, and stays so while the
        // device answers.
        passive || (self.driver.is_ready() && self.driver.device_answers())
    }

    fn conflicts(&self) -> Option<serde_json::Value> {
        serde_json::to_value(&*self.conflicts.get()).ok()
    }

    fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        let role = self.role.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Role::Follower { leader } = &role {
            notes.push(format!(
                "passive: {} is the active gateway",
                leader.as_deref().unwrap_or("another gateway")
            ));
        } else if !self.driver.is_ready() {
            notes.push("the first reconcile has not gone through yet".to_owned());
        }
        if !self.driver.device_answers() {
            notes.push("the WireGuard device does not answer".to_owned());
        }
        let health = self
            .source_health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let SourceHealth::Unhealthy(why) = health {
            notes.push(format!(
                "broker unreachable: {why}; every tunnel stays as it is until it returns"
            ));
        }
        notes
    }
}

/// Keeps a copy of the local Endpoint in the state directory for `wgcable show endpoint`.
fn write_state_endpoint(config: &GatewayConfig, endpoint: &Endpoint) -> Result<(), Error> {
    let yaml = endpoint.to_yaml().map_err(|e| Error::Io {
        action: "encoding the local Endpoint as YAML".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let path = config.state_dir.join("endpoint.yaml");
    wgcable_broker::write_atomic(&path, yaml.as_bytes(), 0o644).map_err(|e| Error::Io {
        action: format!(
            "writing {} (is the state directory --state-dir writable and not full?)",
            path.display()
        ),
        source: e,
    })
}

/// Removes what a gateway installed (for `wgcable cleanup`): rule, routes, device and the
/// userspace process. Works whether or not a gateway is running, and creates nothing: the
/// backend is the one that owns the device (or the one asked for), found without probing.
pub async fn cleanup(
    device_name: &str,
    table: u32,
    rule_priority: u32,
    backend: BackendPreference,
) -> Result<crate::driver::CleanupReport, Error> {
    let (netlink, conn) =
        RtNetlink::connect().map_err(Error::netlink("opening a netlink socket"))?;
    tokio::spawn(conn);
    let netlink = Arc::new(netlink);
    let userspace = wgcable_peers::UserspaceConfig::from_env();
    let device: Option<Box<dyn WgDevice>> = match backend {
        BackendPreference::Auto => {
            wgcable_peers::find_existing(netlink.clone(), device_name, userspace)
                .await
                .map_err(Error::device(format!(
                    "finding the backend of device {device_name}"
                )))?
        }
        BackendPreference::Kernel => {
            Some(Box::new(wgcable_peers::KernelDevice::new(netlink.clone())))
        }
        BackendPreference::Userspace => {
            Some(Box::new(wgcable_peers::UserspaceDevice::new(userspace)))
        }
    };
    crate::driver::cleanup_host(
        &*netlink,
        device.as_deref(),
        device_name,
        table,
        rule_priority,
    )
    .await
}

/// What a gateway started now would change on the host, without changing anything
/// (`wgcable plan`): the source's current Endpoints are admitted (in memory: the registry is
/// read, never written) and planned against the live host. The private key is read, never
/// created; a missing one means every peer would be new, which the plan shows.
pub async fn plan(
    config: &GatewayConfig,
    source: Box<dyn EndpointSource>,
) -> Result<crate::host::HostPlan, Error> {
    config.driver.validate()?;
    let store = match &config.key_dir {
        Some(dir) => KeyStore::read_only(dir),
        None => KeyStore::new(&config.state_dir),
    };
    let private_key = match store.load().map_err(Error::Keys)? {
        Some(key) => key,
        None => {
            tracing::info!(path = %store.path().display(), "no private key yet: the plan uses a throwaway one (a real start creates and keeps one)");
            PrivateKey::generate()
        }
    };
    let public_key = private_key.public_key();
    let local = crate::config::local_endpoint(&config.driver, &public_key);
    source.preflight().await.map_err(|source| Error::Source {
        action: "checking the endpoint source".into(),
        source,
    })?;
    let c = &config.driver;
    let registry = wgcable_broker::admission::registry::load(
        &config.state_dir,
        &c.cluster_id,
        config.admission.max_registry_bytes,
        config.admission.max_objects,
    )
    .map(|(r, _)| r)
    .ok();
    let identity = LocalIdentity {
        cluster_id: c.cluster_id.clone(),
        public_key,
        subnets: c.local_subnets.clone(),
        underlay: std::iter::once(c.private_ip)
            .chain(c.public_ips.iter().copied())
            .collect(),
        own_key: source.own_key(&local),
        published: local,
    };
    let mut admission = match registry {
        Some(r) => AdmissionRunner::with_registry_in_memory(config.admission.clone(), identity, &r),
        None => AdmissionRunner::in_memory(config.admission.clone(), identity),
    };
    let mut batches =
        wgcable_broker::debounce::debounce(source.watch(), admission.admission().config().debounce);
    // The source's first batch is its snapshot.
    loop {
        let Some(batch) = batches.next().await else {
            return Err(Error::Config {
                message: "the endpoint source ended before it delivered its Endpoints".into(),
            });
        };
        let update = admission.apply(batch).await;
        if update.snapshot {
            break;
        }
    }
    let (netlink, conn) =
        RtNetlink::connect().map_err(Error::netlink("opening a netlink socket"))?;
    tokio::spawn(conn);
    let netlink: Arc<dyn Netlink> = Arc::new(netlink);
    // The backend that owns the device, found without creating anything; with no device yet
    // the kernel backend reads "none" and the plan creates it.
    let device: Arc<dyn WgDevice> = match wgcable_peers::find_existing(
        netlink.clone(),
        &c.device,
        wgcable_peers::UserspaceConfig::from_env(),
    )
    .await
    .map_err(Error::device(format!(
        "finding the backend of device {}",
        c.device
    )))? {
        Some(d) => Arc::from(d),
        None => Arc::new(wgcable_peers::KernelDevice::new(netlink.clone())),
    };
    let metrics = Arc::new(GatewayMetrics::new().map_err(Error::Metrics)?);
    let driver =
        WireGuardDriver::new(config.driver.clone(), private_key, netlink, device, metrics)?;
    let remotes = admission
        .admission()
        .admitted()
        .map(|a| {
            Remote::validated(a.endpoint.clone(), a.spec.clone(), c.nat).with_seniority(a.seniority)
        })
        .collect();
    driver.load_remotes(remotes).await;
    driver.dry_run().await
}
