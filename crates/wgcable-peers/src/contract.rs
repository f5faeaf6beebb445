//! The device contract (feature `testing`): one suite that every [`WgDevice`] must pass, run
//! against [`crate::FakeWgDevice`] (no root), the userspace backend with `wireguard-go` (root,
//! fresh network and mount namespaces) and [`crate::KernelDevice`] (in the VM of `cargo xtask
//! vm test`, where the kernel has WireGuard). A fake that fails it is a bug in the fake.
//!
//! The suite asserts only what WireGuard itself guarantees: peers and allowed IPs are compared
//! as sets (the kernel keeps insertion order, wireguard-go does not).
//!
//! It panics on the first broken promise, with a message saying which.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ipnet::IpNet;
use wgcable_keys::{PresharedKey, PrivateKey, PublicKey};
use wgcable_netlink::{LinkKind, Netlink};

use crate::{
    plan, sync_peers, DesiredPeer, DeviceStatus, DeviceUpdate, PeerChange, PeerConfig, WgDevice,
};

/// Device names the suite uses (short enough for any interface name rule).
pub const DEVICE: &str = "wgct0";
const MISSING: &str = "wgctmissing";
const FOREIGN: &str = "wgctveth";

/// A peer config numbered `i`: dual-stack allowed IPs, an IPv4 or IPv6 endpoint, keepalive.
pub fn peer(i: u32, nets: u32) -> PeerConfig {
    let mut key = [0u8; 32];
    key[..4].copy_from_slice(&i.to_be_bytes());
    key[31] = 0x5a;
    let [_, b, hi, lo] = i.to_be_bytes();
    let endpoint: SocketAddr = if i % 2 == 0 {
        SocketAddr::from(([198, 18 + b, hi, lo], 4500))
    } else {
        format!("[2001:db8::{i:x}]:4500")
            .parse()
            .expect("v6 endpoint")
    };
    PeerConfig {
        public_key: PublicKey::from_bytes(key),
        endpoint: Some(endpoint),
        allowed_ips: nets_of(i, nets),
        persistent_keepalive: Some(10),
        preshared_key: (i % 3 == 0).then(|| PresharedKey::from_bytes([0x11; 32])),
    }
}

/// `n` (at most 4) IPv4 /24s and `n` IPv6 /64s that belong to peer `i` alone (`i` < 16,384).
pub fn nets_of(i: u32, n: u32) -> Vec<IpNet> {
    let [_, _, hi, lo] = i.to_be_bytes();
    (0..n.min(4))
        .flat_map(|j| {
            [
                format!("10.{}.{lo}.0/24", u32::from(hi % 64) + 64 * j)
                    .parse()
                    .expect("v4"),
                format!("fd00:{:x}:{j:x}::/64", i & 0xffff)
                    .parse()
                    .expect("v6"),
            ]
        })
        .collect()
}

fn sorted(mut nets: Vec<IpNet>) -> Vec<IpNet> {
    nets.sort();
    nets
}

/// The peers of `status` by key, their allowed IPs sorted: what WireGuard promises.
pub fn by_key(status: &DeviceStatus) -> BTreeMap<PublicKey, PeerConfig> {
    let mut out = BTreeMap::new();
    for p in &status.peers {
        let mut config = p.config.clone();
        config.allowed_ips = sorted(config.allowed_ips);
        let key = config.public_key;
        assert!(
            out.insert(key, config).is_none(),
            "device {} lists a peer twice",
            status.name
        );
    }
    out
}

/// What the device must hold after `configs` were written: the same peers, fields and
/// allowed-IP sets, nothing twice, nothing more.
pub fn assert_holds(status: &DeviceStatus, configs: &[PeerConfig], what: &str) {
    let got = by_key(status);
    assert_eq!(
        got.len(),
        configs.len(),
        "{what}: {} peers read back, {} written",
        got.len(),
        configs.len()
    );
    for want in configs {
        let Some(have) = got.get(&want.public_key) else {
            panic!("{what}: a written peer is missing");
        };
        let mut want = want.clone();
        want.allowed_ips = sorted(want.allowed_ips.iter().map(IpNet::trunc).collect());
        assert_eq!(have, &want, "{what}: a peer reads back differently");
    }
}

async fn read(device: &dyn WgDevice, name: &str) -> DeviceStatus {
    device
        .read(name)
        .await
        .unwrap_or_else(|e| panic!("reading {name}: {e}"))
        .unwrap_or_else(|| panic!("{name} does not exist"))
}

async fn apply(device: &dyn WgDevice, update: DeviceUpdate, what: &str) {
    apply_to(device, DEVICE, update, what).await
}

async fn apply_to(device: &dyn WgDevice, name: &str, update: DeviceUpdate, what: &str) {
    device
        .apply(name, &update)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

fn peers(changes: Vec<PeerChange>) -> DeviceUpdate {
    DeviceUpdate {
        peers: changes,
        ..DeviceUpdate::default()
    }
}

/// The contract. `netlink` is the same kernel (or fake kernel) the device lives in.
pub async fn device_contract(device: &dyn WgDevice, netlink: &dyn Netlink) {
    // A missing device: reads as none, cannot be configured, deleting it is fine.
    assert_eq!(device.read(MISSING).await.expect("read missing"), None);
    let err = device
        .apply(MISSING, &DeviceUpdate::default())
        .await
        .expect_err("configuring a missing device");
    assert!(err.is_no_device(), "a missing device: {err}");
    device
        .delete(MISSING)
        .await
        .expect("deleting a missing device");

    // Create, then adopt.
    assert!(
        device.ensure(DEVICE).await.expect("create"),
        "ensure creates"
    );
    assert!(
        !device.ensure(DEVICE).await.expect("adopt"),
        "ensure adopts"
    );
    let status = read(device, DEVICE).await;
    assert!(status.peers.is_empty(), "a new device has no peers");

    // Key and port.
    let key = PrivateKey::from_bytes([0x42; 32]);
    apply(
        device,
        DeviceUpdate {
            private_key: Some(key.clone()),
            listen_port: Some(51820),
            peers: Vec::new(),
        },
        "setting key and port",
    )
    .await;
    let status = read(device, DEVICE).await;
    assert_eq!(status.public_key, Some(key.public_key()), "public key");
    assert_eq!(status.listen_port, Some(51820), "listen port");
    apply(
        device,
        DeviceUpdate {
            listen_port: Some(51821),
            ..DeviceUpdate::default()
        },
        "changing the port",
    )
    .await;
    let status = read(device, DEVICE).await;
    assert_eq!(status.listen_port, Some(51821), "changed port");
    assert_eq!(status.public_key, Some(key.public_key()), "key kept");

    // Add peers (IPv4 and IPv6 endpoints, PSK or not), read them back.
    let mut configs: Vec<PeerConfig> = (0..4).map(|i| peer(i, 2)).collect();
    apply(
        device,
        peers(configs.iter().cloned().map(PeerChange::Add).collect()),
        "adding peers",
    )
    .await;
    let status = read(device, DEVICE).await;
    assert_holds(&status, &configs, "after adding 4 peers");
    for p in &status.peers {
        assert_eq!(p.last_handshake, None, "no handshake yet");
        assert_eq!((p.rx_bytes, p.tx_bytes), (0, 0), "no traffic yet");
    }

    // An update without endpoint keeps the endpoint; keepalive and PSK are set.
    let mut changed = configs[0].clone();
    changed.endpoint = None;
    changed.persistent_keepalive = None;
    changed.preshared_key = Some(PresharedKey::from_bytes([0x22; 32]));
    apply(
        device,
        peers(vec![PeerChange::Update {
            config: changed.clone(),
            replace_allowed_ips: false,
        }]),
        "updating a peer without endpoint",
    )
    .await;
    changed.endpoint = configs[0].endpoint;
    configs[0] = changed;
    assert_holds(
        &read(device, DEVICE).await,
        &configs,
        "after an update without endpoint",
    );

    // An update with a new endpoint sets it.
    configs[1].endpoint = Some("192.0.2.77:4600".parse().expect("addr"));
    apply(
        device,
        peers(vec![PeerChange::Update {
            config: configs[1].clone(),
            replace_allowed_ips: false,
        }]),
        "moving a peer's endpoint",
    )
    .await;
    assert_holds(
        &read(device, DEVICE).await,
        &configs,
        "after a new endpoint",
    );

    // Allowed IPs: without replace they are added, with replace they are exactly the new list.
    let extra: IpNet = "10.250.0.0/16".parse().expect("net");
    let mut grown = configs[2].clone();
    grown.allowed_ips = vec![extra];
    apply(
        device,
        peers(vec![PeerChange::Update {
            config: grown,
            replace_allowed_ips: false,
        }]),
        "adding an allowed IP",
    )
    .await;
    configs[2].allowed_ips.push(extra);
    assert_holds(
        &read(device, DEVICE).await,
        &configs,
        "after adding an allowed IP",
    );
    configs[2].allowed_ips = vec![
        "10.251.0.0/16".parse().expect("net"),
        "fd00:251::/64".parse().expect("net"),
    ];
    apply(
        device,
        peers(vec![PeerChange::Update {
            config: configs[2].clone(),
            replace_allowed_ips: true,
        }]),
        "replacing allowed IPs",
    )
    .await;
    assert_holds(
        &read(device, DEVICE).await,
        &configs,
        "after replacing allowed IPs",
    );

    // An allowed IP given to another peer is taken from the one that had it.
    let moved = configs[2].allowed_ips[0];
    let mut taker = configs[3].clone();
    taker.allowed_ips = vec![moved];
    apply(
        device,
        peers(vec![PeerChange::Update {
            config: taker,
            replace_allowed_ips: false,
        }]),
        "moving an allowed IP",
    )
    .await;
    configs[2].allowed_ips.retain(|n| *n != moved);
    configs[3].allowed_ips.push(moved);
    assert_holds(
        &read(device, DEVICE).await,
        &configs,
        "after moving an allowed IP",
    );

    // Adding a peer that exists updates it in place.
    configs[3].persistent_keepalive = Some(25);
    apply(
        device,
        peers(vec![PeerChange::Update {
            config: configs[3].clone(),
            replace_allowed_ips: true,
        }]),
        "re-adding a peer",
    )
    .await;
    assert_holds(
        &read(device, DEVICE).await,
        &configs,
        "after re-adding a peer",
    );

    // Remove a peer; removing one that is not there is fine and touches nothing.
    let gone = configs.remove(1);
    apply(
        device,
        peers(vec![
            PeerChange::Remove(gone.public_key),
            PeerChange::Remove(PublicKey::from_bytes([0xEE; 32])),
        ]),
        "removing a peer and an unknown one",
    )
    .await;
    assert_holds(&read(device, DEVICE).await, &configs, "after removing");
    // Its allowed IPs are free again: another peer can take them.
    let mut heir = configs[0].clone();
    heir.allowed_ips.extend(gone.allowed_ips.iter().copied());
    apply(
        device,
        peers(vec![PeerChange::Update {
            config: heir.clone(),
            replace_allowed_ips: true,
        }]),
        "taking a removed peer's allowed IPs",
    )
    .await;
    configs[0] = heir;
    assert_holds(
        &read(device, DEVICE).await,
        &configs,
        "after taking freed allowed IPs",
    );

    // A link of another kind (a veth: every kernel here has it) is not ours: never configured or deleted.
    netlink
        .link_add(
            FOREIGN,
            &LinkKind::Veth {
                peer: format!("{FOREIGN}p"),
            },
        )
        .await
        .expect("creating a veth link");
    assert!(
        device.ensure(FOREIGN).await.is_err(),
        "ensure on a veth link fails"
    );
    match device.read(FOREIGN).await {
        Ok(None) | Err(_) => {}
        Ok(Some(_)) => panic!("a veth link reads as a WireGuard device"),
    }
    let _ = device.delete(FOREIGN).await;
    let link = netlink
        .link_get(FOREIGN)
        .await
        .expect("looking up the veth")
        .expect("the veth link survives");
    assert_eq!(link.kind.as_deref(), Some("veth"));
    netlink
        .link_del(link.index)
        .await
        .expect("removing the veth");

    // Delete: gone, and its link too.
    device.delete(DEVICE).await.expect("delete");
    assert_eq!(device.read(DEVICE).await.expect("read deleted"), None);
    assert!(
        netlink
            .link_get(DEVICE)
            .await
            .expect("link lookup")
            .is_none(),
        "the link is gone"
    );
}

/// Large devices: for each size, that many dual-stack peers written in one update read back
/// exactly equal; then one peer with 1,000 allowed IPs; then a resync at that size changes
/// nothing.
///
/// The large devices (`wgbig0`, `wgbig1`, ...) are left for the caller's network namespace to
/// remove: the kernel deletes a link's peers one RCU grace period each (about 20 ms apiece
/// under TCG, so 100 s for 5,000), and a namespace's teardown does that in the background.
pub async fn large_devices(device: &dyn WgDevice, sizes: &[u32]) {
    for (k, &n) in sizes.iter().enumerate() {
        let name = format!("wgbig{k}");
        device.ensure(&name).await.expect("create");
        let configs: Vec<PeerConfig> = (0..n).map(|i| peer(i, 1)).collect();
        apply_to(
            device,
            &name,
            peers(configs.iter().cloned().map(PeerChange::Add).collect()),
            "adding many peers",
        )
        .await;
        let status = read(device, &name).await;
        assert_holds(&status, &configs, &format!("{n} peers"));
    }

    // One peer with 1,000 allowed IPs (500 per family), among ordinary ones.
    device.ensure(DEVICE).await.expect("create");
    let mut configs: Vec<PeerConfig> = (0..20).map(|i| peer(i, 1)).collect();
    let mut big = peer(1_000_000, 1);
    big.allowed_ips = (0..500u32)
        .flat_map(|j| {
            let [_, _, hi, lo] = j.to_be_bytes();
            [
                format!("172.{}.{lo}.0/24", 16 + hi)
                    .parse::<IpNet>()
                    .expect("v4"),
                format!("fd01:{j:x}::/64").parse().expect("v6"),
            ]
        })
        .collect();
    configs.push(big);
    apply(
        device,
        peers(configs.iter().cloned().map(PeerChange::Add).collect()),
        "adding a peer with 1,000 allowed IPs",
    )
    .await;
    let status = read(device, DEVICE).await;
    assert_holds(&status, &configs, "a peer with 1,000 allowed IPs");

    // A resync at that size plans nothing and touches nothing.
    let desired: Vec<DesiredPeer> = configs
        .iter()
        .map(|c| DesiredPeer {
            cluster_id: format!("c{}", c.public_key),
            config: c.clone(),
            use_ip: c.endpoint.map(|e| e.ip()).unwrap_or([0, 0, 0, 0].into()),
        })
        .collect();
    let resync = plan(&desired, Some(&status));
    assert!(
        resync.is_empty(),
        "a resync of what was written plans changes: {resync:?}"
    );
    let applied = sync_peers(device, DEVICE, &desired).await.expect("resync");
    assert!(applied.is_empty(), "a resync changed something");
    device.delete(DEVICE).await.expect("delete");
}
