//! The kernel backend: the device is a netlink link of kind `wireguard`, created and deleted
//! through the [`Netlink`] seam, and configured and read over WireGuard's generic netlink
//! family with messages we build ourselves from `netlink_packet_wireguard`'s types
//! ([`message`]) on a small blocking socket ([`genl`]).
//!
//! Why not `wireguard_control` (which this backend used first): it reads a peer that the
//! kernel split over two dump messages as two peers, the second without endpoint, keepalive,
//! PSK or handshake; it refuses a peer whose allowed IPs do not fit one message instead of
//! continuing it in the next, as wg(8) does; and its errors either embed whole attributes (keys
//! included) or, sanitized, lose the errno's reason. Both defects were found in a VM with a
//! real WireGuard kernel (issue 12) and are covered by tests in [`message`].
//!
//! One [`WgDevice::apply`] is one request as far as the caller is concerned, sent as as many
//! messages as it needs; the kernel applies each message on its own, so a refusal says which
//! message (and which peer changes) it was and that the earlier ones were applied.

mod genl;
mod message;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST};
use netlink_packet_wireguard::nlas::WgDeviceAttrs;
use netlink_packet_wireguard::{Wireguard, WireguardCmd};
use wgcable_netlink::{Link, LinkKind, Netlink};

pub use genl::KernelRefusal;
use genl::{Failure, WgSocket};

use crate::device::{
    blocking, validate_device_name, BackendKind, DeviceStatus, DeviceUpdate, WgDevice,
};
use crate::Error;

/// How often a dump is retried when the device changed while it was read (the kernel then
/// flags the dump as interrupted and its parts may not fit together).
const DUMP_ATTEMPTS: usize = 5;

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

/// The errno of "no such device": the link went away between our lookup and the request.
const ENODEV: i32 = nix::errno::Errno::ENODEV as i32;

fn failure(device: &str, op: &'static str, failure: Failure) -> Error {
    match failure {
        Failure::Io(source) => Error::Kernel {
            device: device.to_owned(),
            op,
            source,
        },
        Failure::Refused(source) => Error::KernelRefused {
            device: device.to_owned(),
            op,
            source,
        },
        Failure::Decode(detail) => Error::KernelData {
            device: device.to_owned(),
            detail,
        },
    }
}

/// One GET_DEVICE dump, merged into one device; `None` when the device is gone.
fn read_device(name: &str) -> Result<Option<DeviceStatus>, Error> {
    let mut socket = WgSocket::open().map_err(|f| failure(name, "reading", f))?;
    for _ in 0..DUMP_ATTEMPTS {
        let request = Wireguard {
            cmd: WireguardCmd::GetDevice,
            nlas: vec![WgDeviceAttrs::IfName(name.to_owned())],
        };
        let replies = match socket.wireguard(request, NLM_F_REQUEST | NLM_F_DUMP) {
            Ok(replies) => replies,
            Err(Failure::Refused(r)) if r.errno == ENODEV => return Ok(None),
            Err(f) => return Err(failure(name, "reading", f)),
        };
        if replies.iter().any(|r| r.flags & NLM_F_DUMP_INTR != 0) {
            // The device changed during the dump; its parts may not fit together.
            continue;
        }
        let device = message::merge_dump(name, replies.iter().map(|r| r.payload.nlas.as_slice()))
            .map_err(|detail| Error::KernelData {
            device: name.to_owned(),
            detail,
        })?;
        return Ok(Some(device));
    }
    Err(Error::KernelData {
        device: name.to_owned(),
        detail: format!(
            "the device changed during each of {DUMP_ATTEMPTS} reads in a row (the kernel \
             flagged every dump as interrupted)"
        ),
    })
}

/// Sends the update as SET_DEVICE messages, in order, stopping at the first refusal.
fn configure(name: &str, update: &DeviceUpdate) -> Result<(), Error> {
    let messages =
        message::set_device_messages(name, update, message::MAX_PAYLOAD_LEN).map_err(|t| {
            Error::UpdateTooLarge {
                device: name.to_owned(),
                change: t.change,
            }
        })?;
    if messages.is_empty() {
        return Ok(());
    }
    let mut socket = WgSocket::open().map_err(|f| failure(name, "configuring", f))?;
    let total = messages.len();
    for (index, mut message) in messages.into_iter().enumerate() {
        let request = Wireguard {
            cmd: WireguardCmd::SetDevice,
            nlas: std::mem::take(&mut message.attrs),
        };
        match socket.wireguard(request, NLM_F_REQUEST | NLM_F_ACK) {
            Ok(_) => {}
            Err(Failure::Refused(r)) if r.errno == ENODEV && index == 0 => {
                return Err(Error::NoDevice {
                    device: name.to_owned(),
                })
            }
            Err(Failure::Refused(source)) => {
                return Err(Error::KernelRejectedUpdate {
                    device: name.to_owned(),
                    message: index,
                    messages: total,
                    changes: message.changes.clone(),
                    source,
                })
            }
            Err(f) => return Err(failure(name, "configuring", f)),
        }
    }
    Ok(())
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
        validate_device_name(name)?;
        if self.wireguard_link(name).await?.is_none() {
            return Ok(None);
        }
        let device = name.to_owned();
        blocking(name, "reading", move || read_device(&device)).await
    }

    async fn apply(&self, name: &str, update: &DeviceUpdate) -> Result<(), Error> {
        validate_device_name(name)?;
        // The device is created by `ensure` only, so a missing one is reported instead.
        if self.wireguard_link(name).await?.is_none() {
            return Err(Error::NoDevice {
                device: name.to_owned(),
            });
        }
        if update.is_empty() {
            return Ok(());
        }
        let device = name.to_owned();
        let update = update.clone();
        blocking(name, "configuring", move || configure(&device, &update)).await
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
    use wgcable_netlink::{FakeNetlink, Method};

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
