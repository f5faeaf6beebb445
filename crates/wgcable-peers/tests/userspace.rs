//! The userspace backend against the real `wireguard-go`.
//!
//! Each test runs in the shared harness (`wgcable_netlink::testing::isolated`): a thread of its
//! own in a fresh network namespace AND a private mount namespace with a tmpfs on
//! `/run/wireguard` (`/var/run` is a symlink to `/run`), so neither its links nor its control
//! socket can meet anything else on the host. `wireguard-go` started from that thread inherits
//! both namespaces.
//!
//! Needs root and `wireguard-go`; without them each test prints one line saying it was
//! skipped - unless `CI` is set, where that is a failure.

use std::collections::BTreeSet;
use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use ipnet::IpNet;
use wgcable_api::{Endpoint, EndpointSpec, NatEndpointInfo, BACKEND_WIREGUARD};
use wgcable_keys::{PresharedKey, PrivateKey, PublicKey, DEFAULT_PSK};
use wgcable_netlink::testing::{self, Isolation};
use wgcable_netlink::{Netlink, RtNetlink};
use wgcable_peers::{
    desired_peers, plan, BackendKind, BackendPreference, DesiredPeer, DeviceStatus, DeviceUpdate,
    LocalPeerConfig, PeerConfig, UserspaceConfig, UserspaceDevice, WgDevice,
};

const DEVICE: &str = "wgtest0";

/// Why the test cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (network and mount namespaces)".to_owned());
    }
    if let Err(e) = UserspaceConfig::from_env().resolve_implementation() {
        return Some(format!("no userspace WireGuard: {e}"));
    }
    None
}

/// Runs `body` in fresh network and mount namespaces (the shared harness), after checking
/// that wireguard-go is there.
fn run_isolated<F, Fut>(test: &'static str, body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<()>>,
{
    if let Some(reason) = missing_prerequisite() {
        testing::skip(test, &reason);
        return;
    }
    testing::isolated(
        test,
        Isolation::with_run_wireguard(),
        move |_netlink| async move {
            if let Err(e) = body().await {
                panic!("{test}: {e:#}");
            }
        },
    );
}

/// Runs `steps`, then deletes the device whatever happened, so no wireguard-go is left behind.
async fn with_cleanup<Fut: Future<Output = Result<()>>>(
    device: &UserspaceDevice,
    steps: Fut,
) -> Result<()> {
    let result = steps.await;
    let cleanup = device
        .delete(DEVICE)
        .await
        .context("deleting the device during cleanup");
    result?;
    cleanup
}

/// The pid of the wireguard-go serving `device`, by its command line.
fn daemon_pids(device: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .collect();
        let is_ours = args.len() == 2
            && Path::new(std::str::from_utf8(args[0]).unwrap_or_default()).file_name()
                == Some(std::ffi::OsStr::new("wireguard-go"))
            && args[1] == device.as_bytes();
        let zombie = fs::read_to_string(entry.path().join("stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if is_ours && !zombie {
            pids.push(pid);
        }
    }
    pids
}

/// The daemon of `DEVICE` in this network namespace (other tests run their own in theirs).
async fn our_daemon(netlink: &RtNetlink) -> Result<i32> {
    ensure!(
        netlink.link_get(DEVICE).await?.is_some(),
        "link {DEVICE} is missing"
    );
    let socket = UserspaceConfig::from_env().socket_path(DEVICE);
    let table = fs::read_to_string("/proc/thread-self/net/unix")?;
    let inodes: Vec<String> = table
        .lines()
        .filter(|l| l.ends_with(&*socket.to_string_lossy()))
        .filter_map(|l| l.split_whitespace().nth(6).map(|i| format!("socket:[{i}]")))
        .collect();
    for pid in daemon_pids(DEVICE) {
        let fds = fs::read_dir(format!("/proc/{pid}/fd"))?;
        let holds = fds.flatten().any(|fd| {
            fs::read_link(fd.path())
                .is_ok_and(|t| inodes.iter().any(|i| Path::new(i) == t.as_path()))
        });
        if holds {
            return Ok(pid);
        }
    }
    bail!("no wireguard-go process serves {}", socket.display())
}

fn process_alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

fn netlink() -> Result<RtNetlink> {
    let (netlink, connection) = RtNetlink::connect()?;
    tokio::spawn(connection);
    Ok(netlink)
}

fn endpoint(cluster: &str, key: &PublicKey, subnets: &[&str], use_ip: &str) -> NatEndpointInfo {
    let mut spec = EndpointSpec {
        cluster_id: cluster.to_owned(),
        cable_name: format!("submariner-cable-{cluster}"),
        hostname: format!("gw-{cluster}"),
        subnets: subnets.iter().map(|s| (*s).to_owned()).collect(),
        private_ip: use_ip.to_owned(),
        backend: BACKEND_WIREGUARD.to_owned(),
        ..EndpointSpec::default()
    };
    spec.set_public_key(key);
    NatEndpointInfo {
        endpoint: Endpoint::new(spec),
        use_ip: use_ip.to_owned(),
        use_nat: false,
    }
}

fn local(private: &PrivateKey) -> LocalPeerConfig {
    LocalPeerConfig {
        cluster_id: "local".to_owned(),
        public_key: private.public_key(),
        listen_port: 4500,
        preshared_key: PresharedKey::from_passphrase(DEFAULT_PSK),
        local_subnets: vec!["10.0.0.0/16".parse().expect("net")],
        keepalive: 10,
    }
}

fn desired(local: &LocalPeerConfig, endpoints: &[NatEndpointInfo]) -> Result<Vec<DesiredPeer>> {
    let out = desired_peers(local, endpoints);
    ensure!(out.rejected.is_empty(), "refused: {:?}", out.rejected);
    Ok(out.peers)
}

fn as_set(nets: &[IpNet]) -> BTreeSet<IpNet> {
    nets.iter().copied().collect()
}

/// The device holds exactly `want`, field by field.
fn assert_peers(status: &DeviceStatus, want: &[DesiredPeer]) -> Result<()> {
    ensure!(
        status.peers.len() == want.len(),
        "{} peers on the device, {} wanted",
        status.peers.len(),
        want.len()
    );
    for peer in want {
        let have = status
            .peers
            .iter()
            .find(|p| p.config.public_key == peer.config.public_key)
            .with_context(|| format!("peer of cluster {} is missing", peer.cluster_id))?;
        ensure!(
            have.config.endpoint == peer.config.endpoint,
            "endpoint of {}",
            peer.cluster_id
        );
        ensure!(
            as_set(&have.config.allowed_ips) == as_set(&peer.config.allowed_ips),
            "allowed IPs of {}: {:?}",
            peer.cluster_id,
            have.config.allowed_ips
        );
        ensure!(
            have.config.persistent_keepalive == Some(10),
            "keepalive of {}",
            peer.cluster_id
        );
        ensure!(
            have.config.preshared_key == peer.config.preshared_key,
            "PSK of {}",
            peer.cluster_id
        );
        ensure!(
            have.last_handshake.is_none(),
            "no handshake can have happened"
        );
    }
    Ok(())
}

async fn read(device: &UserspaceDevice) -> Result<DeviceStatus> {
    device.read(DEVICE).await?.context("the device vanished")
}

fn peer_config<'a>(status: &'a DeviceStatus, key: &PublicKey) -> Result<&'a PeerConfig> {
    status
        .peers
        .iter()
        .find(|p| &p.config.public_key == key)
        .map(|p| &p.config)
        .context("peer missing")
}

#[test]
fn device_lifecycle_with_peers() {
    run_isolated("device_lifecycle_with_peers", || async {
        let netlink = netlink()?;
        let device = UserspaceDevice::new(UserspaceConfig::from_env());
        with_cleanup(&device, async {
            ensure!(
                device.ensure(DEVICE).await?,
                "the first ensure creates the device"
            );
            ensure!(!device.ensure(DEVICE).await?, "the second finds it");
            let pid = our_daemon(&netlink).await?;
            // Its own process group: a signal to the gateway's group does not reach it.
            let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
            let pgrp: i32 = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(2))
                .context("pgrp")?
                .parse()?;
            ensure!(
                pgrp != nix::unistd::getpgrp().as_raw(),
                "wireguard-go shares our process group"
            );

            let fresh = read(&device).await?;
            ensure!(
                fresh.public_key.is_none() && fresh.peers.is_empty(),
                "{fresh:?}"
            );

            // Configure the device and three peers in one update.
            let private = PrivateKey::generate();
            let local = local(&private);
            let keys: Vec<PublicKey> = (0..4)
                .map(|_| PrivateKey::generate().public_key())
                .collect();
            let mut endpoints = vec![
                endpoint("a", &keys[0], &["10.1.0.0/16", "fd01::/64"], "192.0.2.1"),
                endpoint("b", &keys[1], &["10.2.0.0/16"], "2001:db8::2"),
                endpoint("c", &keys[2], &["10.3.0.0/16", "10.33.0.0/16"], "192.0.2.3"),
            ];
            let want = desired(&local, &endpoints)?;
            let first = plan(&want, Some(&fresh));
            ensure!(first.add.len() == 3 && first.len() == 3, "{first:?}");
            let mut update = first.to_update();
            update.private_key = Some(private.clone());
            update.listen_port = Some(4500);
            device.apply(DEVICE, &update).await?;

            let status = read(&device).await?;
            ensure!(
                status.public_key == Some(private.public_key()),
                "public key"
            );
            ensure!(
                status.listen_port == Some(4500),
                "listen port {:?}",
                status.listen_port
            );
            assert_peers(&status, &want)?;
            let again = plan(&want, Some(&status));
            ensure!(
                again.is_empty(),
                "a device that is right needs nothing: {again:?}"
            );

            // A gateway restart: a new device handle finds the running process.
            let restarted = UserspaceDevice::new(UserspaceConfig::from_env());
            ensure!(!restarted.ensure(DEVICE).await?, "the data plane survived");
            ensure!(our_daemon(&netlink).await? == pid, "same process");

            // Cluster b moves: new endpoint and subnets. Only b changes.
            endpoints[1] = endpoint("b", &keys[1], &["10.22.0.0/16"], "192.0.2.22");
            let want = desired(&local, &endpoints)?;
            let second = plan(&want, Some(&status));
            ensure!(second.update.len() == 1 && second.len() == 1, "{second:?}");
            ensure!(
                second.replace_allowed_ips.contains(&keys[1]),
                "allowed IPs replaced"
            );
            device.apply(DEVICE, &second.to_update()).await?;
            let after = read(&device).await?;
            assert_peers(&after, &want)?;
            for untouched in [&keys[0], &keys[2]] {
                ensure!(
                    peer_config(&after, untouched)? == peer_config(&status, untouched)?,
                    "another peer changed"
                );
            }

            // Cluster c goes away.
            endpoints.pop();
            let want = desired(&local, &endpoints)?;
            let third = plan(&want, Some(&after));
            ensure!(
                third.remove == vec![keys[2]] && third.len() == 1,
                "{third:?}"
            );
            device.apply(DEVICE, &third.to_update()).await?;
            let after_remove = read(&device).await?;
            assert_peers(&after_remove, &want)?;

            // Cluster a changes its key: the old peer is replaced.
            endpoints[0] = endpoint("a", &keys[3], &["10.1.0.0/16", "fd01::/64"], "192.0.2.1");
            let want = desired(&local, &endpoints)?;
            let fourth = plan(&want, Some(&after_remove));
            ensure!(
                fourth.remove == vec![keys[0]] && fourth.add.len() == 1,
                "{fourth:?}"
            );
            device.apply(DEVICE, &fourth.to_update()).await?;
            assert_peers(&read(&device).await?, &want)?;

            // A request the implementation refuses comes back with its errno, and the device
            // keeps working: here its new port is taken.
            let taken = std::net::UdpSocket::bind("0.0.0.0:0")?;
            let port = taken.local_addr()?.port();
            let refused = DeviceUpdate {
                listen_port: Some(port),
                ..DeviceUpdate::default()
            };
            match device.apply(DEVICE, &refused).await {
                Err(wgcable_peers::Error::UapiRejected { errno, .. }) => {
                    ensure!(
                        errno == nix::errno::Errno::EADDRINUSE as i32,
                        "errno {errno}"
                    )
                }
                other => bail!("expected a rejection, got {other:?}"),
            }
            drop(taken);
            assert_peers(&read(&device).await?, &want)?;

            // Delete: the process is gone, and so are the socket and the link.
            device.delete(DEVICE).await?;
            ensure!(!process_alive(pid), "wireguard-go {pid} still runs");
            ensure!(
                !UserspaceConfig::from_env().socket_path(DEVICE).exists(),
                "socket left behind"
            );
            ensure!(
                netlink.link_get(DEVICE).await?.is_none(),
                "link left behind"
            );
            ensure!(device.read(DEVICE).await?.is_none(), "read after delete");
            device
                .delete(DEVICE)
                .await
                .context("deleting an absent device")?;
            Ok(())
        })
        .await
    });
}

#[test]
fn a_crashed_daemon_is_restarted() {
    run_isolated("a_crashed_daemon_is_restarted", || async {
        let netlink = netlink()?;
        let device = UserspaceDevice::new(UserspaceConfig::from_env());
        with_cleanup(&device, async {
            device.ensure(DEVICE).await?;
            let pid = our_daemon(&netlink).await?;
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while process_alive(pid) || netlink.link_get(DEVICE).await?.is_some() {
                ensure!(
                    tokio::time::Instant::now() < deadline,
                    "wireguard-go survived SIGKILL"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let socket: PathBuf = UserspaceConfig::from_env().socket_path(DEVICE);
            ensure!(socket.exists(), "SIGKILL leaves the socket file behind");
            ensure!(
                device.read(DEVICE).await?.is_none(),
                "a dead socket is no device"
            );

            ensure!(device.ensure(DEVICE).await?, "restarted");
            let new_pid = our_daemon(&netlink).await?;
            ensure!(new_pid != pid, "a new process");
            ensure!(
                read(&device).await?.peers.is_empty(),
                "the new device answers"
            );
            Ok(())
        })
        .await
    });
}

#[test]
fn a_thousand_peers_in_one_update() {
    run_isolated("a_thousand_peers_in_one_update", || async {
        let device = UserspaceDevice::new(UserspaceConfig::from_env());
        with_cleanup(&device, async {
            device.ensure(DEVICE).await?;
            let private = PrivateKey::generate();
            let local = local(&private);
            let endpoints: Vec<NatEndpointInfo> = (0..1000u32)
                .map(|i| {
                    let [_, _, hi, lo] = i.to_be_bytes();
                    endpoint(
                        &format!("c{i}"),
                        &PrivateKey::generate().public_key(),
                        &[&format!("10.{}.{lo}.0/24", 100 + hi)],
                        &format!("198.18.{hi}.{lo}"),
                    )
                })
                .collect();
            let want = desired(&local, &endpoints)?;
            let update = plan(&want, device.read(DEVICE).await?.as_ref()).to_update();
            ensure!(update.peers.len() == 1000);
            device.apply(DEVICE, &update).await?;
            let status = read(&device).await?;
            assert_peers(&status, &want)?;
            ensure!(plan(&want, Some(&status)).is_empty(), "read back exactly");
            Ok(())
        })
        .await
    });
}

#[test]
fn auto_falls_back_to_userspace_on_this_kernel() {
    run_isolated("auto_falls_back_to_userspace_on_this_kernel", || async {
        let netlink = Arc::new(netlink()?);
        let device =
            wgcable_peers::select_backend(BackendPreference::Auto, netlink.clone(), DEVICE).await?;
        match device.kind() {
            BackendKind::Userspace => {
                ensure!(
                    netlink.link_get(DEVICE).await?.is_none(),
                    "no kernel link was left"
                );
                ensure!(device.ensure(DEVICE).await?, "created by wireguard-go");
                let link = netlink.link_get(DEVICE).await?.context("TUN link")?;
                ensure!(link.kind.as_deref() == Some("tun"), "kind {:?}", link.kind);
                // Once running, auto picks userspace again without probing the kernel.
                let again =
                    wgcable_peers::select_backend(BackendPreference::Auto, netlink.clone(), DEVICE)
                        .await?;
                ensure!(again.kind() == BackendKind::Userspace);
            }
            BackendKind::Kernel => {
                // This kernel has WireGuard: the probe created the link.
                eprintln!("auto_falls_back_to_userspace_on_this_kernel: the kernel has WireGuard; checked the kernel path instead");
                ensure!(
                    device.ensure(DEVICE).await?,
                    "the probe's link counts as created"
                );
            }
        }
        device.delete(DEVICE).await?;
        ensure!(
            netlink.link_get(DEVICE).await?.is_none(),
            "link left behind"
        );
        Ok(())
    });
}

/// The device contract every backend passes (the fake, wireguard-go, the kernel in the VM).
#[test]
fn userspace_device_passes_the_device_contract() {
    run_isolated("userspace_device_passes_the_device_contract", || async {
        let netlink = Arc::new(netlink()?);
        let device = UserspaceDevice::new(UserspaceConfig::from_env());
        wgcable_peers::contract::device_contract(&device, &*netlink).await;
        Ok(())
    });
}
