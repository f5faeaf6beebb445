//! WireGuard devices for wgcable: the backends that create, read, configure and delete a
//! device, the pure planning that turns Submariner endpoints into WireGuard peers, and the
//! pure state machine that judges each peer's connection.
//!
//! # Map
//! - [`WgDevice`]: the device seam, implemented by [`KernelDevice`] (a netlink link of kind
//!   `wireguard`, configured over WireGuard's generic netlink with messages built from `netlink_packet_wireguard`) and
//!   [`UserspaceDevice`] (an implementation such as `wireguard-go` in its own process,
//!   configured over its control socket with our own small UAPI client), and mocked as
//!   `MockWgDevice` behind the `testing` feature. [`select_backend`] picks one.
//! - Behind `testing`: `FakeWgDevice`, an in-memory device that behaves as the kernel does,
//!   and `contract`, the one suite every backend passes (the fake without root, wireguard-go
//!   in namespaces, the kernel in `cargo xtask vm test`), so the fake cannot drift.
//! - Planning, no I/O: [`desired_peers`] (endpoints -> peers, refusing hostile or broken
//!   endpoints one by one) and [`plan`] (observed device -> the minimal [`PeerPlan`], applied as
//!   one [`DeviceUpdate`]). [`sync_peers`] is read, plan, apply once.
//! - Status, no clock: [`judge`] applies Submariner's connection rules to successive looks.
//!
//! # Invariants
//! - A peer that is already right is never touched, so its session and handshake survive a
//!   reconcile; all changes of a reconcile go to the device in one request.
//! - Key material never appears in `Debug`, `Display`, errors or logs; the device status holds
//!   the public key only.
//! - Blocking I/O (UAPI socket, generic netlink, `/proc`) runs on tokio's blocking pool.
//!
//! # Userspace pitfalls, and what is done about them
//! - The data plane must survive the gateway: `wireguard-go` is started without `-f` so it
//!   daemonizes, in a process group of its own; a restarted gateway finds its live socket and
//!   keeps using it (see [`userspace`]).
//! - The socket directory `/var/run/wireguard` is per MOUNT namespace, not per network
//!   namespace: two gateways in two network namespaces that share a mount namespace see each
//!   other's sockets. Give each its own mount namespace (with its own `/run/wireguard`) or
//!   distinct device names. [`select_backend`] refuses a live socket whose device has no link
//!   in our network namespace rather than configure someone else's gateway.
//! - A handshake time of 0 means "never" in both the kernel and the UAPI protocol;
//!   the kernel backend and our UAPI client both map it to `None`.
//! - Some implementations have rejected in-place peer updates. `wireguard-go` (the one this
//!   crate is tested with) accepts them; an implementation that refuses answers with an errno,
//!   which is returned as [`Error::UapiRejected`] with its meaning rather than retried as
//!   remove-and-add (which would reset the session).
//! - `wireguard_control`'s userspace backend is not used: its `apply` starts `wireguard-go`
//!   on its own when the socket is missing, `println!`s, and loses the errno (see `uapi`).
//!
//! What this crate must NOT know about: routing (routes, rules, addresses and MTU are the
//! engine's, through `wgcable-netlink`), Kubernetes or how endpoints are discovered, metrics,
//! and the engine's own state. It spawns no long-running task.

mod book;
#[cfg(any(test, feature = "testing"))]
pub mod contract;
mod device;
mod error;
#[cfg(any(test, feature = "testing"))]
mod fake;
mod kernel;
mod plan;
mod prefix;
mod select;
mod status;
mod uapi;
pub mod userspace;

#[doc(hidden)]
pub use book::candidate_for_tests;
pub use book::{PeerBook, PeerDelta};
#[cfg(any(test, feature = "testing"))]
pub use device::MockWgDevice;
pub use device::{
    BackendKind, BackendPreference, DeviceStatus, DeviceUpdate, ParseBackendError, PeerChange,
    PeerConfig, PeerStatus, WgDevice,
};
pub use error::Error;
#[cfg(any(test, feature = "testing"))]
pub use fake::{DeviceCall, FakeWgDevice};
pub use kernel::{KernelDevice, KernelRefusal};
pub use plan::{
    desired_peers, desired_peers_of, desired_peers_validated, plan, plan_peers, DesiredPeer,
    DesiredPeers, LocalPeerConfig, PeerCandidate, PeerError, PeerPlan, DEFAULT_LISTEN_PORT,
};
pub use select::{find_existing, select_backend, select_backend_with};
pub use status::{judge, PeerTrack, HANDSHAKE_TIMEOUT, KEEPALIVE};
pub use userspace::{UserspaceConfig, UserspaceDevice};

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use uapi::fuzz_decode_get;

/// Reads device `name`, plans the peer changes to reach `desired`, and applies them in one
/// update if there are any. Returns the plan that was applied (empty: nothing was touched).
pub async fn sync_peers(
    device: &dyn WgDevice,
    name: &str,
    desired: &[DesiredPeer],
) -> Result<PeerPlan, Error> {
    let observed = device.read(name).await?;
    let plan = plan(desired, observed.as_ref());
    if !plan.is_empty() {
        device.apply(name, &plan.to_update()).await?;
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mockall::predicate::eq;
    use std::net::{IpAddr, SocketAddr};
    use wgcable_keys::PublicKey;

    fn desired(i: u32) -> DesiredPeer {
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(&i.to_be_bytes());
        let [_, _, hi, lo] = i.to_be_bytes();
        let ip = IpAddr::from([198, 18, hi, lo]);
        DesiredPeer {
            cluster_id: format!("c{i}"),
            config: PeerConfig {
                public_key: PublicKey::from_bytes(key),
                endpoint: Some(SocketAddr::new(ip, 4500)),
                allowed_ips: vec![format!("10.{hi}.{lo}.0/24").parse().expect("net")],
                persistent_keepalive: Some(10),
                preshared_key: None,
            },
            use_ip: ip,
        }
    }

    fn status(peers: &[DesiredPeer]) -> DeviceStatus {
        DeviceStatus {
            name: "wg0".to_owned(),
            public_key: None,
            listen_port: Some(4500),
            peers: peers
                .iter()
                .map(|p| PeerStatus {
                    config: p.config.clone(),
                    last_handshake: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                })
                .collect(),
        }
    }

    #[tokio::test]
    async fn a_thousand_new_peers_take_one_apply() {
        let want: Vec<DesiredPeer> = (0..1000).map(desired).collect();
        let mut device = MockWgDevice::new();
        device
            .expect_read()
            .with(eq("wg0"))
            .times(1)
            .returning(|_| Ok(Some(status(&[]))));
        device
            .expect_apply()
            .withf(|name, update| {
                name == "wg0"
                    && update.peers.len() == 1000
                    && update.peers.iter().all(|c| matches!(c, PeerChange::Add(_)))
            })
            .times(1)
            .returning(|_, _| Ok(()));
        let plan = sync_peers(&device, "wg0", &want).await.expect("sync");
        assert_eq!(plan.add.len(), 1000);
    }

    #[tokio::test]
    async fn a_device_that_is_right_is_not_touched() {
        let want: Vec<DesiredPeer> = (0..10).map(desired).collect();
        let observed = status(&want);
        let mut device = MockWgDevice::new();
        device
            .expect_read()
            .times(1)
            .returning(move |_| Ok(Some(observed.clone())));
        device.expect_apply().times(0);
        let plan = sync_peers(&device, "wg0", &want).await.expect("sync");
        assert!(plan.is_empty());
    }

    #[tokio::test]
    async fn apply_errors_are_passed_on() {
        let mut device = MockWgDevice::new();
        device.expect_read().returning(|_| Ok(None));
        device.expect_apply().times(1).returning(|name, _| {
            Err(Error::NoDevice {
                device: name.to_owned(),
            })
        });
        let err = sync_peers(&device, "wg0", &[desired(1)])
            .await
            .expect_err("fails");
        assert!(err.is_no_device());
    }
}
