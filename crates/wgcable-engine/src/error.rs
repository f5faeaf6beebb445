//! The engine's error type.

use wgcable_api::ValidationErrors;
use wgcable_peers::PeerError;

/// Everything the cable driver, the broker and the gateway loop can fail with.
///
/// Messages say what was being done; the cause is attached as the source, so
/// `{:#}` (anyhow) or walking `source()` gives the whole story.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration handed to the engine is unusable; nothing was changed on the host.
    #[error("invalid configuration: {message}")]
    Config {
        /// What is wrong and what to do about it.
        message: String,
    },

    /// A netlink operation (links, addresses, routes, rules) failed.
    #[error("{action}")]
    Netlink {
        /// What was being done.
        action: String,
        /// The netlink layer's error.
        #[source]
        source: Box<wgcable_netlink::Error>,
    },

    /// An operation on the WireGuard device failed.
    #[error("{action}")]
    Device {
        /// What was being done.
        action: String,
        /// The device backend's error.
        #[source]
        source: Box<wgcable_peers::Error>,
    },

    /// The WireGuard device exists but has no network link (a userspace implementation that
    /// is still starting, or a device removed while in use).
    #[error("WireGuard device {device} exists but its network link is missing; it is created again at the next resync")]
    MissingLink {
        /// The device name.
        device: String,
    },

    /// Another gateway holds the state directory (its lock file).
    #[error("another gateway{} uses state directory {}: two gateways on one state directory would share a private key; stop it, or give this one its own --state-dir", holder.map(|p| format!(" (pid {p})")).unwrap_or_default(), state_dir.display())]
    StateDirLocked {
        state_dir: std::path::PathBuf,
        /// The holder's process id, as it wrote it in the lock file.
        holder: Option<u32>,
    },

    /// The endpoint source failed (see [`wgcable_broker::SourceError`]).
    #[error("{action}")]
    Source {
        /// What was being done.
        action: String,
        #[source]
        source: wgcable_broker::SourceError,
    },

    /// The WireGuard device did not answer in time.
    #[error("WireGuard device {device} did not answer within {}s; is its userspace process stopped or wedged?", waited.as_secs())]
    DeviceTimeout {
        device: String,
        waited: std::time::Duration,
    },

    /// The private key could not be loaded or created.
    #[error("loading the gateway's private key")]
    Keys(#[source] wgcable_keys::KeyError),

    /// A remote endpoint does not validate.
    #[error("endpoint {cluster_id} is invalid")]
    InvalidEndpoint {
        /// The cluster the endpoint claims to be (may be empty).
        cluster_id: String,
        /// Every problem found.
        #[source]
        source: Box<ValidationErrors>,
    },

    /// A remote endpoint is valid on its own but was refused (own cluster, key reuse, subnet overlap...).
    #[error("endpoint {cluster_id} refused")]
    Refused {
        /// The refused cluster.
        cluster_id: String,
        /// Why it was refused.
        #[source]
        source: Box<PeerError>,
    },

    /// File-system work of the broker or the state directory failed.
    #[error("{action}")]
    Io {
        /// What was being done.
        action: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// Setting up the metrics failed.
    #[error("setting up metrics")]
    Metrics(#[source] wgcable_metrics::Error),
}

impl Error {
    pub(crate) fn netlink(
        action: impl Into<String>,
    ) -> impl FnOnce(wgcable_netlink::Error) -> Self {
        let action = action.into();
        move |source| Error::Netlink {
            action,
            source: Box::new(source),
        }
    }

    pub(crate) fn device(action: impl Into<String>) -> impl FnOnce(wgcable_peers::Error) -> Self {
        let action = action.into();
        move |source| Error::Device {
            action,
            source: Box::new(source),
        }
    }

    pub(crate) fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let action = action.into();
        move |source| Error::Io { action, source }
    }

    /// A mistake in how the gateway was started (exit code 2, like a usage error): bad
    /// configuration, a state directory another gateway holds.
    pub fn is_usage(&self) -> bool {
        matches!(self, Error::Config { .. } | Error::StateDirLocked { .. })
    }

    /// True when the error is about one remote endpoint (invalid or refused) rather than the host.
    pub fn is_endpoint_error(&self) -> bool {
        matches!(self, Error::InvalidEndpoint { .. } | Error::Refused { .. })
    }
}

/// Formats an error and all its causes on one line, for logs: `a: b: c` (the workspace's one
/// formatter, [`wgcable_api::error_chain`]).
pub use wgcable_api::error_chain as chain;
