//! Choosing the backend for a device.

use std::sync::Arc;

use wgcable_netlink::{Link, LinkKind, Netlink};

use crate::device::{validate_device_name, BackendPreference, WgDevice};
use crate::kernel::KernelDevice;
use crate::userspace::{UserspaceConfig, UserspaceDevice};
use crate::Error;

/// The backend for `device_name`, with the userspace implementation from the environment
/// ([`UserspaceConfig::from_env`]). See [`select_backend_with`].
pub async fn select_backend<N: Netlink + ?Sized + 'static>(
    pref: BackendPreference,
    netlink: Arc<N>,
    device_name: &str,
) -> Result<Box<dyn WgDevice>, Error> {
    select_backend_with(pref, netlink, device_name, UserspaceConfig::from_env()).await
}

/// The backend for `device_name`.
///
/// `Auto`: an existing device keeps the backend that owns it (a live control socket means
/// userspace, a `wireguard` link means kernel); otherwise the kernel link is created, and if
/// the kernel says "operation not supported" the userspace implementation is used - logged
/// once, here. When neither can work the error names what is missing and how to install it.
///
/// A kernel link created here stays (and the first [`WgDevice::ensure`] reports it as
/// created), so probing costs nothing.
pub async fn select_backend_with<N: Netlink + ?Sized + 'static>(
    pref: BackendPreference,
    netlink: Arc<N>,
    device_name: &str,
    userspace: UserspaceConfig,
) -> Result<Box<dyn WgDevice>, Error> {
    validate_device_name(device_name)?;
    let userspace = UserspaceDevice::new(userspace);
    match pref {
        BackendPreference::Kernel => Ok(Box::new(KernelDevice::new(netlink))),
        BackendPreference::Userspace => {
            if userspace.is_live(device_name).await? {
                check_same_netns(&*netlink, device_name, &userspace).await?;
            } else {
                // Fail now, not at the first reconcile, when there is nothing to run.
                userspace.config().resolve_implementation()?;
            }
            Ok(Box::new(userspace))
        }
        BackendPreference::Auto => select_auto(netlink, device_name, userspace).await,
    }
}

/// The backend that owns an existing device `device_name`, found without creating anything:
/// a live control socket (served in our network namespace) means userspace, a `wireguard`
/// link means kernel; `None` when there is no such device. For `wgcable cleanup`, which must
/// never create what it is asked to remove.
pub async fn find_existing<N: Netlink + ?Sized + 'static>(
    netlink: Arc<N>,
    device_name: &str,
    userspace: UserspaceConfig,
) -> Result<Option<Box<dyn WgDevice>>, Error> {
    validate_device_name(device_name)?;
    let userspace = UserspaceDevice::new(userspace);
    if userspace.is_live(device_name).await? {
        check_same_netns(&*netlink, device_name, &userspace).await?;
        return Ok(Some(Box::new(userspace)));
    }
    match link_get(&*netlink, device_name).await? {
        Some(link) if link.kind.as_deref() == Some(LinkKind::Wireguard.as_str()) => {
            Ok(Some(Box::new(KernelDevice::new(netlink))))
        }
        Some(link) => Err(Error::WrongLinkKind {
            device: device_name.to_owned(),
            kind: link.kind.unwrap_or_else(|| "no kind".to_owned()),
        }),
        None => Ok(None),
    }
}

async fn link_get<N: Netlink + ?Sized>(netlink: &N, device: &str) -> Result<Option<Link>, Error> {
    netlink
        .link_get(device)
        .await
        .map_err(|source| Error::Netlink {
            device: device.to_owned(),
            op: "looking up",
            source: Box::new(source),
        })
}

/// A live control socket whose device has no link here is served from another network
/// namespace that shares our mount namespace: configuring it would configure someone else's
/// gateway.
async fn check_same_netns<N: Netlink + ?Sized>(
    netlink: &N,
    device: &str,
    userspace: &UserspaceDevice,
) -> Result<(), Error> {
    if link_get(netlink, device).await?.is_some() {
        return Ok(());
    }
    Err(Error::ForeignSocket {
        device: device.to_owned(),
        socket: userspace.config().socket_path(device),
    })
}

async fn select_auto<N: Netlink + ?Sized + 'static>(
    netlink: Arc<N>,
    device: &str,
    userspace: UserspaceDevice,
) -> Result<Box<dyn WgDevice>, Error> {
    if userspace.is_live(device).await? {
        check_same_netns(&*netlink, device, &userspace).await?;
        tracing::info!(
            device,
            "WireGuard backend: userspace (its process is already running)"
        );
        return Ok(Box::new(userspace));
    }
    let kernel = KernelDevice::new(netlink.clone());
    let existing = link_get(&*netlink, device).await?;
    if let Some(link) = existing {
        return if link.kind.as_deref() == Some(LinkKind::Wireguard.as_str()) {
            tracing::info!(
                device,
                "WireGuard backend: kernel (the device already exists)"
            );
            Ok(Box::new(kernel))
        } else {
            Err(Error::WrongLinkKind {
                device: device.to_owned(),
                kind: link.kind.unwrap_or_else(|| "no kind".to_owned()),
            })
        };
    }
    match netlink.link_add(device, &LinkKind::Wireguard).await {
        Ok(_) => {
            kernel.mark_created(device);
            tracing::info!(device, "WireGuard backend: kernel");
            Ok(Box::new(kernel))
        }
        // Created by someone else in between: decide again on what is there now.
        Err(e) if e.is_exists() => match link_get(&*netlink, device).await? {
            Some(link) if link.kind.as_deref() == Some(LinkKind::Wireguard.as_str()) => {
                Ok(Box::new(kernel))
            }
            Some(link) => Err(Error::WrongLinkKind {
                device: device.to_owned(),
                kind: link.kind.unwrap_or_else(|| "no kind".to_owned()),
            }),
            None => Err(Error::Netlink {
                device: device.to_owned(),
                op: "creating WireGuard",
                source: Box::new(e),
            }),
        },
        Err(kernel_err) if kernel_err.is_unsupported() => {
            match userspace.config().resolve_implementation() {
                Ok(implementation) => {
                    tracing::info!(
                        device,
                        implementation = %implementation.display(),
                        "WireGuard backend: userspace, because the kernel has no WireGuard support \
                         (creating a wireguard link: operation not supported)"
                    );
                    Ok(Box::new(userspace))
                }
                Err(Error::UserspaceNotFound {
                    implementation,
                    searched,
                }) => Err(Error::NoBackend {
                    device: device.to_owned(),
                    userspace: format!(
                        "the userspace implementation {implementation:?} was not found{searched}"
                    ),
                    kernel: Box::new(kernel_err),
                }),
                Err(other) => Err(other),
            }
        }
        Err(source) => Err(Error::Netlink {
            device: device.to_owned(),
            op: "creating WireGuard",
            source: Box::new(source),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::BackendKind;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use wgcable_netlink::{FakeNetlink, Method};

    /// A userspace config whose run dir is private to the test and whose implementation is a
    /// stub executable (present) or a path that does not exist (absent).
    fn userspace(dir: &Path, present: bool) -> UserspaceConfig {
        let implementation = if present {
            let path = dir.join("wireguard-go");
            fs::write(&path, "#!/bin/sh\nexit 1\n").expect("write stub");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
            path.into_os_string()
        } else {
            dir.join("nonexistent/wireguard-go").into_os_string()
        };
        UserspaceConfig {
            run_dir: dir.join("run"),
            ..UserspaceConfig::with_implementation(implementation)
        }
    }

    #[tokio::test]
    async fn finding_an_existing_device_creates_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nl = Arc::new(FakeNetlink::new());
        let found = find_existing(nl.clone(), "wg0", userspace(dir.path(), true))
            .await
            .expect("no error");
        assert!(found.is_none());
        assert_eq!(nl.calls(Method::LinkAdd), 0, "nothing probed");
        nl.link_add("wg0", &LinkKind::Wireguard)
            .await
            .expect("link");
        let found = find_existing(nl.clone(), "wg0", userspace(dir.path(), true))
            .await
            .expect("kernel");
        assert_eq!(found.map(|d| d.kind()), Some(BackendKind::Kernel));
        nl.link_add("eth9", &LinkKind::Dummy).await.expect("dummy");
        let err = find_existing(nl, "eth9", userspace(dir.path(), true))
            .await
            .expect_err("not ours");
        assert!(matches!(err, Error::WrongLinkKind { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn auto_uses_the_kernel_when_it_can_create_the_link() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nl = Arc::new(FakeNetlink::new());
        let device = select_backend_with(
            BackendPreference::Auto,
            nl.clone(),
            "wg0",
            userspace(dir.path(), false),
        )
        .await
        .expect("kernel");
        assert_eq!(device.kind(), BackendKind::Kernel);
        assert_eq!(
            nl.link("wg0").and_then(|l| l.kind).as_deref(),
            Some("wireguard")
        );
        assert!(
            device.ensure("wg0").await.expect("ensure"),
            "the probe's link counts as created"
        );
        assert_eq!(nl.calls(Method::LinkAdd), 1);
    }

    #[tokio::test]
    async fn auto_falls_back_to_userspace_without_kernel_support() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nl = Arc::new(FakeNetlink::new());
        nl.set_wireguard_supported(false);
        let device = select_backend_with(
            BackendPreference::Auto,
            nl.clone(),
            "wg0",
            userspace(dir.path(), true),
        )
        .await
        .expect("userspace");
        assert_eq!(device.kind(), BackendKind::Userspace);
        assert!(nl.link("wg0").is_none());
    }

    #[tokio::test]
    async fn auto_with_neither_says_what_is_missing_and_how_to_fix_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nl = Arc::new(FakeNetlink::new());
        nl.set_wireguard_supported(false);
        let err = select_backend_with(
            BackendPreference::Auto,
            nl,
            "wg0",
            userspace(dir.path(), false),
        )
        .await
        .expect_err("no backend");
        assert!(matches!(err, Error::NoBackend { .. }), "{err:?}");
        assert!(err.is_no_backend());
        let text = err.to_string();
        for needle in [
            "the kernel has no WireGuard support",
            "nonexistent/wireguard-go",
            "was not found",
            "modprobe wireguard",
            "apt-get install wireguard-go",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from: {text}");
        }
    }

    #[tokio::test]
    async fn auto_keeps_an_existing_kernel_device() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nl = Arc::new(FakeNetlink::new());
        nl.link_add("wg0", &LinkKind::Wireguard)
            .await
            .expect("link");
        let device = select_backend_with(
            BackendPreference::Auto,
            nl.clone(),
            "wg0",
            userspace(dir.path(), true),
        )
        .await
        .expect("kernel");
        assert_eq!(device.kind(), BackendKind::Kernel);
        assert_eq!(nl.calls(Method::LinkAdd), 1, "no second link_add");
        assert!(!device.ensure("wg0").await.expect("ensure"));
    }

    #[tokio::test]
    async fn auto_refuses_a_foreign_link() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nl = Arc::new(FakeNetlink::new());
        nl.link_add("wg0", &LinkKind::Dummy).await.expect("link");
        let err = select_backend_with(
            BackendPreference::Auto,
            nl,
            "wg0",
            userspace(dir.path(), true),
        )
        .await
        .expect_err("foreign");
        assert!(matches!(err, Error::WrongLinkKind { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn auto_keeps_a_live_userspace_device_in_this_namespace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = userspace(dir.path(), false);
        fs::create_dir_all(&config.run_dir).expect("mkdir");
        let _listener =
            std::os::unix::net::UnixListener::bind(config.socket_path("wg0")).expect("bind");
        let nl = Arc::new(FakeNetlink::new());

        // The socket is live but its TUN link is not in our (fake) namespace.
        let err = select_backend_with(BackendPreference::Auto, nl.clone(), "wg0", config.clone())
            .await
            .expect_err("foreign namespace");
        assert!(
            err.to_string().contains("another network namespace"),
            "{err}"
        );

        nl.link_add("wg0", &LinkKind::Other("tun".to_owned()))
            .await
            .expect("tun");
        let device = select_backend_with(BackendPreference::Auto, nl.clone(), "wg0", config)
            .await
            .expect("userspace");
        assert_eq!(device.kind(), BackendKind::Userspace);
        assert!(
            !device.ensure("wg0").await.expect("live"),
            "a live device is reused"
        );
        assert_eq!(nl.calls(Method::LinkAdd), 1, "the kernel was never probed");
    }

    #[tokio::test]
    async fn explicit_preferences() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nl = Arc::new(FakeNetlink::new());
        nl.set_wireguard_supported(false);
        let device = select_backend_with(
            BackendPreference::Kernel,
            nl.clone(),
            "wg0",
            userspace(dir.path(), false),
        )
        .await
        .expect("kernel is not probed");
        assert_eq!(device.kind(), BackendKind::Kernel);
        let err = device.ensure("wg0").await.expect_err("unsupported");
        assert!(err.to_string().contains("modprobe wireguard"), "{err}");

        let err = select_backend_with(
            BackendPreference::Userspace,
            nl.clone(),
            "wg0",
            userspace(dir.path(), false),
        )
        .await
        .expect_err("missing implementation");
        assert!(matches!(err, Error::UserspaceNotFound { .. }), "{err:?}");
        let device = select_backend_with(
            BackendPreference::Userspace,
            nl,
            "wg0",
            userspace(dir.path(), true),
        )
        .await
        .expect("userspace");
        assert_eq!(device.kind(), BackendKind::Userspace);
    }

    #[tokio::test]
    async fn invalid_names_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nl = Arc::new(FakeNetlink::new());
        let err = select_backend_with(
            BackendPreference::Auto,
            nl.clone(),
            "far-too-long-device",
            userspace(dir.path(), true),
        )
        .await
        .expect_err("invalid");
        assert!(matches!(err, Error::InvalidDeviceName { .. }), "{err:?}");
        assert_eq!(nl.calls(Method::LinkAdd), 0);
    }
}
