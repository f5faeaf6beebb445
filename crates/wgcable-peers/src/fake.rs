//! [`FakeWgDevice`]: an in-memory WireGuard device that behaves as the kernel does (feature
//! `testing`). The device contract suite ([`crate::contract`]) runs against it, against
//! `wireguard-go` and against the kernel in a VM, so it cannot drift from them.
//!
//! Modelled on the kernel's `set_peer` (drivers/net/wireguard/netlink.c), change by change:
//! - a change for an unknown key creates the peer (Add and Update alike), for a known key
//!   updates it in place (its handshake and counters survive);
//! - an Update or Add without an endpoint keeps the endpoint the peer has;
//! - the PSK and keepalive are always set (none = zeros / 0);
//! - `replace_allowed_ips` drops the peer's allowed IPs first, otherwise the new ones are
//!   added to them; an allowed IP another peer holds is taken from that peer;
//! - removing an unknown peer is not an error; removing a peer frees its allowed IPs;
//! - a peer with the device's own public key is silently ignored, and setting a private key
//!   removes the peer that has its public key;
//! - allowed IPs are stored as networks (host bits cleared), as both implementations do.
//!
//! Tests can set handshakes and counters ([`FakeWgDevice::set_traffic`]), make the next call
//! of a method fail ([`FakeWgDevice::fail_next`]), make the kernel refuse any change of one
//! peer ([`FakeWgDevice::refuse_peer`], reported as [`crate::Error::KernelRejectedUpdate`]
//! with the changes before it applied, as one netlink message would be), and inspect every
//! update applied.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use ipnet::IpNet;
use wgcable_keys::PublicKey;
use wgcable_netlink::{FakeNetlink, LinkKind, Netlink};

use crate::device::validate_device_name;
use crate::{
    BackendKind, DeviceStatus, DeviceUpdate, Error, KernelRefusal, PeerChange, PeerConfig,
    PeerStatus, WgDevice,
};

/// A method of [`WgDevice`], to inject failures into and count calls of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeviceCall {
    Ensure,
    Read,
    Apply,
    Delete,
}

type Failure = Box<dyn FnOnce(&str) -> Error + Send>;

#[derive(Default)]
struct State {
    devices: BTreeMap<String, DeviceStatus>,
    applied: Vec<(String, DeviceUpdate)>,
    calls: BTreeMap<DeviceCall, usize>,
    failures: BTreeMap<DeviceCall, Vec<Failure>>,
    refused: BTreeMap<PublicKey, i32>,
}

/// An in-memory WireGuard device backend over a [`FakeNetlink`] (its devices are links of
/// kind `wireguard` there, as the kernel backend's are).
pub struct FakeWgDevice {
    netlink: Arc<FakeNetlink>,
    kind: BackendKind,
    state: Mutex<State>,
}

impl std::fmt::Debug for FakeWgDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeWgDevice")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl FakeWgDevice {
    /// A fake kernel backend whose links live in `netlink`.
    pub fn new(netlink: Arc<FakeNetlink>) -> Self {
        Self::with_kind(netlink, BackendKind::Kernel)
    }

    /// The same, reporting `kind` (the behaviour is the kernel's either way: `wireguard-go`
    /// passes the same contract).
    pub fn with_kind(netlink: Arc<FakeNetlink>, kind: BackendKind) -> Self {
        Self {
            netlink,
            kind,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The device as `read` would return it.
    pub fn status(&self, name: &str) -> Option<DeviceStatus> {
        self.lock().devices.get(name).cloned()
    }

    /// One peer of a device.
    pub fn peer(&self, name: &str, key: &PublicKey) -> Option<PeerStatus> {
        self.lock()
            .devices
            .get(name)?
            .peers
            .iter()
            .find(|p| p.config.public_key == *key)
            .cloned()
    }

    /// Sets what the data plane would: the last handshake and the byte counters of a peer.
    /// Returns false when there is no such peer.
    pub fn set_traffic(
        &self,
        name: &str,
        key: &PublicKey,
        handshake: Option<SystemTime>,
        rx_bytes: u64,
        tx_bytes: u64,
    ) -> bool {
        let mut state = self.lock();
        let Some(peer) = state
            .devices
            .get_mut(name)
            .and_then(|d| d.peers.iter_mut().find(|p| p.config.public_key == *key))
        else {
            return false;
        };
        peer.last_handshake = handshake;
        peer.rx_bytes = rx_bytes;
        peer.tx_bytes = tx_bytes;
        true
    }

    /// Sets a peer's endpoint as roaming does (the peer's packets came from elsewhere).
    pub fn roam(&self, name: &str, key: &PublicKey, endpoint: std::net::SocketAddr) -> bool {
        let mut state = self.lock();
        let Some(peer) = state
            .devices
            .get_mut(name)
            .and_then(|d| d.peers.iter_mut().find(|p| p.config.public_key == *key))
        else {
            return false;
        };
        peer.config.endpoint = Some(endpoint);
        true
    }

    /// Every update applied so far (successful or not), with its device name.
    pub fn applied(&self) -> Vec<(String, DeviceUpdate)> {
        self.lock().applied.clone()
    }

    /// How many times `call` was made.
    pub fn calls(&self, call: DeviceCall) -> usize {
        self.lock().calls.get(&call).copied().unwrap_or(0)
    }

    /// Makes the next `call` fail with the error `make` builds from the device name (failures
    /// queue up: one per call, in order). The failing call changes nothing.
    pub fn fail_next(&self, call: DeviceCall, make: impl FnOnce(&str) -> Error + Send + 'static) {
        self.lock()
            .failures
            .entry(call)
            .or_default()
            .push(Box::new(make));
    }

    /// From now on the kernel refuses, with `errno`, any change of the peer `key`.
    pub fn refuse_peer(&self, key: PublicKey, errno: i32) {
        self.lock().refused.insert(key, errno);
    }

    /// Accepts changes of `key` again.
    pub fn accept_peer(&self, key: &PublicKey) {
        self.lock().refused.remove(key);
    }

    /// Counts the call and takes its injected failure, if any.
    fn begin(&self, call: DeviceCall, name: &str) -> Result<(), Error> {
        let mut state = self.lock();
        *state.calls.entry(call).or_default() += 1;
        let failure = state.failures.get_mut(&call).and_then(|queue| {
            if queue.is_empty() {
                None
            } else {
                Some(queue.remove(0))
            }
        });
        drop(state);
        match failure {
            Some(make) => Err(make(name)),
            None => Ok(()),
        }
    }

    /// The link of `name`, or an error if a link of another kind has the name.
    async fn own_link(&self, name: &str) -> Result<bool, Error> {
        match self.netlink.link(name) {
            None => Ok(false),
            Some(link) if link.kind.as_deref() == Some(LinkKind::Wireguard.as_str()) => Ok(true),
            Some(link) => Err(Error::WrongLinkKind {
                device: name.to_owned(),
                kind: link.kind.unwrap_or_else(|| "no kind".to_owned()),
            }),
        }
    }
}

fn fresh(name: &str) -> DeviceStatus {
    DeviceStatus {
        name: name.to_owned(),
        public_key: None,
        listen_port: None,
        peers: Vec::new(),
    }
}

/// Applies one peer change as the kernel's `set_peer` does.
fn set_peer(device: &mut DeviceStatus, config: &PeerConfig, replace_allowed_ips: bool) {
    if device.public_key.as_ref() == Some(&config.public_key) {
        return;
    }
    let nets: Vec<IpNet> = config.allowed_ips.iter().map(IpNet::trunc).collect();
    // An allowed IP belongs to one peer: inserting it takes it from whoever held it.
    for other in device
        .peers
        .iter_mut()
        .filter(|p| p.config.public_key != config.public_key)
    {
        other.config.allowed_ips.retain(|n| !nets.contains(n));
    }
    let index = match device
        .peers
        .iter()
        .position(|p| p.config.public_key == config.public_key)
    {
        Some(i) => i,
        None => {
            device.peers.push(PeerStatus {
                config: PeerConfig {
                    public_key: config.public_key,
                    endpoint: None,
                    allowed_ips: Vec::new(),
                    persistent_keepalive: None,
                    preshared_key: None,
                },
                last_handshake: None,
                rx_bytes: 0,
                tx_bytes: 0,
            });
            device.peers.len() - 1
        }
    };
    let peer = &mut device.peers[index].config;
    if let Some(endpoint) = config.endpoint {
        peer.endpoint = Some(endpoint);
    }
    peer.preshared_key = config.preshared_key.clone();
    peer.persistent_keepalive = config.persistent_keepalive.filter(|&k| k != 0);
    if replace_allowed_ips {
        peer.allowed_ips.clear();
    }
    for net in nets {
        if !peer.allowed_ips.contains(&net) {
            peer.allowed_ips.push(net);
        }
    }
}

#[async_trait]
impl WgDevice for FakeWgDevice {
    fn kind(&self) -> BackendKind {
        self.kind
    }

    async fn ensure(&self, name: &str) -> Result<bool, Error> {
        validate_device_name(name)?;
        self.begin(DeviceCall::Ensure, name)?;
        let exists = self.own_link(name).await?;
        if !exists {
            self.netlink
                .link_add(name, &LinkKind::Wireguard)
                .await
                .map_err(|source| Error::Netlink {
                    device: name.to_owned(),
                    op: "creating WireGuard",
                    source: Box::new(source),
                })?;
        }
        let mut state = self.lock();
        // A link without device state (e.g. created by hand in the fake kernel) is adopted.
        let created = !exists || !state.devices.contains_key(name);
        state
            .devices
            .entry(name.to_owned())
            .or_insert_with(|| fresh(name));
        Ok(created)
    }

    async fn read(&self, name: &str) -> Result<Option<DeviceStatus>, Error> {
        validate_device_name(name)?;
        self.begin(DeviceCall::Read, name)?;
        if !self.own_link(name).await? {
            self.lock().devices.remove(name);
            return Ok(None);
        }
        Ok(Some(
            self.lock()
                .devices
                .entry(name.to_owned())
                .or_insert_with(|| fresh(name))
                .clone(),
        ))
    }

    async fn apply(&self, name: &str, update: &DeviceUpdate) -> Result<(), Error> {
        validate_device_name(name)?;
        self.lock().applied.push((name.to_owned(), update.clone()));
        self.begin(DeviceCall::Apply, name)?;
        if !self.own_link(name).await? {
            return Err(Error::NoDevice {
                device: name.to_owned(),
            });
        }
        let mut state = self.lock();
        let refused = state.refused.clone();
        let device = state
            .devices
            .entry(name.to_owned())
            .or_insert_with(|| fresh(name));
        if let Some(key) = &update.private_key {
            let public = key.public_key();
            device.peers.retain(|p| p.config.public_key != public);
            device.public_key = Some(public);
        }
        if let Some(port) = update.listen_port {
            device.listen_port = Some(port).filter(|&p| p != 0);
        }
        for change in &update.peers {
            if let Some(&errno) = refused.get(change.public_key()) {
                // As one netlink message: the changes before this one stay applied.
                return Err(Error::KernelRejectedUpdate {
                    device: name.to_owned(),
                    message: 0,
                    messages: 1,
                    changes: 0..update.peers.len(),
                    source: KernelRefusal {
                        errno,
                        reason: None,
                    },
                });
            }
            match change {
                PeerChange::Add(config) => set_peer(device, config, false),
                PeerChange::Update {
                    config,
                    replace_allowed_ips,
                } => set_peer(device, config, *replace_allowed_ips),
                PeerChange::Remove(key) => device.peers.retain(|p| p.config.public_key != *key),
            }
        }
        Ok(())
    }

    async fn delete(&self, name: &str) -> Result<(), Error> {
        validate_device_name(name)?;
        self.begin(DeviceCall::Delete, name)?;
        let Some(link) = self.netlink.link(name) else {
            self.lock().devices.remove(name);
            return Ok(());
        };
        // Never delete a link of another kind: it is not ours.
        self.own_link(name).await?;
        self.lock().devices.remove(name);
        match self.netlink.link_del(link.index).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(source) => Err(Error::Netlink {
                device: name.to_owned(),
                op: "deleting WireGuard",
                source: Box::new(source),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (Arc<FakeNetlink>, FakeWgDevice) {
        let nl = Arc::new(FakeNetlink::new());
        (nl.clone(), FakeWgDevice::new(nl))
    }

    #[tokio::test]
    async fn passes_the_device_contract() {
        let (nl, dev) = device();
        crate::contract::device_contract(&dev, &*nl).await;
    }

    #[tokio::test]
    async fn passes_the_large_device_contract() {
        let (_nl, dev) = device();
        crate::contract::large_devices(&dev, &[1000]).await;
    }

    #[tokio::test]
    async fn injected_failures_come_once_and_change_nothing() {
        let (_nl, dev) = device();
        dev.ensure("wg0").await.expect("ensure");
        dev.fail_next(DeviceCall::Apply, |name| Error::NoDevice {
            device: name.to_owned(),
        });
        let update = DeviceUpdate {
            listen_port: Some(1),
            ..DeviceUpdate::default()
        };
        assert!(dev
            .apply("wg0", &update)
            .await
            .expect_err("injected")
            .is_no_device());
        assert_eq!(dev.status("wg0").expect("device").listen_port, None);
        dev.apply("wg0", &update).await.expect("second call works");
        assert_eq!(dev.status("wg0").expect("device").listen_port, Some(1));
        assert_eq!(dev.calls(DeviceCall::Apply), 2);
        assert_eq!(dev.applied().len(), 2);
    }

    #[tokio::test]
    async fn a_refused_peer_fails_its_message_after_the_changes_before_it() {
        let (_nl, dev) = device();
        dev.ensure("wg0").await.expect("ensure");
        let peer = |n: u8| PeerConfig {
            public_key: PublicKey::from_bytes([n; 32]),
            endpoint: None,
            allowed_ips: vec![format!("10.{n}.0.0/16").parse().expect("net")],
            persistent_keepalive: None,
            preshared_key: None,
        };
        dev.refuse_peer(PublicKey::from_bytes([2; 32]), 22);
        let update = DeviceUpdate {
            peers: vec![
                PeerChange::Add(peer(1)),
                PeerChange::Add(peer(2)),
                PeerChange::Add(peer(3)),
            ],
            ..DeviceUpdate::default()
        };
        let err = dev.apply("wg0", &update).await.expect_err("refused");
        assert_eq!(err.errno(), Some(22));
        assert_eq!(err.rejected_peer_changes(), Some(0..3));
        let status = dev.status("wg0").expect("device");
        assert_eq!(
            status.peers.len(),
            1,
            "the change before the refused one applied"
        );
        // Alone, the refused change is named exactly; the others go through.
        let alone = DeviceUpdate {
            peers: vec![PeerChange::Add(peer(2))],
            ..DeviceUpdate::default()
        };
        let err = dev.apply("wg0", &alone).await.expect_err("refused");
        assert_eq!(err.rejected_peer_changes(), Some(0..1));
        dev.accept_peer(&PublicKey::from_bytes([2; 32]));
        dev.apply("wg0", &update).await.expect("accepted");
        assert_eq!(dev.status("wg0").expect("device").peers.len(), 3);
    }

    #[tokio::test]
    async fn traffic_and_roaming_are_set_by_tests() {
        let (_nl, dev) = device();
        dev.ensure("wg0").await.expect("ensure");
        let key = PublicKey::from_bytes([1; 32]);
        assert!(
            !dev.set_traffic("wg0", &key, None, 1, 2),
            "no such peer yet"
        );
        dev.apply(
            "wg0",
            &DeviceUpdate {
                peers: vec![PeerChange::Add(PeerConfig {
                    public_key: key,
                    endpoint: None,
                    allowed_ips: Vec::new(),
                    persistent_keepalive: None,
                    preshared_key: None,
                })],
                ..DeviceUpdate::default()
            },
        )
        .await
        .expect("apply");
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(100);
        assert!(dev.set_traffic("wg0", &key, Some(at), 1, 2));
        assert!(dev.roam("wg0", &key, "192.0.2.1:1".parse().expect("addr")));
        let peer = dev.peer("wg0", &key).expect("peer");
        assert_eq!(
            (peer.last_handshake, peer.rx_bytes, peer.tx_bytes),
            (Some(at), 1, 2)
        );
        assert!(peer.config.endpoint.is_some());
    }
}
