//! The gateway: one long-running loop that owns the driver, the endpoint source, the status
//! poll, the resync timer and the HTTP server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wgcable_api::{ConnectionReport, Endpoint};
use wgcable_keys::KeyStore;
use wgcable_metrics::{GatewayMetrics, GatewayState, HttpConfig};
use wgcable_netlink::{Netlink, RtNetlink};
use wgcable_peers::{BackendPreference, WgDevice};

use crate::broker::{EndpointEvent, EndpointSource, FileBroker};
use crate::driver::{CableDriver, Trigger, WireGuardDriver};
use crate::health::HealthChecker;
use crate::{DriverConfig, Error};

/// Everything `wgcable gateway` is configured with.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// The cable driver's configuration.
    pub driver: DriverConfig,
    /// Kernel, userspace or auto.
    pub backend: BackendPreference,
    /// The file broker's shared directory.
    pub broker_dir: PathBuf,
    /// Where the private key (and a copy of the local Endpoint) live.
    pub state_dir: PathBuf,
    /// The HTTP server's address (`/metrics`, `/healthz`, `/readyz`, `/connections`).
    pub metrics_addr: SocketAddr,
    /// How often connection status is judged (Submariner: 5 s).
    pub status_interval: Duration,
    /// How often the host is compared with the desired state and drift repaired.
    pub resync_interval: Duration,
    /// How often the broker directory is rescanned besides inotify.
    pub rescan_interval: Duration,
    /// Pinging remote gateways through the tunnels; `None` turns it off.
    pub health_check: Option<HealthCheckConfig>,
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

/// What the HTTP server sees of the driver: the last judged connections and readiness.
#[derive(Debug)]
struct DriverView(Arc<WireGuardDriver>);

impl GatewayState for DriverView {
    fn connections(&self) -> Vec<ConnectionReport> {
        self.0.last_reports()
    }
    fn ready(&self) -> bool {
        self.0.is_ready()
    }
}

/// Runs a gateway until `shutdown` resolves.
///
/// Stopping leaves the data path (device, peers, routes, rule, userspace process) in place on
/// purpose: a restarted gateway adopts it, so a restart or upgrade does not cut traffic.
/// `wgcable cleanup` is the way to remove it.
pub async fn run(
    config: GatewayConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), Error> {
    config.driver.validate()?;
    let store = KeyStore::new(&config.state_dir);
    let (private_key, created) = store.load_or_create().map_err(Error::Keys)?;
    if created {
        tracing::info!(path = %store.path().display(), "generated a new private key");
    } else {
        tracing::info!(path = %store.path().display(), "loaded the private key");
    }

    let (netlink, conn) =
        RtNetlink::connect().map_err(Error::netlink("opening a netlink socket"))?;
    // The netlink connection task: it ends when every handle is dropped.
    tokio::spawn(conn);
    let netlink: Arc<dyn Netlink> = Arc::new(netlink);
    let device: Arc<dyn WgDevice> = Arc::from(
        wgcable_peers::select_backend(config.backend, netlink.clone(), &config.driver.device)
            .await
            .map_err(Error::device(format!(
                "choosing a WireGuard backend for {}",
                config.driver.device
            )))?,
    );
    tracing::info!(backend = %device.kind(), device = %config.driver.device, "WireGuard backend selected");

    let metrics = Arc::new(GatewayMetrics::new().map_err(Error::Metrics)?);
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

    // Bind before touching the host: a port in use is a configuration error.
    let listener = tokio::net::TcpListener::bind(config.metrics_addr)
        .await
        .map_err(Error::io(format!(
            "listening on {} for metrics",
            config.metrics_addr
        )))?;
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(wgcable_metrics::serve(
        listener,
        metrics.clone(),
        Arc::new(DriverView(driver.clone())),
        HttpConfig::default(),
        async move {
            let _ = http_stopped.await;
        },
    ));

    driver.init().await?;
    let local = driver.local_endpoint();
    publish_local(&config, &local)?;
    let mut broker = FileBroker::open(
        &config.broker_dir,
        &config.driver.cluster_id,
        config.rescan_interval,
        Some(metrics.clone()),
    )?;
    broker.publish(&local).await?;
    tracing::info!(
        cluster = %config.driver.cluster_id,
        public_key = %driver.public_key(),
        broker = %config.broker_dir.display(),
        "published the local endpoint"
    );

    let snapshot = broker.snapshot().await?;
    let infos = snapshot.into_iter().map(|ep| driver.nat_info(ep)).collect();
    if let Err(e) = driver.set_endpoints(infos).await {
        tracing::warn!(error = %crate::error::chain(&e), "first reconcile failed; retrying at the next resync");
    }
    let _ = driver.poll().await;

    let mut resync = tokio::time::interval(config.resync_interval);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.reset();
    let mut status = tokio::time::interval(config.status_interval);
    status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    status.reset();
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            event = broker.next() => match event {
                Some(EndpointEvent::Upsert(endpoint)) => {
                    let cluster = endpoint.spec.cluster_id.clone();
                    let info = driver.nat_info(*endpoint);
                    if let Err(e) = driver.connect_to_endpoint(&info).await {
                        tracing::warn!(cluster = %cluster, error = %crate::error::chain(&e), "cannot connect to endpoint");
                    }
                    let _ = driver.poll().await;
                }
                Some(EndpointEvent::Remove { cluster_id }) => {
                    let mut endpoint = Endpoint::new(Default::default());
                    endpoint.spec.cluster_id = cluster_id.clone();
                    if let Err(e) = driver.disconnect_from_endpoint(&endpoint).await {
                        tracing::warn!(cluster = %cluster_id, error = %crate::error::chain(&e), "cannot disconnect from endpoint");
                    }
                    let _ = driver.poll().await;
                }
                None => {
                    tracing::warn!("the endpoint source ended; no more endpoint changes will be seen");
                    break;
                }
            },
            _ = resync.tick() => {
                // Errors are logged and counted inside; the next tick retries.
                let _ = driver.reconcile(Trigger::Resync).await;
                driver.check_snat().await;
            }
            _ = status.tick() => {
                if let Err(e) = driver.poll().await {
                    tracing::warn!(error = %crate::error::chain(&e), "reading connection status failed");
                }
            }
        }
    }

    tracing::info!("stopping; the data path stays in place (run `wgcable cleanup` to remove it)");
    let _ = stop_http.send(());
    let _ = stop_health.send(());
    match tokio::time::timeout(Duration::from_secs(2), http).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server task failed"),
        _ => {}
    }
    Ok(())
}

/// Keeps a copy of the local Endpoint in the state directory for `wgcable show endpoint`.
fn publish_local(config: &GatewayConfig, endpoint: &Endpoint) -> Result<(), Error> {
    let yaml = endpoint.to_yaml().map_err(|e| Error::Io {
        action: "encoding the local Endpoint as YAML".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    crate::broker::write_atomic(&config.state_dir.join("endpoint.yaml"), yaml.as_bytes())
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
