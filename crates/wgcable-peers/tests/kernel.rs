//! The kernel backend against real kernel WireGuard: the device contract and the large-device
//! cases (1,000 and 5,000 dual-stack peers, one peer with 1,000 allowed IPs, a resync at that
//! size), each in a fresh network namespace.
//!
//! These machines' kernel has no WireGuard, so the tests run in `cargo xtask vm test` (Debian's
//! kernel in qemu, which sets `WGCABLE_VM`). Elsewhere each prints one `skipped:` line; in the
//! VM a missing WireGuard is a failure.

use std::sync::Arc;

use wgcable_netlink::testing::{in_netns, skip_outside_vm};
use wgcable_netlink::{LinkKind, Netlink};
use wgcable_peers::{contract, KernelDevice, WgDevice};

/// Whether this kernel can create WireGuard links; says why not (and skips) when it cannot.
async fn kernel_has_wireguard(test: &str, netlink: &wgcable_netlink::RtNetlink) -> bool {
    match netlink.link_add("wgprobe", &LinkKind::Wireguard).await {
        Ok(link) => {
            netlink
                .link_del(link.index)
                .await
                .expect("removing the probe");
            true
        }
        Err(e) => {
            skip_outside_vm(
                test,
                &format!("this kernel cannot create WireGuard links ({e}); `cargo xtask vm test` runs it"),
            );
            false
        }
    }
}

#[test]
fn kernel_device_passes_the_device_contract() {
    const TEST: &str = "kernel_device_passes_the_device_contract";
    in_netns(TEST, |nl| async move {
        if !kernel_has_wireguard(TEST, &nl).await {
            return;
        }
        let nl = Arc::new(nl);
        let device = KernelDevice::new(nl.clone());
        contract::device_contract(&device, &*nl).await;
    });
}

#[test]
fn kernel_device_reads_back_large_devices_exactly() {
    const TEST: &str = "kernel_device_reads_back_large_devices_exactly";
    in_netns(TEST, |nl| async move {
        if !kernel_has_wireguard(TEST, &nl).await {
            return;
        }
        let nl = Arc::new(nl);
        let device = KernelDevice::new(nl.clone());
        contract::large_devices(&device, &[1000, 5000]).await;
    });
}

/// A refusal keeps the kernel's errno and says which message and peer changes it was; the
/// messages before it stay applied (nothing is dropped silently).
#[test]
fn a_refused_update_says_errno_and_which_changes() {
    const TEST: &str = "a_refused_update_says_errno_and_which_changes";
    in_netns(TEST, |nl| async move {
        if !kernel_has_wireguard(TEST, &nl).await {
            return;
        }
        let nl = Arc::new(nl);
        let device = KernelDevice::new(nl.clone());
        device.ensure(contract::DEVICE).await.expect("create");
        // Bringing the device up makes a port in use a refusal: two devices on one port.
        let other = "wgct1";
        device
            .ensure(other)
            .await
            .expect("create the second device");
        for name in [contract::DEVICE, other] {
            let link = nl.link_get(name).await.expect("get").expect("exists");
            nl.link_set_up(link.index, true).await.expect("up");
        }
        let port = |p| wgcable_peers::DeviceUpdate {
            listen_port: Some(p),
            ..Default::default()
        };
        device.apply(other, &port(51999)).await.expect("first port");
        let err = device
            .apply(contract::DEVICE, &port(51999))
            .await
            .expect_err("a port in use");
        assert_eq!(err.errno(), Some(libc_eaddrinuse()), "{err}");
        assert_eq!(err.rejected_peer_changes(), Some(0..0), "{err}");
        let text = err.to_string();
        assert!(text.contains("message 1 of 1"), "{text}");
        assert!(
            std::error::Error::source(&err).is_some_and(|s| s.to_string().contains("errno 98")),
            "{err:?}"
        );
        device.delete(other).await.expect("delete");
        device.delete(contract::DEVICE).await.expect("delete");
    });
}

fn libc_eaddrinuse() -> i32 {
    98
}
