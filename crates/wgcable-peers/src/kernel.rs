//! The kernel backend: the device is a netlink link of kind `wireguard`, created and deleted
//! through the [`Netlink`] seam and configured over WireGuard's generic netlink family by
//! `wireguard_control` (which splits a large update into as many netlink messages as the
//! buffer needs - one call to [`WgDevice::apply`] either way).
//!
//! `wireguard_control` is blocking, so it runs on tokio's blocking pool. Its `Key` type is not
//! zeroized; the private key only passes through it for the duration of one `apply`.

use std::io;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ipnet::IpNet;
use wgcable_keys::{PresharedKey, PublicKey};
use wgcable_netlink::{Link, LinkKind, Netlink};
use wireguard_control as wgc;

use crate::device::{
    blocking, validate_device_name, BackendKind, DeviceStatus, DeviceUpdate, PeerChange,
    PeerConfig, PeerStatus, WgDevice,
};
use crate::Error;

/// A WireGuard device in the kernel.
pub struct KernelDevice<N: Netlink + ?Sized> {
    netlink: Arc<N>,
    /// A link [`crate::select_backend`] created while probing for kernel support, so that the
    /// first `ensure` still reports it as created.
    probed: Mutex<Option<String>>,
}

impl<N: Netlink + ?Sized> std::fmt::Debug for KernelDevice<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelDevice").finish_non_exhaustive()
    }
}

impl<N: Netlink + ?Sized> KernelDevice<N> {
    pub fn new(netlink: Arc<N>) -> Self {
        Self {
            netlink,
            probed: Mutex::new(None),
        }
    }

    pub(crate) fn mark_created(&self, name: &str) {
        *self.probed.lock().unwrap_or_else(|p| p.into_inner()) = Some(name.to_owned());
    }

    fn take_created(&self, name: &str) -> bool {
        let mut probed = self.probed.lock().unwrap_or_else(|p| p.into_inner());
        if probed.as_deref() == Some(name) {
            *probed = None;
            true
        } else {
            false
        }
    }

    /// The link `name` if it exists; an error if it exists but is not a WireGuard device.
    async fn wireguard_link(&self, name: &str) -> Result<Option<Link>, Error> {
        let link = self
            .netlink
            .link_get(name)
            .await
            .map_err(|source| Error::Netlink {
                device: name.to_owned(),
                op: "looking up",
                source: Box::new(source),
            })?;
        match link {
            Some(link) if link.kind.as_deref() != Some(LinkKind::Wireguard.as_str()) => {
                Err(Error::WrongLinkKind {
                    device: name.to_owned(),
                    kind: link.kind.unwrap_or_else(|| "no kind".to_owned()),
                })
            }
            other => Ok(other),
        }
    }
}

fn interface_name(name: &str) -> Result<wgc::InterfaceName, Error> {
    validate_device_name(name)?;
    name.parse().map_err(|_| Error::InvalidDeviceName {
        name: name.to_owned(),
        reason: "the kernel does not accept it as an interface name",
    })
}

/// Keeps only the errno (or kind) of a `wireguard_control` error: some of its messages embed
/// whole netlink attributes, pre-shared keys included.
fn sanitize(e: io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::from(e.kind()),
    }
}

fn wgc_peer(config: &PeerConfig) -> wgc::PeerConfigBuilder {
    let mut peer = wgc::PeerConfigBuilder::new(&wgc::Key(*config.public_key.as_bytes()));
    // As over UAPI: every field is set, an all-zero PSK and keepalive 0 meaning "none".
    peer = peer.set_preshared_key(wgc::Key(
        config
            .preshared_key
            .as_ref()
            .map_or([0u8; 32], |psk| *psk.as_bytes()),
    ));
    if let Some(endpoint) = config.endpoint {
        peer = peer.set_endpoint(endpoint);
    }
    peer = peer.set_persistent_keepalive_interval(config.persistent_keepalive.unwrap_or(0));
    for net in &config.allowed_ips {
        peer = peer.add_allowed_ip(net.addr(), net.prefix_len());
    }
    peer
}

/// Our update as `wireguard_control`'s.
pub(crate) fn to_wgc_update(update: &DeviceUpdate) -> wgc::DeviceUpdate {
    let mut out = wgc::DeviceUpdate::new();
    if let Some(key) = &update.private_key {
        out = out.set_private_key(wgc::Key(*key.as_bytes()));
    }
    if let Some(port) = update.listen_port {
        out = out.set_listen_port(port);
    }
    for change in &update.peers {
        out = match change {
            PeerChange::Add(config) => out.add_peer(wgc_peer(config)),
            PeerChange::Update {
                config,
                replace_allowed_ips,
            } => {
                let mut peer = wgc_peer(config);
                if *replace_allowed_ips {
                    peer = peer.replace_allowed_ips();
                }
                out.add_peer(peer)
            }
            PeerChange::Remove(key) => out.remove_peer_by_key(&wgc::Key(*key.as_bytes())),
        };
    }
    out
}

/// A peer as `wireguard_control` reports it, in our types.
pub(crate) fn from_wgc_peer(info: wgc::PeerInfo) -> Result<PeerStatus, String> {
    let allowed_ips = info
        .config
        .allowed_ips
        .iter()
        .map(|ip| {
            IpNet::new(ip.address, ip.cidr)
                .map_err(|_| format!("allowed IP {}/{}", ip.address, ip.cidr))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PeerStatus {
        config: PeerConfig {
            public_key: PublicKey::from_bytes(info.config.public_key.0),
            endpoint: info.config.endpoint,
            allowed_ips,
            persistent_keepalive: info
                .config
                .persistent_keepalive_interval
                .filter(|&s| s != 0),
            // The kernel reports an unset PSK as all zeros.
            preshared_key: info
                .config
                .preshared_key
                .filter(|k| k.0 != [0u8; 32])
                .map(|k| PresharedKey::from_bytes(k.0)),
        },
        // wireguard_control already maps the kernel's "never" (time 0) to None.
        last_handshake: info.stats.last_handshake_time,
        rx_bytes: info.stats.rx_bytes,
        tx_bytes: info.stats.tx_bytes,
    })
}

fn from_wgc_device(name: &str, device: wgc::Device) -> Result<DeviceStatus, Error> {
    let peers = device
        .peers
        .into_iter()
        .map(from_wgc_peer)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|detail| Error::KernelData {
            device: name.to_owned(),
            detail,
        })?;
    Ok(DeviceStatus {
        name: name.to_owned(),
        public_key: device.public_key.map(|k| PublicKey::from_bytes(k.0)),
        listen_port: device.listen_port.filter(|&p| p != 0),
        peers,
    })
}

#[async_trait]
impl<N: Netlink + ?Sized + 'static> WgDevice for KernelDevice<N> {
    fn kind(&self) -> BackendKind {
        BackendKind::Kernel
    }

    async fn ensure(&self, name: &str) -> Result<bool, Error> {
        validate_device_name(name)?;
        let probed = self.take_created(name);
        match wgcable_netlink::ensure_link(&*self.netlink, name, &LinkKind::Wireguard).await {
            Ok((_, created)) => Ok(created || probed),
            Err(wgcable_netlink::Error::WrongKind { found, .. }) => Err(Error::WrongLinkKind {
                device: name.to_owned(),
                kind: found,
            }),
            Err(source) if source.is_unsupported() => Err(Error::KernelUnsupported {
                device: name.to_owned(),
                source: Box::new(source),
            }),
            Err(source) => Err(Error::Netlink {
                device: name.to_owned(),
                op: "creating WireGuard",
                source: Box::new(source),
            }),
        }
    }

    async fn read(&self, name: &str) -> Result<Option<DeviceStatus>, Error> {
        let iface = interface_name(name)?;
        if self.wireguard_link(name).await?.is_none() {
            return Ok(None);
        }
        let device = name.to_owned();
        blocking(name, "reading", move || {
            match wgc::Device::get(&iface, wgc::Backend::Kernel) {
                Ok(found) => from_wgc_device(&device, found).map(Some),
                // Deleted since we looked it up.
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENODEV as i32) => Ok(None),
                Err(e) => Err(Error::Kernel {
                    device,
                    op: "reading",
                    source: sanitize(e),
                }),
            }
        })
        .await
    }

    async fn apply(&self, name: &str, update: &DeviceUpdate) -> Result<(), Error> {
        let iface = interface_name(name)?;
        // wireguard_control's kernel apply would create a missing link on its own; the device
        // is created by `ensure` only, so a missing one is reported instead.
        if self.wireguard_link(name).await?.is_none() {
            return Err(Error::NoDevice {
                device: name.to_owned(),
            });
        }
        let wgc_update = to_wgc_update(update);
        let device = name.to_owned();
        blocking(name, "configuring", move || {
            wgc_update
                .apply(&iface, wgc::Backend::Kernel)
                .map_err(|e| Error::Kernel {
                    device,
                    op: "configuring",
                    source: sanitize(e),
                })
        })
        .await
    }

    async fn delete(&self, name: &str) -> Result<(), Error> {
        validate_device_name(name)?;
        // Never delete a link of another kind: it is not ours.
        let Some(link) = self.wireguard_link(name).await? else {
            return Ok(());
        };
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
    use std::time::{Duration, SystemTime};
    use wgcable_keys::PrivateKey;
    use wgcable_netlink::{FakeNetlink, Method};

    fn config(n: u8, psk: Option<PresharedKey>, keepalive: Option<u16>) -> PeerConfig {
        PeerConfig {
            public_key: PublicKey::from_bytes([n; 32]),
            endpoint: Some(format!("198.51.100.{n}:4500").parse().expect("addr")),
            allowed_ips: vec![
                format!("10.{n}.0.0/16").parse().expect("net"),
                "fd00::/64".parse().expect("net"),
            ],
            persistent_keepalive: keepalive,
            preshared_key: psk,
        }
    }

    #[test]
    fn update_converts_to_one_wireguard_control_update() {
        let psk = PresharedKey::from_bytes([0xAA; 32]);
        let update = DeviceUpdate {
            private_key: Some(PrivateKey::from_bytes([7; 32])),
            listen_port: Some(4500),
            peers: vec![
                PeerChange::Remove(PublicKey::from_bytes([3; 32])),
                PeerChange::Update {
                    config: config(2, None, None),
                    replace_allowed_ips: true,
                },
                PeerChange::Add(config(1, Some(psk), Some(10))),
            ],
        };
        let peer = |n: u8, psk: [u8; 32], keepalive: u16| {
            wgc::PeerConfigBuilder::new(&wgc::Key([n; 32]))
                .set_preshared_key(wgc::Key(psk))
                .set_endpoint(format!("198.51.100.{n}:4500").parse().expect("addr"))
                .set_persistent_keepalive_interval(keepalive)
                .add_allowed_ip(std::net::IpAddr::from([10, n, 0, 0]), 16)
                .add_allowed_ip("fd00::".parse().expect("ip"), 64)
        };
        let expected = wgc::DeviceUpdate::new()
            .set_private_key(wgc::Key([7; 32]))
            .set_listen_port(4500)
            .remove_peer_by_key(&wgc::Key([3; 32]))
            .add_peer(peer(2, [0; 32], 0).replace_allowed_ips())
            .add_peer(peer(1, [0xAA; 32], 10));
        assert_eq!(to_wgc_update(&update), expected);
    }

    #[test]
    fn thousand_peer_update_is_one_wireguard_control_update() {
        let update = DeviceUpdate {
            peers: (0..1000u32)
                .map(|i| {
                    let mut c = config(1, None, Some(10));
                    let mut key = [0u8; 32];
                    key[..4].copy_from_slice(&i.to_be_bytes());
                    c.public_key = PublicKey::from_bytes(key);
                    PeerChange::Add(c)
                })
                .collect(),
            ..DeviceUpdate::default()
        };
        // Debug is the only window into its private fields: count the peers in it.
        let text = format!("{:?}", to_wgc_update(&update));
        assert_eq!(text.matches("PeerConfigBuilder").count(), 1000);
    }

    #[test]
    fn kernel_peers_convert_with_zero_meaning_none() {
        let mut info = wgc::PeerInfo::from_public_key(wgc::Key([1; 32]));
        info.config.preshared_key = Some(wgc::Key([0; 32]));
        info.config.persistent_keepalive_interval = Some(0);
        info.config.allowed_ips = vec!["10.1.0.0/16".parse().expect("allowed ip")];
        info.config.endpoint = Some("198.51.100.1:4500".parse().expect("addr"));
        info.stats.last_handshake_time = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(5));
        info.stats.rx_bytes = 3;
        info.stats.tx_bytes = 4;
        let peer = from_wgc_peer(info.clone()).expect("converts");
        assert_eq!(
            peer,
            PeerStatus {
                config: PeerConfig {
                    public_key: PublicKey::from_bytes([1; 32]),
                    endpoint: Some("198.51.100.1:4500".parse().expect("addr")),
                    allowed_ips: vec!["10.1.0.0/16".parse().expect("net")],
                    persistent_keepalive: None,
                    preshared_key: None,
                },
                last_handshake: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(5)),
                rx_bytes: 3,
                tx_bytes: 4,
            }
        );
        info.config.preshared_key = Some(wgc::Key([0xAA; 32]));
        info.config.persistent_keepalive_interval = Some(10);
        let peer = from_wgc_peer(info.clone()).expect("converts");
        assert_eq!(
            peer.config.preshared_key,
            Some(PresharedKey::from_bytes([0xAA; 32]))
        );
        assert_eq!(peer.config.persistent_keepalive, Some(10));
        info.config.allowed_ips = vec![wgc::AllowedIp {
            address: "10.0.0.0".parse().expect("ip"),
            cidr: 40,
        }];
        assert!(from_wgc_peer(info).is_err());
    }

    #[tokio::test]
    async fn ensure_creates_a_wireguard_link_once() {
        let nl = Arc::new(FakeNetlink::new());
        let device = KernelDevice::new(nl.clone());
        assert!(device.ensure("wg0").await.expect("created"));
        assert_eq!(
            nl.link("wg0").and_then(|l| l.kind).as_deref(),
            Some("wireguard")
        );
        assert!(!device.ensure("wg0").await.expect("reused"));
        assert_eq!(nl.calls(Method::LinkAdd), 1);
    }

    #[tokio::test]
    async fn ensure_refuses_a_link_of_another_kind() {
        let nl = Arc::new(FakeNetlink::new());
        nl.link_add("wg0", &LinkKind::Dummy).await.expect("dummy");
        let device = KernelDevice::new(nl.clone());
        let err = device.ensure("wg0").await.expect_err("wrong kind");
        assert!(
            matches!(err, Error::WrongLinkKind { ref kind, .. } if kind == "dummy"),
            "{err:?}"
        );
        let err = device.delete("wg0").await.expect_err("not ours to delete");
        assert!(matches!(err, Error::WrongLinkKind { .. }), "{err:?}");
        assert!(nl.link("wg0").is_some());
    }

    #[tokio::test]
    async fn ensure_without_kernel_support_says_what_to_do() {
        let nl = Arc::new(FakeNetlink::new());
        nl.set_wireguard_supported(false);
        let err = KernelDevice::new(nl)
            .ensure("wg0")
            .await
            .expect_err("unsupported");
        assert!(matches!(err, Error::KernelUnsupported { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("modprobe wireguard") && text.contains("wireguard-go"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn other_netlink_failures_are_reported_as_such() {
        let nl = Arc::new(FakeNetlink::new());
        nl.fail_next(Method::LinkAdd, nix::errno::Errno::EPERM as i32);
        let err = KernelDevice::new(nl)
            .ensure("wg0")
            .await
            .expect_err("eperm");
        assert!(matches!(err, Error::Netlink { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn delete_removes_the_link_and_absent_is_fine() {
        let nl = Arc::new(FakeNetlink::new());
        let device = KernelDevice::new(nl.clone());
        device.ensure("wg0").await.expect("created");
        device.delete("wg0").await.expect("deleted");
        assert!(nl.link("wg0").is_none());
        device.delete("wg0").await.expect("absent is fine");
        assert_eq!(nl.calls(Method::LinkDel), 1);
    }

    #[tokio::test]
    async fn missing_device_reads_as_none_and_cannot_be_configured() {
        let nl = Arc::new(FakeNetlink::new());
        let device = KernelDevice::new(nl.clone());
        assert_eq!(device.read("wg0").await.expect("read"), None);
        let err = device
            .apply("wg0", &DeviceUpdate::default())
            .await
            .expect_err("absent");
        assert!(err.is_no_device(), "{err:?}");
        assert_eq!(
            nl.calls(Method::LinkAdd),
            0,
            "apply never creates the device"
        );
    }

    #[tokio::test]
    async fn a_probed_link_counts_as_created_once() {
        let nl = Arc::new(FakeNetlink::new());
        nl.link_add("wg0", &LinkKind::Wireguard)
            .await
            .expect("probe");
        let device = KernelDevice::new(nl);
        device.mark_created("wg0");
        assert!(device.ensure("wg0").await.expect("ensure"));
        assert!(!device.ensure("wg0").await.expect("ensure"));
    }
}
