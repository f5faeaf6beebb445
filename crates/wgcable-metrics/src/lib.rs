//! Submariner-compatible Prometheus metrics and the gateway's small HTTP endpoint.
//!
//! [`GatewayMetrics`] owns its own [`prometheus::Registry`] (no process globals, so tests and
//! several engines in one process do not interfere) and exposes the series Submariner's cable
//! engine exports, with the same names, labels and help texts, so existing dashboards and alerts
//! keep working. Series of our own carry a `wgcable_` prefix.
//!
//! [`serve`] runs the HTTP endpoint (`/metrics`, `/healthz`, `/readyz`, `/connections`) and is
//! hardened against slow or malicious clients: header read timeout, whole-connection timeout,
//! bounded concurrent connections and bounded request bodies.
//!
//! This crate must NOT know about WireGuard, netlink, keys or how connection status is judged:
//! the engine decides what to record and calls the setters; the HTTP layer only reads a
//! [`GatewayState`] the engine provides. Label values are the engine's cluster ids, hostnames and
//! IPs; key material must never be handed to it.

mod http;
mod metrics;

#[cfg(test)]
mod prom_text;

pub use http::{serve, GatewayState, HttpConfig, PROMETHEUS_TEXT_CONTENT_TYPE};
pub use metrics::{names, CableLabels, CablePoll, GatewayMetrics, REJECTION_REASONS, REPAIR_KINDS};

/// The port Submariner's gateway serves metrics on unless `SUBMARINER_METRICSPORT` says otherwise.
pub const DEFAULT_METRICS_PORT: u16 = 32780;

/// The environment variable Submariner uses to override [`DEFAULT_METRICS_PORT`].
pub const METRICS_PORT_ENV: &str = "SUBMARINER_METRICSPORT";

/// Errors of the metrics registry and the HTTP endpoint.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A metric's options were rejected (a bug in this crate, caught by its tests).
    #[error("creating metric {name}")]
    CreateMetric {
        name: &'static str,
        #[source]
        source: prometheus::Error,
    },
    /// A metric could not be added to the instance's registry.
    #[error("registering metric {name} in the gateway's registry")]
    RegisterMetric {
        name: &'static str,
        #[source]
        source: prometheus::Error,
    },
    /// The gathered metrics could not be written in the Prometheus text format.
    #[error("encoding metrics in the Prometheus text format")]
    Encode {
        #[source]
        source: prometheus::Error,
    },
    /// The listener handed to [`serve`] has no local address (it is not a bound socket).
    #[error("reading the local address of the metrics listener")]
    ListenerAddr {
        #[source]
        source: std::io::Error,
    },
}
