//! The crate's one error type. Messages say what was being done and, where the user can fix
//! something, how. They never contain key material.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// What to do when neither backend can work; shared by every error that reports it.
pub(crate) const INSTALL_HINT: &str = "load the wireguard kernel module (modprobe wireguard) \
     or install a userspace implementation: apt-get install wireguard-go \
     (or set WG_USERSPACE_IMPLEMENTATION to its path)";

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
    /// opposed to being unreachable: retrying each change of a batch alone finds which one it
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
            Error::UapiRejected { .. } => true,
            Error::Kernel { source, .. } => source
                .raw_os_error()
                .is_some_and(|code| CONTENT.contains(&Errno::from_raw(code))),
            _ => false,
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

fn output_suffix(output: &str) -> String {
    if output.is_empty() {
        String::new()
    } else {
        format!("; it said: {output}")
    }
}
