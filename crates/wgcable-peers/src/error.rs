//! The crate's one error type. Messages say what was being done and, where the user can fix
//! something, how. They never contain key material.

use std::io;
use std::ops::Range;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// What to do when neither backend can work; shared by every error that reports it.
pub(crate) const INSTALL_HINT: &str = "load the wireguard kernel module (modprobe wireguard) \
     or install a userspace implementation: apt-get install wireguard-go \
     (or set WG_USERSPACE_IMPLEMENTATION to its path)";

use crate::kernel::KernelRefusal;

/// Errors of the WireGuard device backends.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid WireGuard device name {name:?}: {reason}")]
    InvalidDeviceName { name: String, reason: &'static str },

    #[error("WireGuard device {device} does not exist; it must be created (ensure) before it is configured")]
    NoDevice { device: String },

    #[error(
        "no WireGuard backend is available for device {device}: the kernel has no WireGuard \
         support and {userspace}; {INSTALL_HINT}"
    )]
    NoBackend {
        device: String,
        /// Why the userspace implementation cannot be used.
        userspace: String,
        #[source]
        kernel: Box<wgcable_netlink::Error>,
    },

    #[error(
        "creating WireGuard link {device}: the kernel has no WireGuard support (operation not \
         supported); load the wireguard kernel module (modprobe wireguard) or use the userspace \
         backend (apt-get install wireguard-go)"
    )]
    KernelUnsupported {
        device: String,
        #[source]
        source: Box<wgcable_netlink::Error>,
    },

    #[error(
        "a link named {device} exists but is not a WireGuard device ({kind}); delete it or \
         choose another device name"
    )]
    WrongLinkKind { device: String, kind: String },

    #[error("{op} link {device}")]
    Netlink {
        device: String,
        op: &'static str,
        #[source]
        source: Box<wgcable_netlink::Error>,
    },

    #[error("{op} WireGuard device {device} over generic netlink")]
    Kernel {
        device: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },

    /// The kernel refused a request that is not an update (a read, the family lookup).
    #[error("{op} WireGuard device {device} over generic netlink: the kernel refused")]
    KernelRefused {
        device: String,
        op: &'static str,
        #[source]
        source: KernelRefusal,
    },

    /// The kernel refused one message of an update. The messages before it were applied (each
    /// on its own), the ones after it were not sent; nothing was dropped silently.
    #[error(
        "configuring WireGuard device {device}: the kernel refused netlink message {} of \
         {messages}, which carried {}; {}",
        message + 1,
        changes_text(changes),
        applied_text(*message, *messages)
    )]
    KernelRejectedUpdate {
        device: String,
        /// Index of the refused message (0-based).
        message: usize,
        messages: usize,
        /// Indices into the update's `peers` that the refused message carried (whole or in
        /// part); one index when the kernel refused a single peer change.
        changes: Range<usize>,
        #[source]
        source: KernelRefusal,
    },

    /// One peer change cannot be sent even in a netlink message of its own.
    #[error(
        "configuring WireGuard device {device}: peer change {change} of the update does not fit \
         a netlink message even alone; nothing was sent"
    )]
    UpdateTooLarge { device: String, change: usize },

    #[error("the kernel reported WireGuard device {device} in a form we cannot read: {detail}")]
    KernelData { device: String, detail: String },

    #[error(
        "userspace WireGuard implementation {implementation:?} not found{searched}; install it \
         (apt-get install wireguard-go) or set WG_USERSPACE_IMPLEMENTATION to its path"
    )]
    UserspaceNotFound {
        implementation: String,
        /// Where we looked, e.g. " in PATH (/usr/bin:/bin)"; empty for an explicit path.
        searched: String,
    },

    #[error("starting userspace WireGuard {} for device {device}", implementation.display())]
    UserspaceSpawn {
        device: String,
        implementation: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "userspace WireGuard {} for device {device} failed to start ({status}){}",
        implementation.display(),
        output_suffix(output)
    )]
    UserspaceExited {
        device: String,
        implementation: PathBuf,
        status: ExitStatus,
        /// What it printed (stdout and stderr), trimmed.
        output: String,
    },

    #[error(
        "userspace WireGuard {} for device {device} did not open its control socket {} within \
         {waited:?}{}",
        implementation.display(),
        socket.display(),
        output_suffix(output)
    )]
    UserspaceTimeout {
        device: String,
        implementation: PathBuf,
        socket: PathBuf,
        waited: Duration,
        output: String,
    },

    #[error("{op} control socket {} of WireGuard device {device}", socket.display())]
    Uapi {
        device: String,
        op: &'static str,
        socket: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "the control socket {} of WireGuard device {device} is served by a process in another \
         network namespace (the socket directory is per mount namespace, not per network \
         namespace); refusing to configure someone else's device: run each gateway in a mount \
         namespace of its own or give the devices distinct names",
        socket.display()
    )]
    ForeignSocket { device: String, socket: PathBuf },

    #[error("WireGuard device {device} rejected the configuration (errno {errno})")]
    UapiRejected {
        device: String,
        errno: i32,
        #[source]
        source: io::Error,
    },

    #[error("unexpected reply from the control socket of WireGuard device {device}: {detail}")]
    UapiProtocol { device: String, detail: String },

    #[error("finding the process that serves WireGuard device {device}")]
    FindProcess {
        device: String,
        #[source]
        source: io::Error,
    },

    #[error("signalling userspace WireGuard process {pid} of device {device}")]
    Signal {
        device: String,
        pid: i32,
        #[source]
        source: nix::errno::Errno,
    },

    #[error(
        "userspace WireGuard process {pid} of device {device} is still running {waited:?} after \
         SIGTERM and SIGKILL"
    )]
    StopTimeout {
        device: String,
        pid: i32,
        waited: Duration,
    },

    #[error("removing {}", path.display())]
    RemoveFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("background task for {op} on WireGuard device {device} failed")]
    Task {
        device: String,
        op: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl Error {
    /// The device does not exist (and the operation needs it to).
    pub fn is_no_device(&self) -> bool {
        matches!(self, Error::NoDevice { .. })
    }

    /// The device refused the configuration it was sent (bad argument, too large), as
    /// opposed to being unreachable: retrying the changes of a batch apart finds which one it
    /// refuses, so the others can still be applied.
    pub fn is_rejected_config(&self) -> bool {
        use nix::errno::Errno;
        const CONTENT: [Errno; 6] = [
            Errno::EINVAL,
            Errno::E2BIG,
            Errno::EMSGSIZE,
            Errno::ERANGE,
            Errno::ENOSPC,
            Errno::ENOBUFS,
        ];
        match self {
            Error::UapiRejected { .. } | Error::UpdateTooLarge { .. } => true,
            Error::Kernel { .. }
            | Error::KernelRefused { .. }
            | Error::KernelRejectedUpdate { .. } => self
                .errno()
                .is_some_and(|code| CONTENT.contains(&Errno::from_raw(code))),
            _ => false,
        }
    }

    /// The errno the kernel or a userspace implementation refused with, if it did.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::KernelRefused { source, .. } | Error::KernelRejectedUpdate { source, .. } => {
                Some(source.errno)
            }
            Error::UapiRejected { errno, .. } => Some(*errno),
            Error::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// The kernel's own reason (its extended-ack message) for refusing, if it gave one.
    pub fn kernel_reason(&self) -> Option<&str> {
        match self {
            Error::KernelRefused { source, .. } | Error::KernelRejectedUpdate { source, .. } => {
                source.reason.as_deref()
            }
            _ => None,
        }
    }

    /// Which peer changes of the update (indices into `DeviceUpdate::peers`) the refusal is
    /// about: retrying each of them alone isolates the one that is refused.
    pub fn rejected_peer_changes(&self) -> Option<Range<usize>> {
        match self {
            Error::KernelRejectedUpdate { changes, .. } => Some(changes.clone()),
            Error::UpdateTooLarge { change, .. } => Some(*change..*change + 1),
            _ => None,
        }
    }

    /// Neither the kernel nor a userspace implementation can carry WireGuard here.
    pub fn is_no_backend(&self) -> bool {
        matches!(
            self,
            Error::NoBackend { .. }
                | Error::KernelUnsupported { .. }
                | Error::UserspaceNotFound { .. }
        )
    }
}

fn changes_text(changes: &Range<usize>) -> String {
    match changes.len() {
        0 => "no peer change (only the device's key or port)".to_owned(),
        1 => format!("peer change {} of the update", changes.start),
        _ => format!(
            "peer changes {}..={} of the update",
            changes.start,
            changes.end - 1
        ),
    }
}

fn applied_text(message: usize, messages: usize) -> String {
    let rest = messages - message - 1;
    format!("the {message} message(s) before it were applied, the {rest} after it were not sent")
}

fn output_suffix(output: &str) -> String {
    if output.is_empty() {
        String::new()
    } else {
        format!("; it said: {output}")
    }
}
