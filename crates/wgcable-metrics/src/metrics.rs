//! The gateway's metric families and the bookkeeping that keeps them consistent.
//!
//! Names, help texts and labels of the `submariner_` series are upstream's, read from
//! Submariner's source: the per-cable series from submariner `pkg/cable/metrics.go`,
//! `submariner_gateway_sync_iterations` from `pkg/cableengine/syncer/syncer.go` (a counter
//! without `_total`, kept so for compatibility upstream says), and `submariner_gateways`,
//! `submariner_gateway_creation_timestamp` and `submariner_requested_connections` from the
//! operator's `controllers/submariner/submariner_metrics.go`, which upstream computes from the
//! Gateway objects; a wgcable gateway exports them for itself, as if the operator looked at it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use wgcable_api::ConnectionStatus;

use crate::Error;

/// Metric names, public so the engine's tests, docs and dashboards can refer to them.
pub mod names {
    /// Submariner: 1 for a cable's current status (seven cable labels + `status`).
    pub const CONNECTIONS: &str = "submariner_connections";
    /// Submariner: number of cables per `cable_driver` and `status`.
    pub const CONNECTIONS_SHORT: &str = "submariner_connections_short";
    /// Submariner: unix seconds of the first handshake of the current connection.
    pub const CONNECTION_ESTABLISHED_TIMESTAMP: &str =
        "submariner_connection_established_timestamp";
    /// Submariner: bytes received over a cable.
    pub const GATEWAY_RX_BYTES: &str = "submariner_gateway_rx_bytes";
    /// Submariner: bytes transmitted over a cable.
    pub const GATEWAY_TX_BYTES: &str = "submariner_gateway_tx_bytes";
    /// Submariner: last round-trip time over a cable.
    pub const CONNECTION_LATENCY_SECONDS: &str = "submariner_connection_latency_seconds";
    /// Ours: seconds since the latest WireGuard handshake of a cable.
    pub const CONNECTION_LAST_HANDSHAKE_AGE_SECONDS: &str =
        "wgcable_connection_last_handshake_age_seconds";
    /// Ours: reconcile runs.
    pub const RECONCILES_TOTAL: &str = "wgcable_reconciles_total";
    /// Ours: reconcile runs that failed.
    pub const RECONCILE_ERRORS_TOTAL: &str = "wgcable_reconcile_errors_total";
    /// Ours: drift repairs by kind (`what`).
    pub const REPAIRS_TOTAL: &str = "wgcable_repairs_total";
    /// Ours: endpoints refused, by `reason`.
    pub const ENDPOINTS_REJECTED_TOTAL: &str = "wgcable_endpoints_rejected_total";
    /// Ours: peers configured on the device.
    pub const PEERS: &str = "wgcable_peers";
    /// Ours: 1 while the endpoint source (`broker`) is reachable, 0 while it is not.
    pub const BROKER_HEALTHY: &str = "wgcable_broker_healthy";
    /// Ours: what the endpoint source (`broker`) did, by `operation` (etcd: `relist`,
    /// `watch`, `ignored_key`).
    pub const BROKER_OPERATIONS_TOTAL: &str = "wgcable_broker_operations_total";
    /// Ours: info metric, 1 for the WireGuard `backend` in use.
    pub const BACKEND_INFO: &str = "wgcable_backend_info";
    /// Ours: info metric, 1 with the `version` and `git_commit` of the running binary.
    pub const BUILD_INFO: &str = "wgcable_build_info";
    /// Submariner: number of gateways (of this cluster, as seen by this gateway).
    pub const GATEWAYS: &str = "submariner_gateways";
    /// Submariner: unix seconds when the gateway was created (`local_cluster`, `local_hostname`).
    pub const GATEWAY_CREATION_TIMESTAMP: &str = "submariner_gateway_creation_timestamp";
    /// Submariner: gateway status synchronisations (a counter without `_total`, as upstream).
    pub const GATEWAY_SYNC_ITERATIONS: &str = "submariner_gateway_sync_iterations";
    /// Submariner: connections by local and remote cluster/hostname and `status`.
    pub const REQUESTED_CONNECTIONS: &str = "submariner_requested_connections";
}

/// The drift repairs the engine counts (`wgcable_repairs_total{what}`): exported at 0 from the
/// start so that `rate()` and alerts work before the first repair.
pub const REPAIR_KINDS: [&str; 7] = [
    "device", "link", "identity", "addr", "peer", "route", "rule",
];

/// The reasons the engine refuses an endpoint for (`wgcable_endpoints_rejected_total{reason}`),
/// exported at 0 from the start.
pub const REJECTION_REASONS: [&str; 5] = ["parse", "invalid", "duplicate", "refused", "device"];

/// Labels of `submariner_requested_connections`, as upstream's operator orders them.
const REQUESTED_LABEL_NAMES: [&str; 5] = [
    "local_cluster",
    "local_hostname",
    "remote_cluster",
    "remote_hostname",
    STATUS_LABEL,
];

/// Label names shared by every per-cable series, in the order [`CableLabels::values`] returns.
const CABLE_LABEL_NAMES: [&str; 7] = [
    "cable_driver",
    "local_cluster",
    "local_hostname",
    "local_endpoint_ip",
    "remote_cluster",
    "remote_hostname",
    "remote_endpoint_ip",
];

const STATUS_LABEL: &str = "status";

/// What is counted when a caller passes something that is not a short fixed word.
const OTHER_WORD: &str = "other";

/// Longest word accepted as a `what`, `reason` or `backend` label value.
const MAX_WORD_LEN: usize = 32;

/// The seven labels that identify a cable in Submariner's metrics.
///
/// The values are cluster ids, hostnames and endpoint IPs; they are exported verbatim, so never
/// put key material in them. Build them with [`CableLabels::for_cable`] to get upstream's choice
/// of values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct CableLabels {
    pub cable_driver: String,
    pub local_cluster: String,
    pub local_hostname: String,
    pub local_endpoint_ip: String,
    pub remote_cluster: String,
    pub remote_hostname: String,
    pub remote_endpoint_ip: String,
}

impl CableLabels {
    /// The labels Submariner gives a cable between two Endpoints (submariner
    /// `pkg/cable/metrics.go` `getLabels`): cluster ids and hostnames, and as the endpoint IPs
    /// the *public* IP of each side's spec (empty when none is published), not the IP the cable
    /// uses, so that series keep their identity when NAT discovery switches addresses.
    pub fn for_cable(
        cable_driver: &str,
        local: &wgcable_api::EndpointSpec,
        remote: &wgcable_api::EndpointSpec,
    ) -> Self {
        CableLabels {
            cable_driver: cable_driver.to_owned(),
            local_cluster: local.cluster_id.clone(),
            local_hostname: local.hostname.clone(),
            local_endpoint_ip: local.public_ip.clone(),
            remote_cluster: remote.cluster_id.clone(),
            remote_hostname: remote.hostname.clone(),
            remote_endpoint_ip: remote.public_ip.clone(),
        }
    }

    fn values(&self) -> [&str; 7] {
        [
            &self.cable_driver,
            &self.local_cluster,
            &self.local_hostname,
            &self.local_endpoint_ip,
            &self.remote_cluster,
            &self.remote_hostname,
            &self.remote_endpoint_ip,
        ]
    }
}

/// Every cable's values and the counts derived from them.
///
/// Kept under one lock with every multi-step update, and taken by [`CableCollector`] while it
/// renders, so a scrape never sees a cable with two statuses or none in the middle of a
/// transition, or counts that disagree with the cables.
#[derive(Debug, Default)]
struct Book {
    /// Every cable's values, rendered into its series at scrape time by [`CableCollector`]:
    /// one compact record a cable instead of a Prometheus series object per family, each of
    /// which held its own copy of the labels (about 1 KiB a series, 4.9 MiB of the heap at
    /// 1,000 cables).
    cables: HashMap<CableLabels, CableValues>,
    /// `submariner_connections_short` and `submariner_requested_connections` as counts, kept
    /// up to date one status change at a time: recounting every cable at each change cost
    /// O(n) per change, so 5,000 cables appearing at once took O(n^2) (tens of seconds).
    short_counts: HashMap<(String, &'static str), u32>,
    requested_counts: HashMap<RequestedKey, u32>,
}

/// (local cluster, local hostname, remote cluster, remote hostname, status).
type RequestedKey = (String, String, String, String, &'static str);

/// One cable's values; `None` exports no series (a series at 0 would read as "established in
/// 1970", or as a latency measured).
#[derive(Debug, Default, Clone, Copy)]
struct CableValues {
    status: Option<&'static str>,
    rx_bytes: Option<f64>,
    tx_bytes: Option<f64>,
    established: Option<f64>,
    latency: Option<f64>,
    last_handshake_age: Option<f64>,
}

/// The per-cable families and the two counts derived from them, with Submariner's names and
/// help texts, in the order [`CableCollector::collect`] renders them.
const CABLE_FAMILIES: [(&str, &str); 5] = [
    (
        names::CONNECTION_ESTABLISHED_TIMESTAMP,
        "Timestamp of last successful connection established (by cable driver and cable)",
    ),
    (
        names::GATEWAY_RX_BYTES,
        "Count of bytes received (by cable driver and cable)",
    ),
    (
        names::GATEWAY_TX_BYTES,
        "Count of bytes transmitted (by cable driver and cable)",
    ),
    (
        names::CONNECTION_LATENCY_SECONDS,
        "Connection latency in seconds (last RTT, by cable driver and cable)",
    ),
    (
        names::CONNECTION_LAST_HANDSHAKE_AGE_SECONDS,
        "Seconds since the latest WireGuard handshake (by cable driver and cable)",
    ),
];
const CONNECTIONS_HELP: &str =
    "Number of connections and corresponding status (by cable driver and cable)";
const CONNECTIONS_SHORT_HELP: &str =
    "Summary of connections and corresponding status without cable information";
const REQUESTED_HELP: &str = "Number of connections (by endpoint and status)";

/// Renders the cable families from the [`Book`] at each scrape, under its lock: a scrape sees
/// every cable in exactly one status, and the counts agreeing with them, whatever changes
/// meanwhile. Written by hand over prometheus's `Collector` trait because its `GaugeVec`
/// keeps a series object, with its own copy of every label, per label set.
#[derive(Clone)]
struct CableCollector {
    book: Arc<Mutex<Book>>,
    descs: Vec<Desc>,
}

impl CableCollector {
    fn new(book: Arc<Mutex<Book>>) -> prometheus::Result<Self> {
        let owned = |labels: &[&str]| labels.iter().map(|l| (*l).to_owned()).collect();
        let status_labels: Vec<&str> = CABLE_LABEL_NAMES
            .iter()
            .copied()
            .chain([STATUS_LABEL])
            .collect();
        let mut descs = vec![
            Desc::new(
                names::CONNECTIONS.into(),
                CONNECTIONS_HELP.into(),
                owned(&status_labels),
                HashMap::new(),
            )?,
            Desc::new(
                names::CONNECTIONS_SHORT.into(),
                CONNECTIONS_SHORT_HELP.into(),
                owned(&["cable_driver", STATUS_LABEL]),
                HashMap::new(),
            )?,
            Desc::new(
                names::REQUESTED_CONNECTIONS.into(),
                REQUESTED_HELP.into(),
                owned(&REQUESTED_LABEL_NAMES),
                HashMap::new(),
            )?,
        ];
        for (name, help) in CABLE_FAMILIES {
            descs.push(Desc::new(
                name.into(),
                help.into(),
                owned(&CABLE_LABEL_NAMES),
                HashMap::new(),
            )?);
        }
        Ok(CableCollector { book, descs })
    }
}

impl Collector for CableCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let book = lock(&self.book);
        let mut connections = Vec::new();
        let mut per_cable: [Vec<Metric>; 5] = Default::default();
        for (cable, v) in &book.cables {
            let labels = cable.values();
            if let Some(status) = v.status {
                let mut with_status = labels_of(&CABLE_LABEL_NAMES, &labels);
                with_status.push((STATUS_LABEL, status));
                connections.push(gauge(&with_status, 1.0));
            }
            let values = [
                v.established,
                v.rx_bytes,
                v.tx_bytes,
                v.latency,
                v.last_handshake_age,
            ];
            for (family, value) in per_cable.iter_mut().zip(values) {
                if let Some(value) = value {
                    family.push(gauge(&labels_of(&CABLE_LABEL_NAMES, &labels), value));
                }
            }
        }
        let short = book
            .short_counts
            .iter()
            .map(|((driver, status), n)| {
                gauge(
                    &[("cable_driver", driver.as_str()), (STATUS_LABEL, status)],
                    f64::from(*n),
                )
            })
            .collect();
        let requested = book
            .requested_counts
            .iter()
            .map(|(key, n)| {
                gauge(
                    &labels_of(&REQUESTED_LABEL_NAMES, &requested_values(key)),
                    f64::from(*n),
                )
            })
            .collect();
        let mut families = vec![
            family(names::CONNECTIONS, CONNECTIONS_HELP, connections),
            family(names::CONNECTIONS_SHORT, CONNECTIONS_SHORT_HELP, short),
            family(names::REQUESTED_CONNECTIONS, REQUESTED_HELP, requested),
        ];
        for ((name, help), metrics) in CABLE_FAMILIES.into_iter().zip(per_cable) {
            families.push(family(name, help, metrics));
        }
        // Empty families are not exported, as a `GaugeVec` without series is not.
        families.retain(|f| !f.get_metric().is_empty());
        families
    }
}

fn labels_of<'a>(names: &[&'a str], values: &[&'a str]) -> Vec<(&'a str, &'a str)> {
    names.iter().copied().zip(values.iter().copied()).collect()
}

/// A gauge sample; its label pairs sorted by name, as prometheus's own vectors sort them.
fn gauge(labels: &[(&str, &str)], value: f64) -> Metric {
    let mut pairs: Vec<LabelPair> = labels
        .iter()
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name((*name).to_owned());
            pair.set_value((*value).to_owned());
            pair
        })
        .collect();
    pairs.sort_by(|a, b| a.name().cmp(b.name()));
    let mut g = prometheus::proto::Gauge::default();
    g.set_value(value);
    let mut metric = Metric::from_gauge(g);
    metric.set_label(pairs);
    metric
}

fn family(name: &str, help: &str, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(help.to_owned());
    f.set_field_type(MetricType::GAUGE);
    f.set_metric(metrics);
    f
}

fn lock(book: &Mutex<Book>) -> MutexGuard<'_, Book> {
    // A panic while the lock was held cannot leave the book half-written in a way that matters
    // more than losing metrics altogether, so carry on with what is there.
    book.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What one status poll learned about one cable, for [`GatewayMetrics::record_poll`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CablePoll {
    /// The connection's status.
    pub status: ConnectionStatus,
    /// WireGuard's received-bytes counter.
    pub rx_bytes: u64,
    /// WireGuard's transmitted-bytes counter.
    pub tx_bytes: u64,
    /// Unix time of the first handshake of the current connection, if established.
    pub established: Option<f64>,
    /// Seconds since the latest handshake, if any.
    pub last_handshake_age: Option<f64>,
}

/// The gateway's metrics, in a registry of their own.
#[derive(Debug)]
pub struct GatewayMetrics {
    registry: Registry,
    reconciles: IntCounter,
    reconcile_errors: IntCounter,
    repairs: IntCounterVec,
    endpoints_rejected: IntCounterVec,
    peers: IntGauge,
    broker_healthy: IntGaugeVec,
    broker_operations: IntCounterVec,
    backend: IntGaugeVec,
    build_info: IntGaugeVec,
    gateways: prometheus::Gauge,
    gateway_creation: GaugeVec,
    sync_iterations: IntCounter,
    book: Arc<Mutex<Book>>,
    /// Held by a scrape and by the info metrics' reset-and-set, so a scrape never sees one
    /// of them missing.
    scrape: Mutex<()>,
}

impl GatewayMetrics {
    /// Creates every metric family in a fresh registry.
    pub fn new() -> Result<Self, Error> {
        let registry = Registry::new();
        let book = Arc::new(Mutex::new(Book::default()));
        register(
            &registry,
            names::CONNECTIONS,
            CableCollector::new(book.clone()),
        )?;

        Ok(Self {
            reconciles: register(
                &registry,
                names::RECONCILES_TOTAL,
                IntCounter::new(names::RECONCILES_TOTAL, "Number of reconcile runs"),
            )?,
            reconcile_errors: register(
                &registry,
                names::RECONCILE_ERRORS_TOTAL,
                IntCounter::new(
                    names::RECONCILE_ERRORS_TOTAL,
                    "Number of reconcile runs that failed",
                ),
            )?,
            repairs: register(
                &registry,
                names::REPAIRS_TOTAL,
                IntCounterVec::new(
                    Opts::new(
                        names::REPAIRS_TOTAL,
                        "Number of drifted objects repaired, by kind (device, peer, route, rule, addr)",
                    ),
                    &["what"],
                ),
            )?,
            endpoints_rejected: register(
                &registry,
                names::ENDPOINTS_REJECTED_TOTAL,
                IntCounterVec::new(
                    Opts::new(
                        names::ENDPOINTS_REJECTED_TOTAL,
                        "Number of endpoints refused, by reason",
                    ),
                    &["reason"],
                ),
            )?,
            peers: register(
                &registry,
                names::PEERS,
                IntGauge::new(
                    names::PEERS,
                    "Number of WireGuard peers configured on the device",
                ),
            )?,
            broker_healthy: register(
                &registry,
                names::BROKER_HEALTHY,
                IntGaugeVec::new(
                    Opts::new(
                        names::BROKER_HEALTHY,
                        "1 while the endpoint source (broker) is reachable, 0 while it is not (tunnels stay in place either way)",
                    ),
                    &["broker"],
                ),
            )?,
            broker_operations: register(
                &registry,
                names::BROKER_OPERATIONS_TOTAL,
                IntCounterVec::new(
                    Opts::new(
                        names::BROKER_OPERATIONS_TOTAL,
                        "Operations of the endpoint source (broker), by kind (etcd: relist = full listing, watch = watch opened, ignored_key = key outside the layout seen)",
                    ),
                    &["broker", "operation"],
                ),
            )?,
            backend: register(
                &registry,
                names::BACKEND_INFO,
                IntGaugeVec::new(
                    Opts::new(
                        names::BACKEND_INFO,
                        "WireGuard backend in use (kernel or userspace); always 1",
                    ),
                    &["backend"],
                ),
            )?,
            build_info: register(
                &registry,
                names::BUILD_INFO,
                IntGaugeVec::new(
                    Opts::new(
                        names::BUILD_INFO,
                        "Version and git commit of the running wgcable; always 1",
                    ),
                    &["version", "git_commit"],
                ),
            )?,
            gateways: register(
                &registry,
                names::GATEWAYS,
                prometheus::Gauge::new(names::GATEWAYS, "Number of gateways"),
            )?,
            gateway_creation: gauge_vec(
                &registry,
                names::GATEWAY_CREATION_TIMESTAMP,
                "Timestamp of gateway creation time",
                &["local_cluster", "local_hostname"],
            )?,
            sync_iterations: register(
                &registry,
                names::GATEWAY_SYNC_ITERATIONS,
                IntCounter::new(
                    names::GATEWAY_SYNC_ITERATIONS,
                    "Gateway synchronization iterations",
                ),
            )?,
            registry,
            book,
            scrape: Mutex::new(()),
        }
        .with_known_counters())
    }

    /// Creates the counters of every known label value at 0, and the build info of this
    /// library's version until the binary says more with [`Self::set_build_info`].
    fn with_known_counters(self) -> Self {
        for what in REPAIR_KINDS {
            self.repairs.with_label_values(&[what]);
        }
        for reason in REJECTION_REASONS {
            self.endpoints_rejected.with_label_values(&[reason]);
        }
        self.set_build_info(env!("CARGO_PKG_VERSION"), "unknown");
        self
    }

    /// The registry holding every metric of this instance.
    ///
    /// The cable series are consistent however they are gathered (their collector renders them
    /// under the book's lock); gathering directly skips only the lock [`Self::encode_text`]
    /// takes for the info metrics' reset-and-set, so prefer `encode_text`.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Records everything a status poll learned about a cable, under one lock and with one
    /// lookup of the cable: the same as [`Self::set_connection_status`],
    /// [`Self::set_traffic`], [`Self::set_established`] and [`Self::set_last_handshake_age`].
    pub fn record_poll(&self, cable: &CableLabels, poll: &CablePoll) {
        let mut book = self.book();
        let values = entry(&mut book, cable);
        // Byte counts above 2^53 lose precision as f64; Prometheus stores every sample as f64.
        values.rx_bytes = Some(poll.rx_bytes as f64);
        values.tx_bytes = Some(poll.tx_bytes as f64);
        if let Some(t) = poll.established {
            values.established = Some(t);
        }
        if let Some(age) = poll.last_handshake_age {
            values.last_handshake_age = Some(age);
        }
        let status = poll.status.as_str();
        let previous = values.status.replace(status);
        self.count_transition(&mut book, cable, previous, Some(status));
    }

    /// Records a cable's current status: exactly one `submariner_connections` series per cable,
    /// and `submariner_connections_short` recounted.
    pub fn set_connection_status(&self, cable: &CableLabels, status: ConnectionStatus) {
        let status = status.as_str();
        let mut book = self.book();
        let previous = entry(&mut book, cable).status.replace(status);
        self.count_transition(&mut book, cable, previous, Some(status));
    }

    /// Records the bytes received and transmitted over a cable (WireGuard's counters).
    pub fn set_traffic(&self, cable: &CableLabels, rx_bytes: u64, tx_bytes: u64) {
        let mut book = self.book();
        let values = entry(&mut book, cable);
        values.rx_bytes = Some(rx_bytes as f64);
        values.tx_bytes = Some(tx_bytes as f64);
    }

    /// Records the unix time (seconds) of the first handshake of the cable's current connection.
    pub fn set_established(&self, cable: &CableLabels, unix_seconds: f64) {
        entry(&mut self.book(), cable).established = Some(unix_seconds);
    }

    /// Records the latest round-trip time over the cable.
    pub fn set_latency(&self, cable: &CableLabels, seconds: f64) {
        entry(&mut self.book(), cable).latency = Some(seconds);
    }

    /// Records how long ago the cable's latest WireGuard handshake was.
    pub fn set_last_handshake_age(&self, cable: &CableLabels, seconds: f64) {
        entry(&mut self.book(), cable).last_handshake_age = Some(seconds);
    }

    /// Removes every series of a cable and recounts `submariner_connections_short`.
    pub fn remove_cable(&self, cable: &CableLabels) {
        let mut book = self.book();
        if let Some(values) = book.cables.remove(cable) {
            self.count_transition(&mut book, cable, values.status, None);
        }
    }

    /// Counts a reconcile run.
    pub fn inc_reconcile(&self) {
        self.reconciles.inc();
    }

    /// Counts a failed reconcile run.
    pub fn inc_reconcile_error(&self) {
        self.reconcile_errors.inc();
    }

    /// Counts a drift repair of one kind: "device", "peer", "route", "rule", "addr".
    ///
    /// Anything that is not a short lowercase word is counted as "other".
    pub fn inc_repair(&self, what: &str) {
        self.repairs.with_label_values(&[fixed_word(what)]).inc();
    }

    /// Counts an endpoint refused for `reason`, a short fixed word such as "unparsable".
    ///
    /// Anything that is not a short lowercase word is counted as "other".
    pub fn inc_endpoint_rejected(&self, reason: &str) {
        self.endpoints_rejected
            .with_label_values(&[fixed_word(reason)])
            .inc();
    }

    /// Creates the rejection counters of `reasons` at 0 (the admission layer's reason codes,
    /// which this crate does not know), so that alerts on them work before the first one.
    pub fn preregister_rejections<'a>(&self, reasons: impl IntoIterator<Item = &'a str>) {
        for reason in reasons {
            self.endpoints_rejected
                .with_label_values(&[fixed_word(reason)]);
        }
    }

    /// Records whether the endpoint source `broker` (`file`, `kubernetes`, `etcd`) is
    /// reachable.
    pub fn set_broker_healthy(&self, broker: &str, healthy: bool) {
        self.broker_healthy
            .with_label_values(&[fixed_word(broker)])
            .set(i64::from(healthy));
    }

    /// Records the totals an endpoint source reports (see `EndpointSource::counters`): each
    /// counter is brought up to its total; a total below the exported value (a source that
    /// started over) leaves the counter as it is.
    pub fn set_broker_operations(&self, broker: &str, totals: &[(&str, u64)]) {
        for (operation, total) in totals {
            let counter = self
                .broker_operations
                .with_label_values(&[fixed_word(broker), fixed_word(operation)]);
            let delta = total.saturating_sub(counter.get());
            if delta > 0 {
                counter.inc_by(delta);
            }
        }
    }

    /// Records the number of peers configured on the device.
    pub fn set_peers(&self, n: usize) {
        self.peers.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Records the WireGuard backend in use ("kernel" or "userspace"); only the latest is exported.
    pub fn set_backend(&self, backend: &str) {
        let _scrape = self.scrape.lock().unwrap_or_else(PoisonError::into_inner);
        self.backend.reset();
        self.backend
            .with_label_values(&[fixed_word(backend)])
            .set(1);
    }

    /// Records the running binary's version and git commit (`wgcable_build_info`); only the
    /// latest is exported. Values other than short version-like text are exported as "other".
    pub fn set_build_info(&self, version: &str, git_commit: &str) {
        let _scrape = self.scrape.lock().unwrap_or_else(PoisonError::into_inner);
        self.build_info.reset();
        self.build_info
            .with_label_values(&[version_text(version), version_text(git_commit)])
            .set(1);
    }

    /// Records the number of gateways of the local cluster this gateway knows of
    /// (`submariner_gateways`): 1 for itself once it runs. Zero also drops the creation
    /// timestamps, as upstream does.
    pub fn set_gateways(&self, count: usize) {
        self.gateways.set(count as f64);
        if count == 0 {
            self.gateway_creation.reset();
        }
    }

    /// Records when the gateway of `local_cluster` on `local_hostname` was created
    /// (`submariner_gateway_creation_timestamp`, unix seconds).
    pub fn set_gateway_creation_timestamp(
        &self,
        local_cluster: &str,
        local_hostname: &str,
        unix_seconds: f64,
    ) {
        self.gateway_creation
            .with_label_values(&[local_cluster, local_hostname])
            .set(unix_seconds);
    }

    /// Counts one gateway status synchronisation (`submariner_gateway_sync_iterations`):
    /// upstream's syncer counts each refresh of its Gateway object, every 5 s.
    pub fn inc_gateway_sync(&self) {
        self.sync_iterations.inc();
    }

    /// Gathers every metric and writes it in the Prometheus text format.
    pub fn encode_text(&self) -> Result<String, Error> {
        let families = {
            let _scrape = self.scrape.lock().unwrap_or_else(PoisonError::into_inner);
            self.registry.gather()
        };
        let mut text = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&families, &mut text)
            .map_err(|source| Error::Encode { source })?;
        Ok(text)
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        lock(&self.book)
    }

    /// A cable's status went from `previous` to `status` (`None`: the cable is new, or gone):
    /// the `submariner_connections_short` (driver, status) and `submariner_requested_connections`
    /// (local, remote, status) counts it is part of change by one each. A series exists only
    /// while its count is at least one, as Submariner exports them.
    fn count_transition(
        &self,
        book: &mut Book,
        cable: &CableLabels,
        previous: Option<&'static str>,
        status: Option<&'static str>,
    ) {
        if previous == status {
            return;
        }
        let short = |status| (cable.cable_driver.clone(), status);
        // submariner_requested_connections: upstream's operator counts each connection of each
        // Gateway by (local, remote, status); here the gateway counts its own cables.
        let requested = |status| {
            (
                cable.local_cluster.clone(),
                cable.local_hostname.clone(),
                cable.remote_cluster.clone(),
                cable.remote_hostname.clone(),
                status,
            )
        };
        if let Some(p) = previous {
            decrement(&mut book.short_counts, &short(p));
            decrement(&mut book.requested_counts, &requested(p));
        }
        if let Some(s) = status {
            *book.short_counts.entry(short(s)).or_default() += 1;
            *book.requested_counts.entry(requested(s)).or_default() += 1;
        }
    }
}

/// The values of `cable`, a new record if it had none.
fn entry<'a>(book: &'a mut Book, cable: &CableLabels) -> &'a mut CableValues {
    // Looked up before inserting: a status poll finds every cable known, and cloning the
    // labels for the lookup each time would cost seven allocations a cable.
    if !book.cables.contains_key(cable) {
        book.cables.insert(cable.clone(), CableValues::default());
    }
    book.cables.get_mut(cable).expect("inserted above")
}

/// Counts one fewer under `key`; a count that reaches zero is removed (its series with it).
fn decrement<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, u32>, key: &K) {
    match counts.get_mut(key) {
        Some(n) if *n > 1 => *n -= 1,
        _ => {
            counts.remove(key);
        }
    }
}

/// Keeps label values that are meant to be fixed words from carrying anything else: a path, an
/// error message or a key passed by mistake would leak and multiply series.
fn fixed_word(word: &str) -> &str {
    let is_word = !word.is_empty()
        && word.len() <= MAX_WORD_LEN
        && word
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if is_word {
        word
    } else {
        OTHER_WORD
    }
}

/// Keeps build-info label values to version-like text (`0.1.0`, `1.2.3-rc.1+abc`, a commit
/// hash); anything else is exported as "other".
fn version_text(value: &str) -> &str {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+' | b'_'));
    if ok {
        value
    } else {
        OTHER_WORD
    }
}

fn requested_values(key: &RequestedKey) -> [&str; 5] {
    [&key.0, &key.1, &key.2, &key.3, key.4]
}

fn gauge_vec(
    registry: &Registry,
    name: &'static str,
    help: &str,
    labels: &[&str],
) -> Result<GaugeVec, Error> {
    register(registry, name, GaugeVec::new(Opts::new(name, help), labels))
}

fn register<C>(
    registry: &Registry,
    name: &'static str,
    created: prometheus::Result<C>,
) -> Result<C, Error>
where
    C: Collector + Clone + 'static,
{
    let collector = created.map_err(|source| Error::CreateMetric { name, source })?;
    registry
        .register(Box::new(collector.clone()))
        .map_err(|source| Error::RegisterMetric { name, source })?;
    Ok(collector)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::prom_text::{self, Scrape};

    const PER_CABLE: [&str; 5] = [
        names::CONNECTION_ESTABLISHED_TIMESTAMP,
        names::GATEWAY_RX_BYTES,
        names::GATEWAY_TX_BYTES,
        names::CONNECTION_LATENCY_SECONDS,
        names::CONNECTION_LAST_HANDSHAKE_AGE_SECONDS,
    ];

    fn cable(remote_cluster: &str, remote_ip: &str) -> CableLabels {
        CableLabels {
            cable_driver: "wireguard".to_owned(),
            local_cluster: "east".to_owned(),
            local_hostname: "gw-east-1".to_owned(),
            local_endpoint_ip: "198.51.100.1".to_owned(),
            remote_cluster: remote_cluster.to_owned(),
            remote_hostname: format!("gw-{remote_cluster}-1"),
            remote_endpoint_ip: remote_ip.to_owned(),
        }
    }

    fn labels(cable: &CableLabels) -> Vec<(&'static str, &str)> {
        CABLE_LABEL_NAMES.into_iter().zip(cable.values()).collect()
    }

    fn with_status<'a>(cable: &'a CableLabels, status: &'a str) -> Vec<(&'static str, &'a str)> {
        let mut labels = labels(cable);
        labels.push((STATUS_LABEL, status));
        labels
    }

    fn scraped(metrics: &GatewayMetrics) -> Scrape {
        let text = metrics.encode_text().expect("metrics encode");
        prom_text::parse(&text).expect("our own output parses")
    }

    /// The `status` of every `submariner_connections` series of `cable`.
    fn statuses_of(scrape: &Scrape, cable: &CableLabels) -> Vec<String> {
        scrape
            .series(names::CONNECTIONS)
            .into_iter()
            .filter(|s| {
                labels(cable)
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.labels[STATUS_LABEL].clone())
            .collect()
    }

    /// `(cable_driver, status) -> count` of `submariner_connections_short`.
    fn short_counts(scrape: &Scrape) -> BTreeMap<(String, String), f64> {
        scrape
            .series(names::CONNECTIONS_SHORT)
            .into_iter()
            .map(|s| {
                assert_eq!(
                    s.labels.len(),
                    2,
                    "short series carry only two labels: {s:?}"
                );
                (
                    (
                        s.labels["cable_driver"].clone(),
                        s.labels[STATUS_LABEL].clone(),
                    ),
                    s.value,
                )
            })
            .collect()
    }

    fn short(entries: &[(&str, &str, f64)]) -> BTreeMap<(String, String), f64> {
        entries
            .iter()
            .map(|(d, s, n)| (((*d).to_owned(), (*s).to_owned()), *n))
            .collect()
    }

    use std::collections::BTreeMap;

    #[test]
    fn records_a_connection_with_submariner_names_labels_and_help() {
        let metrics = GatewayMetrics::new().expect("metrics register");
        let c = cable("west", "203.0.113.7");
        metrics.set_connection_status(&c, ConnectionStatus::Connected);
        metrics.set_traffic(&c, 1_234, 5_678);
        metrics.set_established(&c, 1_700_000_000.0);
        metrics.set_latency(&c, 0.012);
        metrics.set_last_handshake_age(&c, 17.0);

        let scrape = scraped(&metrics);
        assert_eq!(
            scrape.value(names::CONNECTIONS, &with_status(&c, "connected")),
            Some(1.0)
        );
        assert_eq!(scrape.series(names::CONNECTIONS).len(), 1);
        assert_eq!(
            short_counts(&scrape),
            short(&[("wireguard", "connected", 1.0)])
        );
        for (name, value) in [
            (names::GATEWAY_RX_BYTES, 1_234.0),
            (names::GATEWAY_TX_BYTES, 5_678.0),
            (names::CONNECTION_ESTABLISHED_TIMESTAMP, 1_700_000_000.0),
            (names::CONNECTION_LATENCY_SECONDS, 0.012),
            (names::CONNECTION_LAST_HANDSHAKE_AGE_SECONDS, 17.0),
        ] {
            assert_eq!(scrape.value(name, &labels(&c)), Some(value), "{name}");
            assert_eq!(scrape.series(name).len(), 1, "{name}");
            assert_eq!(scrape.types[name], "gauge", "{name}");
        }
        // Submariner's help texts, so `# HELP` lines match what dashboards were built against.
        for (name, help) in [
            (
                names::CONNECTIONS,
                "Number of connections and corresponding status (by cable driver and cable)",
            ),
            (
                names::CONNECTIONS_SHORT,
                "Summary of connections and corresponding status without cable information",
            ),
            (
                names::GATEWAY_RX_BYTES,
                "Count of bytes received (by cable driver and cable)",
            ),
            (
                names::GATEWAY_TX_BYTES,
                "Count of bytes transmitted (by cable driver and cable)",
            ),
            (
                names::CONNECTION_ESTABLISHED_TIMESTAMP,
                "Timestamp of last successful connection established (by cable driver and cable)",
            ),
            (
                names::CONNECTION_LATENCY_SECONDS,
                "Connection latency in seconds (last RTT, by cable driver and cable)",
            ),
        ] {
            assert_eq!(scrape.help[name], help, "{name}");
        }
    }

    #[test]
    fn broker_operations_follow_the_source_totals_and_never_go_back() {
        let metrics = GatewayMetrics::new().expect("metrics register");
        let value = |m: &GatewayMetrics, op: &str| {
            scraped(m).value(
                names::BROKER_OPERATIONS_TOTAL,
                &[("broker", "etcd"), ("operation", op)],
            )
        };
        metrics.set_broker_operations("etcd", &[("relist", 1), ("watch", 3)]);
        assert_eq!(value(&metrics, "relist"), Some(1.0));
        assert_eq!(value(&metrics, "watch"), Some(3.0));
        metrics.set_broker_operations("etcd", &[("relist", 1), ("watch", 5)]);
        assert_eq!(value(&metrics, "watch"), Some(5.0));
        // A total below what was exported (a source that started over) changes nothing.
        metrics.set_broker_operations("etcd", &[("watch", 2)]);
        assert_eq!(value(&metrics, "watch"), Some(5.0));
        assert_eq!(
            scraped(&metrics).types[names::BROKER_OPERATIONS_TOTAL],
            "counter"
        );
        // Labels stay words: anything else is "other".
        metrics.set_broker_operations("etcd", &[("Not A Word", 1)]);
        assert_eq!(value(&metrics, OTHER_WORD), Some(1.0));
    }

    #[test]
    fn a_status_transition_leaves_exactly_one_series() {
        use ConnectionStatus::{Connected, Connecting, Error as Failed, None as Unset};
        let metrics = GatewayMetrics::new().expect("metrics register");
        let c = cable("west", "203.0.113.7");
        for status in [
            Connecting, Connecting, Connected, Failed, Connected, Unset, Connecting,
        ] {
            metrics.set_connection_status(&c, status);
            let scrape = scraped(&metrics);
            assert_eq!(statuses_of(&scrape, &c), vec![status.as_str().to_owned()]);
            assert_eq!(scrape.series(names::CONNECTIONS).len(), 1);
            assert_eq!(
                short_counts(&scrape),
                short(&[("wireguard", status.as_str(), 1.0)]),
                "after {}",
                status.as_str()
            );
        }
    }

    #[test]
    fn a_scrape_during_transitions_never_sees_a_cable_missing_or_doubled() {
        let metrics = GatewayMetrics::new().expect("metrics register");
        let c = cable("west", "203.0.113.7");
        metrics.set_connection_status(&c, ConnectionStatus::Connected);
        std::thread::scope(|scope| {
            let flipper = scope.spawn(|| {
                for i in 0..2_000 {
                    let status = if i % 2 == 0 {
                        ConnectionStatus::Error
                    } else {
                        ConnectionStatus::Connected
                    };
                    metrics.set_connection_status(&c, status);
                }
            });
            while !flipper.is_finished() {
                let scrape = scraped(&metrics);
                assert_eq!(scrape.series(names::CONNECTIONS).len(), 1);
                assert_eq!(short_counts(&scrape).values().sum::<f64>(), 1.0);
            }
        });
    }

    #[test]
    fn short_counts_follow_every_cable_per_driver_and_status() {
        let metrics = GatewayMetrics::new().expect("metrics register");
        let west = cable("west", "203.0.113.7");
        let north = cable("north", "203.0.113.8");
        let mut south = cable("south", "203.0.113.9");
        south.cable_driver = "libreswan".to_owned();

        metrics.set_connection_status(&west, ConnectionStatus::Connected);
        metrics.set_connection_status(&north, ConnectionStatus::Error);
        metrics.set_connection_status(&south, ConnectionStatus::Connected);
        assert_eq!(
            short_counts(&scraped(&metrics)),
            short(&[
                ("libreswan", "connected", 1.0),
                ("wireguard", "connected", 1.0),
                ("wireguard", "error", 1.0),
            ])
        );

        // Recovering the failed cable folds the counts together and drops the `error` series.
        metrics.set_connection_status(&north, ConnectionStatus::Connected);
        assert_eq!(
            short_counts(&scraped(&metrics)),
            short(&[
                ("libreswan", "connected", 1.0),
                ("wireguard", "connected", 2.0)
            ])
        );
    }

    #[test]
    fn removing_a_cable_removes_every_series_and_fixes_the_short_counts() {
        let metrics = GatewayMetrics::new().expect("metrics register");
        let west = cable("west", "203.0.113.7");
        let north = cable("north", "203.0.113.8");
        for c in [&west, &north] {
            metrics.set_connection_status(c, ConnectionStatus::Connected);
            metrics.set_traffic(c, 10, 20);
            metrics.set_established(c, 1_700_000_000.0);
            metrics.set_latency(c, 0.01);
            metrics.set_last_handshake_age(c, 3.0);
        }

        metrics.remove_cable(&west);
        let scrape = scraped(&metrics);
        assert!(statuses_of(&scrape, &west).is_empty());
        assert_eq!(statuses_of(&scrape, &north), vec!["connected".to_owned()]);
        for name in PER_CABLE {
            assert_eq!(scrape.value(name, &labels(&west)), None, "{name}");
            assert_eq!(scrape.series(name).len(), 1, "{name} keeps north's series");
        }
        assert_eq!(
            short_counts(&scrape),
            short(&[("wireguard", "connected", 1.0)])
        );

        metrics.remove_cable(&north);
        // Removing twice, or a cable never recorded, is harmless.
        metrics.remove_cable(&north);
        metrics.remove_cable(&cable("nowhere", "192.0.2.1"));
        let scrape = scraped(&metrics);
        for name in PER_CABLE.into_iter().chain([
            names::CONNECTIONS,
            names::CONNECTIONS_SHORT,
            names::REQUESTED_CONNECTIONS,
        ]) {
            assert!(
                scrape.series(name).is_empty(),
                "{name}: {:?}",
                scrape.series(name)
            );
        }
    }

    #[test]
    fn record_poll_is_the_same_as_the_separate_setters() {
        let by_poll = GatewayMetrics::new().expect("metrics register");
        let by_setters = GatewayMetrics::new().expect("metrics register");
        let west = cable("west", "203.0.113.7");
        let polls = [
            CablePoll {
                status: ConnectionStatus::Connecting,
                rx_bytes: 0,
                tx_bytes: 148,
                established: None,
                last_handshake_age: None,
            },
            CablePoll {
                status: ConnectionStatus::Connected,
                rx_bytes: 92,
                tx_bytes: 296,
                established: Some(1_700_000_000.0),
                last_handshake_age: Some(2.0),
            },
            CablePoll {
                status: ConnectionStatus::Connected,
                rx_bytes: 184,
                tx_bytes: 444,
                established: Some(1_700_000_000.0),
                last_handshake_age: Some(7.0),
            },
        ];
        for poll in &polls {
            by_poll.record_poll(&west, poll);
            by_setters.set_connection_status(&west, poll.status);
            by_setters.set_traffic(&west, poll.rx_bytes, poll.tx_bytes);
            if let Some(t) = poll.established {
                by_setters.set_established(&west, t);
            }
            if let Some(a) = poll.last_handshake_age {
                by_setters.set_last_handshake_age(&west, a);
            }
            assert_eq!(
                by_poll.encode_text().expect("encode"),
                by_setters.encode_text().expect("encode")
            );
        }
        by_poll.remove_cable(&west);
        let scrape = scraped(&by_poll);
        for name in PER_CABLE {
            assert!(scrape.series(name).is_empty(), "{name}");
        }
        // A cable polled again after removal gets fresh series.
        by_poll.record_poll(&west, &polls[2]);
        assert_eq!(
            statuses_of(&scraped(&by_poll), &west),
            vec!["connected".to_owned()]
        );
        assert_eq!(
            scraped(&by_poll).value(names::GATEWAY_RX_BYTES, &labels(&west)),
            Some(184.0)
        );
    }

    #[test]
    fn removing_a_cable_that_only_has_traffic_removes_it_too() {
        let metrics = GatewayMetrics::new().expect("metrics register");
        let c = cable("west", "203.0.113.7");
        metrics.set_traffic(&c, 1, 2);
        assert_eq!(scraped(&metrics).series(names::GATEWAY_RX_BYTES).len(), 1);
        metrics.remove_cable(&c);
        let scrape = scraped(&metrics);
        assert!(scrape.series(names::GATEWAY_RX_BYTES).is_empty());
        assert!(scrape.series(names::GATEWAY_TX_BYTES).is_empty());
    }

    #[test]
    fn two_instances_do_not_interfere() {
        let first = GatewayMetrics::new().expect("metrics register");
        let second = GatewayMetrics::new().expect("a second instance registers too");
        let c = cable("west", "203.0.113.7");
        first.set_connection_status(&c, ConnectionStatus::Connected);
        first.set_traffic(&c, 5, 6);
        first.inc_reconcile();
        first.set_backend("kernel");
        second.set_connection_status(&c, ConnectionStatus::Error);
        second.set_backend("userspace");

        let (a, b) = (scraped(&first), scraped(&second));
        assert_eq!(statuses_of(&a, &c), vec!["connected".to_owned()]);
        assert_eq!(statuses_of(&b, &c), vec!["error".to_owned()]);
        assert_eq!(a.value(names::GATEWAY_RX_BYTES, &labels(&c)), Some(5.0));
        assert!(b.series(names::GATEWAY_RX_BYTES).is_empty());
        assert_eq!(a.value(names::RECONCILES_TOTAL, &[]), Some(1.0));
        assert_eq!(b.value(names::RECONCILES_TOTAL, &[]), Some(0.0));
        assert_eq!(
            a.value(names::BACKEND_INFO, &[("backend", "kernel")]),
            Some(1.0)
        );
        assert_eq!(
            b.value(names::BACKEND_INFO, &[("backend", "userspace")]),
            Some(1.0)
        );
    }

    #[test]
    fn operator_metrics_count_and_keep_one_backend() {
        let metrics = GatewayMetrics::new().expect("metrics register");
        for _ in 0..3 {
            metrics.inc_reconcile();
        }
        metrics.inc_reconcile_error();
        for what in ["peer", "route", "route", "rule", "addr", "device"] {
            metrics.inc_repair(what);
        }
        metrics.inc_endpoint_rejected("unparsable");
        metrics.inc_endpoint_rejected("unparsable");
        metrics.inc_endpoint_rejected("bad_key");
        metrics.set_peers(7);
        metrics.set_backend("kernel");
        metrics.set_backend("userspace");

        let scrape = scraped(&metrics);
        assert_eq!(scrape.value(names::RECONCILES_TOTAL, &[]), Some(3.0));
        assert_eq!(scrape.value(names::RECONCILE_ERRORS_TOTAL, &[]), Some(1.0));
        assert_eq!(scrape.types[names::RECONCILES_TOTAL], "counter");
        for (what, n) in [
            ("peer", 1.0),
            ("route", 2.0),
            ("rule", 1.0),
            ("addr", 1.0),
            ("device", 1.0),
        ] {
            assert_eq!(
                scrape.value(names::REPAIRS_TOTAL, &[("what", what)]),
                Some(n),
                "{what}"
            );
        }
        assert_eq!(
            scrape.value(names::ENDPOINTS_REJECTED_TOTAL, &[("reason", "unparsable")]),
            Some(2.0)
        );
        assert_eq!(
            scrape.value(names::ENDPOINTS_REJECTED_TOTAL, &[("reason", "bad_key")]),
            Some(1.0)
        );
        assert_eq!(scrape.value(names::PEERS, &[]), Some(7.0));
        assert_eq!(
            scrape.series(names::BACKEND_INFO),
            vec![&prom_text::Sample {
                name: names::BACKEND_INFO.to_owned(),
                labels: [("backend".to_owned(), "userspace".to_owned())].into(),
                value: 1.0,
            }]
        );
    }

    #[test]
    fn labels_carry_only_the_values_set() {
        let metrics = GatewayMetrics::new().expect("metrics register");
        let c = cable("west", "2001:db8::7");
        metrics.set_connection_status(&c, ConnectionStatus::Connecting);
        metrics.set_traffic(&c, 1, 2);
        metrics.set_established(&c, 1.0);
        metrics.set_latency(&c, 1.0);
        metrics.set_last_handshake_age(&c, 1.0);
        metrics.inc_repair("peer");
        metrics.inc_endpoint_rejected("unparsable");
        metrics.set_backend("kernel");
        // Free text where a fixed word belongs (a key pasted by mistake, a path, an error
        // message) is counted as "other" instead of leaking into a label.
        let key_like = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
        metrics.inc_endpoint_rejected(key_like);
        metrics.inc_repair("/etc/wgcable/endpoints/west.yaml");
        metrics.set_backend("Kernel Module Missing: EOPNOTSUPP");

        let text = metrics.encode_text().expect("metrics encode");
        assert!(!text.contains(key_like));
        let scrape = prom_text::parse(&text).expect("our own output parses");
        let seen: BTreeSet<&str> = scrape
            .samples
            .iter()
            .flat_map(|s| s.labels.values().map(String::as_str))
            .collect();
        let expected: BTreeSet<&str> = c
            .values()
            .into_iter()
            .chain(["connecting", "peer", "unparsable", "other"])
            // Pre-registered at 0, and the build info.
            .chain(REPAIR_KINDS)
            .chain(REJECTION_REASONS)
            .chain([env!("CARGO_PKG_VERSION"), "unknown"])
            .collect();
        assert_eq!(seen, expected);
        assert_eq!(
            scrape.value(names::ENDPOINTS_REJECTED_TOTAL, &[("reason", "other")]),
            Some(1.0)
        );
        assert_eq!(scrape.series(names::BACKEND_INFO).len(), 1);
        assert_eq!(
            scrape.value(names::BACKEND_INFO, &[("backend", "other")]),
            Some(1.0)
        );
    }

    #[test]
    fn fixed_words_accept_short_lowercase_words_only() {
        for (input, expected) in [
            ("route", "route"),
            ("bad_key", "bad_key"),
            ("wrong-cluster", "wrong-cluster"),
            ("ipv6", "ipv6"),
            ("", OTHER_WORD),
            ("Route", OTHER_WORD),
            ("two words", OTHER_WORD),
            ("a/b", OTHER_WORD),
            (
                "x".repeat(MAX_WORD_LEN).as_str(),
                "x".repeat(MAX_WORD_LEN).as_str(),
            ),
            ("x".repeat(MAX_WORD_LEN + 1).as_str(), OTHER_WORD),
        ] {
            assert_eq!(fixed_word(input), expected, "{input:?}");
        }
    }

    #[test]
    fn label_values_with_quotes_and_newlines_survive_the_text_format() {
        let metrics = GatewayMetrics::new().expect("metrics register");
        let mut c = cable("west", "203.0.113.7");
        c.remote_hostname = "odd\"host\\name\nx".to_owned();
        metrics.set_connection_status(&c, ConnectionStatus::Connected);
        let scrape = scraped(&metrics);
        assert_eq!(statuses_of(&scrape, &c), vec!["connected".to_owned()]);
    }

    #[test]
    fn counters_are_exported_at_zero_before_the_first_increment() {
        let metrics = GatewayMetrics::new().expect("metrics register");
        let scrape = scraped(&metrics);
        for what in REPAIR_KINDS {
            assert_eq!(
                scrape.value(names::REPAIRS_TOTAL, &[("what", what)]),
                Some(0.0),
                "{what}"
            );
        }
        for reason in REJECTION_REASONS {
            assert_eq!(
                scrape.value(names::ENDPOINTS_REJECTED_TOTAL, &[("reason", reason)]),
                Some(0.0),
                "{reason}"
            );
        }
        assert_eq!(scrape.types[names::REPAIRS_TOTAL], "counter");
        assert_eq!(scrape.value(names::GATEWAY_SYNC_ITERATIONS, &[]), Some(0.0));
        assert_eq!(scrape.value(names::GATEWAYS, &[]), Some(0.0));
        // The known words are the ones the engine uses.
        for word in REPAIR_KINDS.into_iter().chain(REJECTION_REASONS) {
            assert_eq!(fixed_word(word), word);
        }
    }

    #[test]
    fn gateway_series_have_upstreams_names_help_types_and_labels() {
        let metrics = GatewayMetrics::new().expect("metrics register");
        metrics.set_gateways(1);
        metrics.set_gateway_creation_timestamp("east", "gw-east-1", 1_767_225_600.0);
        metrics.inc_gateway_sync();
        metrics.inc_gateway_sync();
        let west = cable("west", "203.0.113.7");
        metrics.set_connection_status(&west, ConnectionStatus::Connected);

        let scrape = scraped(&metrics);
        assert_eq!(scrape.value(names::GATEWAYS, &[]), Some(1.0));
        assert_eq!(
            scrape.value(
                names::GATEWAY_CREATION_TIMESTAMP,
                &[("local_cluster", "east"), ("local_hostname", "gw-east-1")]
            ),
            Some(1_767_225_600.0)
        );
        assert_eq!(scrape.value(names::GATEWAY_SYNC_ITERATIONS, &[]), Some(2.0));
        assert_eq!(
            scrape.value(
                names::REQUESTED_CONNECTIONS,
                &[
                    ("local_cluster", "east"),
                    ("local_hostname", "gw-east-1"),
                    ("remote_cluster", "west"),
                    ("remote_hostname", "gw-west-1"),
                    ("status", "connected"),
                ]
            ),
            Some(1.0)
        );
        for (name, kind, help) in [
            (names::GATEWAYS, "gauge", "Number of gateways"),
            (
                names::GATEWAY_CREATION_TIMESTAMP,
                "gauge",
                "Timestamp of gateway creation time",
            ),
            (
                names::GATEWAY_SYNC_ITERATIONS,
                "counter",
                "Gateway synchronization iterations",
            ),
            (
                names::REQUESTED_CONNECTIONS,
                "gauge",
                "Number of connections (by endpoint and status)",
            ),
        ] {
            assert_eq!(scrape.types[name], kind, "{name}");
            assert_eq!(scrape.help[name], help, "{name}");
        }
        // No gateway left: the creation timestamps go too, as upstream.
        metrics.set_gateways(0);
        let scrape = scraped(&metrics);
        assert!(scrape.series(names::GATEWAY_CREATION_TIMESTAMP).is_empty());
        assert_eq!(scrape.value(names::GATEWAYS, &[]), Some(0.0));
    }

    #[test]
    fn requested_connections_follow_every_status_change_and_removal() {
        let metrics = GatewayMetrics::new().expect("metrics register");
        let west = cable("west", "203.0.113.7");
        let north = cable("north", "203.0.113.8");
        let requested = |scrape: &Scrape| -> BTreeMap<(String, String), f64> {
            scrape
                .series(names::REQUESTED_CONNECTIONS)
                .into_iter()
                .map(|s| {
                    assert_eq!(s.labels.len(), 5, "{s:?}");
                    (
                        (
                            s.labels["remote_cluster"].clone(),
                            s.labels[STATUS_LABEL].clone(),
                        ),
                        s.value,
                    )
                })
                .collect()
        };
        let want = |entries: &[(&str, &str)]| -> BTreeMap<(String, String), f64> {
            entries
                .iter()
                .map(|(c, s)| (((*c).to_owned(), (*s).to_owned()), 1.0))
                .collect()
        };
        metrics.set_connection_status(&west, ConnectionStatus::Connecting);
        metrics.record_poll(
            &north,
            &CablePoll {
                status: ConnectionStatus::Connected,
                rx_bytes: 1,
                tx_bytes: 1,
                established: None,
                last_handshake_age: None,
            },
        );
        assert_eq!(
            requested(&scraped(&metrics)),
            want(&[("north", "connected"), ("west", "connecting")])
        );
        metrics.set_connection_status(&west, ConnectionStatus::Error);
        assert_eq!(
            requested(&scraped(&metrics)),
            want(&[("north", "connected"), ("west", "error")])
        );
        metrics.remove_cable(&north);
        assert_eq!(requested(&scraped(&metrics)), want(&[("west", "error")]));
    }

    #[test]
    fn cable_labels_use_each_sides_public_ip_as_upstream() {
        let local = wgcable_api::EndpointSpec {
            cluster_id: "east".into(),
            hostname: "gw-east-1".into(),
            private_ip: "192.168.77.11".into(),
            public_ip: "198.51.100.1".into(),
            ..Default::default()
        };
        let remote = wgcable_api::EndpointSpec {
            cluster_id: "west".into(),
            hostname: "gw-west-1".into(),
            private_ip: "192.168.77.12".into(),
            ..Default::default()
        };
        let labels = CableLabels::for_cable("wireguard", &local, &remote);
        assert_eq!(
            labels,
            CableLabels {
                cable_driver: "wireguard".into(),
                local_cluster: "east".into(),
                local_hostname: "gw-east-1".into(),
                local_endpoint_ip: "198.51.100.1".into(),
                remote_cluster: "west".into(),
                remote_hostname: "gw-west-1".into(),
                // No public IP published: empty, as upstream exports it.
                remote_endpoint_ip: String::new(),
            }
        );
    }

    #[test]
    fn build_info_carries_version_and_commit_and_only_the_latest() {
        let metrics = GatewayMetrics::new().expect("metrics register");
        let scrape = scraped(&metrics);
        assert_eq!(
            scrape.value(
                names::BUILD_INFO,
                &[
                    ("version", env!("CARGO_PKG_VERSION")),
                    ("git_commit", "unknown")
                ]
            ),
            Some(1.0)
        );
        metrics.set_build_info("0.1.0", "4ee870f0a1b2");
        metrics.set_build_info("0.2.0-rc.1+dirty", "4ee870f0a1b2");
        let scrape = scraped(&metrics);
        assert_eq!(
            scrape.series(names::BUILD_INFO),
            vec![&prom_text::Sample {
                name: names::BUILD_INFO.to_owned(),
                labels: [
                    ("git_commit".to_owned(), "4ee870f0a1b2".to_owned()),
                    ("version".to_owned(), "0.2.0-rc.1+dirty".to_owned())
                ]
                .into(),
                value: 1.0,
            }]
        );
        assert_eq!(scrape.types[names::BUILD_INFO], "gauge");
        metrics.set_build_info("1.0 with spaces", "{bad}");
        assert_eq!(
            scraped(&metrics).value(
                names::BUILD_INFO,
                &[("version", "other"), ("git_commit", "other")]
            ),
            Some(1.0)
        );
    }
}
