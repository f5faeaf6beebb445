//! The WireGuard device seam: what a backend can do with a device, in our own types.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::SystemTime;

use async_trait::async_trait;
use ipnet::IpNet;
use wgcable_keys::{PresharedKey, PrivateKey, PublicKey};

use crate::Error;

/// Which implementation carries a device's data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// A netlink link of kind `wireguard`, configured over WireGuard's generic netlink family.
    Kernel,
    /// A separate process (e.g. `wireguard-go`) configured over its control socket.
    Userspace,
}

impl BackendKind {
    /// The name used in configuration, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Kernel => "kernel",
            BackendKind::Userspace => "userspace",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which backend the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BackendPreference {
    /// The backend that owns an existing device, else kernel when it can create a wireguard
    /// link, else userspace.
    #[default]
    Auto,
    /// Kernel only.
    Kernel,
    /// Userspace only.
    Userspace,
}

impl fmt::Display for BackendPreference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendPreference::Auto => "auto",
            BackendPreference::Kernel => "kernel",
            BackendPreference::Userspace => "userspace",
        })
    }
}

/// The text was not one of `auto`, `kernel`, `userspace`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown WireGuard backend {0:?}: expected one of auto, kernel, userspace")]
pub struct ParseBackendError(pub String);

impl FromStr for BackendPreference {
    type Err = ParseBackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(BackendPreference::Auto),
            "kernel" => Ok(BackendPreference::Kernel),
            "userspace" => Ok(BackendPreference::Userspace),
            _ => Err(ParseBackendError(s.to_owned())),
        }
    }
}

/// The configuration of one peer, as we want it or as the device reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub public_key: PublicKey,
    /// `None`: no endpoint known (WireGuard then waits for the peer to contact us).
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    /// Seconds; `None` (or 0 on the wire) disables persistent keepalive.
    pub persistent_keepalive: Option<u16>,
    pub preshared_key: Option<PresharedKey>,
}

/// A peer as observed on the device: its configuration and its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub config: PeerConfig,
    /// `None` when the peer never completed a handshake (both backends report time 0 then).
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// A device as observed. It deliberately holds no private key: only its public half.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStatus {
    pub name: String,
    /// `None` while no private key is configured.
    pub public_key: Option<PublicKey>,
    /// `None` while the device does not listen (no port configured yet or port 0).
    pub listen_port: Option<u16>,
    pub peers: Vec<PeerStatus>,
}

/// One change to one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerChange {
    /// Create the peer with this configuration.
    Add(PeerConfig),
    /// Set every field of an existing peer in place (its session and handshake are kept).
    /// `replace_allowed_ips` first drops the peer's current allowed IPs; it is only set when
    /// they change, because replacing them briefly leaves the peer without routes.
    Update {
        config: PeerConfig,
        replace_allowed_ips: bool,
    },
    /// Remove the peer.
    Remove(PublicKey),
}

impl PeerChange {
    /// The peer this change is about.
    pub fn public_key(&self) -> &PublicKey {
        match self {
            PeerChange::Add(config) | PeerChange::Update { config, .. } => &config.public_key,
            PeerChange::Remove(key) => key,
        }
    }
}

/// Everything to change on a device, applied in one request to the backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceUpdate {
    pub private_key: Option<PrivateKey>,
    pub listen_port: Option<u16>,
    /// Applied in order; a plan puts removals first (see [`crate::PeerPlan::to_update`]).
    pub peers: Vec<PeerChange>,
}

impl DeviceUpdate {
    /// Whether applying this would change nothing.
    pub fn is_empty(&self) -> bool {
        self.private_key.is_none() && self.listen_port.is_none() && self.peers.is_empty()
    }
}

/// A WireGuard device backend: creates, reads, configures and deletes devices by name.
///
/// Implementations run their blocking I/O off the async runtime, and never log or return key
/// material.
#[cfg_attr(any(test, feature = "testing"), mockall::automock)]
#[async_trait]
pub trait WgDevice: Send + Sync {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;

    /// Makes sure the device exists (it is not configured, and not brought up). Returns whether
    /// it had to be created.
    async fn ensure(&self, name: &str) -> Result<bool, Error>;

    /// Reads the device; `None` when there is no such device.
    async fn read(&self, name: &str) -> Result<Option<DeviceStatus>, Error>;

    /// Applies every change in `update` as one request (a kernel backend may split it into
    /// several netlink messages, but never into one call per peer).
    async fn apply(&self, name: &str, update: &DeviceUpdate) -> Result<(), Error>;

    /// Deletes the device; a device that does not exist is not an error.
    async fn delete(&self, name: &str) -> Result<(), Error>;
}

// So that holders of a `Box<dyn WgDevice>` can derive Debug. Opaque on purpose: calling into
// the device (even `kind`) from a Debug impl would surprise a mock.
impl fmt::Debug for dyn WgDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WgDevice { .. }")
    }
}

/// Checks a device name against the kernel's rules for interface names, so a bad name fails
/// with a clear message before any process or socket is involved (and never builds a path
/// outside the socket directory).
pub(crate) fn validate_device_name(name: &str) -> Result<(), Error> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 15 {
        Some("it is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("it is reserved")
    } else if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control())
    {
        Some("it contains '/', ':', whitespace or a control character")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidDeviceName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Runs blocking work (control socket, generic netlink, /proc) on tokio's blocking pool, for
/// both backends.
pub(crate) async fn blocking<T, F>(device: &str, op: &'static str, work: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Error> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|source| Error::Task {
            device: device.to_owned(),
            op,
            source,
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_preference_parses_and_prints() {
        for (text, pref) in [
            ("auto", BackendPreference::Auto),
            ("kernel", BackendPreference::Kernel),
            ("userspace", BackendPreference::Userspace),
            (" Kernel ", BackendPreference::Kernel),
        ] {
            assert_eq!(text.parse::<BackendPreference>(), Ok(pref), "{text}");
        }
        assert_eq!(BackendPreference::Userspace.to_string(), "userspace");
        let err = "wg"
            .parse::<BackendPreference>()
            .expect_err("not a backend");
        assert!(err.to_string().contains("auto, kernel, userspace"), "{err}");
        assert_eq!(BackendKind::Kernel.to_string(), "kernel");
        assert_eq!(BackendKind::Userspace.to_string(), "userspace");
    }

    #[test]
    fn device_names_follow_kernel_rules() {
        for good in ["submariner", "wg0", "a", "exactly15bytes_"] {
            assert!(validate_device_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "sixteen_bytes_xx",
            ".",
            "..",
            "a/b",
            "../x",
            "a:b",
            "a b",
            "a\nb",
        ] {
            let err = validate_device_name(bad).expect_err(bad);
            assert!(
                err.to_string().contains("invalid WireGuard device name"),
                "{err}"
            );
        }
    }
}
