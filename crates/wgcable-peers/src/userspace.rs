//! The userspace backend: a WireGuard implementation such as `wireguard-go` running as its own
//! process, configured over its control socket `<run_dir>/<device>.sock`.
//!
//! The process is started so that it outlives the gateway: `wireguard-go <dev>` without `-f`
//! daemonizes itself (the first process creates the TUN link and the listening socket, hands
//! both to a re-executed child and exits), and we put it into a process group of its own so a
//! signal aimed at the gateway's group (Ctrl-C, a supervisor killing the group) does not reach
//! it. Restarting the gateway therefore does not cut traffic; the next gateway finds the live
//! socket and carries on with the same device.
//!
//! Finding the process to stop: `SO_PEERCRED` on the control socket names the process that
//! called `listen()`, which for a daemonizing `wireguard-go` is the first process - already
//! gone. So [`UserspaceDevice::delete`] looks the socket's inode up in `/proc/net/unix` and
//! finds the process holding it under `/proc/*/fd`. `/proc/net/unix` lists the sockets of the
//! caller's network namespace, so the device must be deleted from the namespace it was created
//! in.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Seek};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::time::{sleep, Instant};

use crate::device::{
    blocking, validate_device_name, BackendKind, DeviceStatus, DeviceUpdate, WgDevice,
};
use crate::uapi::{self, Liveness};
use crate::Error;

/// Where `wireguard-go` (and `wg`) keep control sockets. Per mount namespace, not per network
/// namespace.
pub const DEFAULT_RUN_DIR: &str = "/var/run/wireguard";
/// The environment variable naming the userspace implementation (as for `wg-quick`).
pub const IMPLEMENTATION_ENV: &str = "WG_USERSPACE_IMPLEMENTATION";
/// The implementation looked up on `PATH` when [`IMPLEMENTATION_ENV`] is not set.
pub const DEFAULT_IMPLEMENTATION: &str = "wireguard-go";

/// How often to look at a starting or stopping process.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long to wait for the first (daemonizing) process to exit once the socket is served.
const FIRST_PROCESS_GRACE: Duration = Duration::from_secs(1);
/// How much of a failed implementation's output to keep for the error.
const MAX_OUTPUT: usize = 4096;

/// How to find and run the userspace implementation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserspaceConfig {
    /// A program name looked up on `PATH`, or a path (anything containing `/`).
    pub implementation: OsString,
    /// The directory the implementation puts its control socket in. Must match the
    /// implementation's own (`wireguard-go` hard-codes [`DEFAULT_RUN_DIR`]).
    pub run_dir: PathBuf,
    /// How long a starting implementation may take to serve its control socket.
    pub start_timeout: Duration,
    /// How long a stopping implementation may take to exit after SIGTERM (and again after
    /// SIGKILL).
    pub stop_timeout: Duration,
}

impl Default for UserspaceConfig {
    fn default() -> Self {
        Self::with_implementation(DEFAULT_IMPLEMENTATION)
    }
}

impl UserspaceConfig {
    /// The implementation named by `$WG_USERSPACE_IMPLEMENTATION`, else `wireguard-go`.
    pub fn from_env() -> Self {
        match std::env::var_os(IMPLEMENTATION_ENV) {
            Some(value) if !value.is_empty() => Self::with_implementation(value),
            _ => Self::default(),
        }
    }

    /// The given implementation with default paths and timeouts.
    pub fn with_implementation(implementation: impl Into<OsString>) -> Self {
        Self {
            implementation: implementation.into(),
            run_dir: PathBuf::from(DEFAULT_RUN_DIR),
            start_timeout: Duration::from_secs(5),
            stop_timeout: Duration::from_secs(5),
        }
    }

    /// The control socket of `device`.
    pub fn socket_path(&self, device: &str) -> PathBuf {
        self.run_dir.join(format!("{device}.sock"))
    }

    fn name_file(&self, device: &str) -> PathBuf {
        self.run_dir.join(format!("{device}.name"))
    }

    /// The executable to run: the configured path, or the configured name found on `PATH`.
    pub fn resolve_implementation(&self) -> Result<PathBuf, Error> {
        resolve_executable(&self.implementation, std::env::var_os("PATH").as_deref())
    }
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn resolve_executable(implementation: &OsStr, path_var: Option<&OsStr>) -> Result<PathBuf, Error> {
    let as_path = Path::new(implementation);
    let not_found = |searched: String| Error::UserspaceNotFound {
        implementation: implementation.to_string_lossy().into_owned(),
        searched,
    };
    if implementation.is_empty() {
        return Err(not_found(String::new()));
    }
    if as_path.components().count() > 1 || implementation.to_string_lossy().contains('/') {
        return if is_executable(as_path) {
            Ok(as_path.to_owned())
        } else {
            Err(not_found(" (no executable file at that path)".to_owned()))
        };
    }
    let path_var = path_var.unwrap_or_default();
    std::env::split_paths(path_var)
        .map(|dir| dir.join(as_path))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| not_found(format!(" in PATH ({})", path_var.to_string_lossy())))
}

/// A device whose data plane is a userspace implementation in its own process.
#[derive(Debug, Clone)]
pub struct UserspaceDevice {
    config: UserspaceConfig,
}

impl UserspaceDevice {
    pub fn new(config: UserspaceConfig) -> Self {
        Self { config }
    }

    /// With [`UserspaceConfig::from_env`].
    pub fn from_env() -> Self {
        Self::new(UserspaceConfig::from_env())
    }

    pub fn config(&self) -> &UserspaceConfig {
        &self.config
    }

    /// Whether a process serves the control socket of `device`.
    pub async fn is_live(&self, device: &str) -> Result<bool, Error> {
        validate_device_name(device)?;
        Ok(self.liveness(device).await? == Liveness::Live)
    }

    async fn liveness(&self, device: &str) -> Result<Liveness, Error> {
        let socket = self.config.socket_path(device);
        let name = device.to_owned();
        blocking(device, "probing", move || uapi::probe(&name, &socket)).await
    }

    fn remove_files(&self, device: &str) -> Result<(), Error> {
        for path in [
            self.config.socket_path(device),
            self.config.name_file(device),
        ] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(Error::RemoveFile { path, source }),
            }
        }
        Ok(())
    }

    /// Starts the implementation for `device` and waits until it serves its control socket.
    async fn start(&self, device: &str) -> Result<(), Error> {
        let implementation = self.config.resolve_implementation()?;
        let socket = self.config.socket_path(device);
        let spawn_err = |source: io::Error| Error::UserspaceSpawn {
            device: device.to_owned(),
            implementation: implementation.clone(),
            source,
        };
        fs::create_dir_all(&self.config.run_dir).map_err(spawn_err)?;

        // The first process's output goes to an unlinked temporary file rather than a pipe: a
        // pipe would need a reader for as long as anything holds it, and an implementation
        // that does not daemonize would die of SIGPIPE once we stop reading.
        let mut output = tempfile::tempfile().map_err(spawn_err)?;
        let stdout = output.try_clone().map_err(spawn_err)?;
        let stderr = output.try_clone().map_err(spawn_err)?;
        let mut command = tokio::process::Command::new(&implementation);
        command
            .arg(device)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Either would keep wireguard-go in the foreground or hand the daemon our output
            // file; the daemon must be detached from us.
            .env_remove("WG_PROCESS_FOREGROUND")
            .env_remove("LOG_LEVEL")
            // Its own process group: signals to the gateway's group do not reach the data plane.
            .process_group(0)
            .kill_on_drop(false);
        let mut child = command.spawn().map_err(spawn_err)?;
        tracing::debug!(device, implementation = %implementation.display(), "starting userspace WireGuard");

        let deadline = Instant::now() + self.config.start_timeout;
        let mut first_process_done = false;
        loop {
            if !first_process_done {
                match child.try_wait() {
                    Ok(Some(status)) if !status.success() => {
                        return Err(Error::UserspaceExited {
                            device: device.to_owned(),
                            implementation,
                            status,
                            output: read_output(&mut output),
                        });
                    }
                    Ok(Some(_)) => first_process_done = true,
                    Ok(None) => {}
                    Err(e) => {
                        // We cannot tell how it is doing; the socket decides.
                        tracing::debug!(device, error = %e, "cannot wait for userspace WireGuard");
                        first_process_done = true;
                    }
                }
            }
            if self.liveness(device).await? == Liveness::Live {
                tracing::info!(
                    device,
                    implementation = %implementation.display(),
                    socket = %socket.display(),
                    "userspace WireGuard is running"
                );
                if !first_process_done {
                    // wireguard-go's first process exits right after handing over to the
                    // daemon; reap it now rather than leave a zombie. A foreground
                    // implementation keeps running after `child` is dropped (no kill_on_drop)
                    // and tokio reaps it when it eventually exits.
                    let _ = tokio::time::timeout(FIRST_PROCESS_GRACE, child.wait()).await;
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                // Do not leave a half-started process behind.
                if !first_process_done {
                    let _ = child.start_kill();
                }
                return Err(Error::UserspaceTimeout {
                    device: device.to_owned(),
                    implementation,
                    socket,
                    waited: self.config.start_timeout,
                    output: read_output(&mut output),
                });
            }
            sleep(POLL_INTERVAL).await;
        }
    }

    /// Sends `signal` to every pid and waits until all are gone; false on timeout.
    async fn signal_and_wait(
        &self,
        device: &str,
        pids: &[i32],
        signal: Signal,
    ) -> Result<bool, Error> {
        for &pid in pids {
            match kill(Pid::from_raw(pid), signal) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(source) => {
                    return Err(Error::Signal {
                        device: device.to_owned(),
                        pid,
                        source,
                    })
                }
            }
        }
        let deadline = Instant::now() + self.config.stop_timeout;
        loop {
            if pids.iter().all(|&pid| process_gone(pid)) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            sleep(POLL_INTERVAL).await;
        }
    }
}

/// The tail of what a failed implementation printed.
fn read_output(file: &mut fs::File) -> String {
    let mut bytes = Vec::new();
    if file.rewind().is_err() || file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let start = bytes.len().saturating_sub(MAX_OUTPUT);
    let text = String::from_utf8_lossy(&bytes[start..]);
    // wireguard-go draws boxes around some messages; keep the words on one line.
    text.split_whitespace()
        .filter(|word| !word.chars().all(|c| "│┌┐└┘─".contains(c)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether a process has exited (a zombie counts as gone: it serves nothing).
fn process_gone(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

/// The inodes of unix sockets bound to a path `matches` accepts, from the text of
/// `/proc/net/unix` ("Num RefCount Protocol Flags Type St Inode Path").
fn socket_inodes(table: &str, matches: impl Fn(&Path) -> bool) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let inode = fields.nth(6)?.parse().ok()?;
            let path = fields.next()?;
            matches(Path::new(path)).then_some(inode)
        })
        .collect()
}

/// Whether `bound` (as the process wrote it at bind time) names the file `socket`; they may
/// differ by symlinks, e.g. `/var/run` -> `/run`.
fn same_socket(bound: &Path, socket: &Path) -> bool {
    if bound == socket {
        return true;
    }
    if bound.file_name() != socket.file_name() {
        return false;
    }
    match (
        bound.parent().map(fs::canonicalize),
        socket.parent().map(fs::canonicalize),
    ) {
        (Some(Ok(a)), Some(Ok(b))) => a == b,
        _ => false,
    }
}

/// The processes (other than us) holding the unix socket bound at `socket`.
fn socket_owners(socket: &Path) -> io::Result<Vec<i32>> {
    // `/proc/net` follows the process's main thread; `thread-self` follows the calling thread,
    // which matters when that thread entered another network namespace.
    let table = fs::read_to_string("/proc/thread-self/net/unix")
        .or_else(|_| fs::read_to_string("/proc/net/unix"))?;
    let inodes = socket_inodes(&table, |bound| same_socket(bound, socket));
    if inodes.is_empty() {
        return Ok(Vec::new());
    }
    let links: HashSet<PathBuf> = inodes
        .iter()
        .map(|inode| PathBuf::from(format!("socket:[{inode}]")))
        .collect();
    let me = std::process::id();
    let mut owners = Vec::new();
    for entry in fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        // Processes come and go and some fd directories are not ours to read: skip those.
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds
            .flatten()
            .any(|fd| fs::read_link(fd.path()).is_ok_and(|target| links.contains(&target)));
        if holds {
            if let Ok(pid) = i32::try_from(pid) {
                owners.push(pid);
            }
        }
    }
    Ok(owners)
}

#[async_trait]
impl WgDevice for UserspaceDevice {
    fn kind(&self) -> BackendKind {
        BackendKind::Userspace
    }

    async fn ensure(&self, name: &str) -> Result<bool, Error> {
        validate_device_name(name)?;
        match self.liveness(name).await? {
            Liveness::Live => return Ok(false),
            Liveness::Stale => {
                // Its process died (crash, OOM, reboot of a persistent /run): the file blocks
                // a new one from binding.
                tracing::warn!(
                    device = name,
                    socket = %self.config.socket_path(name).display(),
                    "removing the stale control socket of a userspace WireGuard that is gone; restarting it"
                );
                self.remove_files(name)?;
            }
            Liveness::Absent => {}
        }
        self.start(name).await?;
        Ok(true)
    }

    async fn read(&self, name: &str) -> Result<Option<DeviceStatus>, Error> {
        validate_device_name(name)?;
        let socket = self.config.socket_path(name);
        let device = name.to_owned();
        blocking(name, "reading", move || uapi::get(&device, &socket)).await
    }

    async fn apply(&self, name: &str, update: &DeviceUpdate) -> Result<(), Error> {
        validate_device_name(name)?;
        let socket = self.config.socket_path(name);
        let device = name.to_owned();
        let update = update.clone();
        blocking(name, "configuring", move || {
            uapi::set(&device, &socket, &update)
        })
        .await
    }

    async fn delete(&self, name: &str) -> Result<(), Error> {
        validate_device_name(name)?;
        let socket = self.config.socket_path(name);
        let liveness = self.liveness(name).await?;
        if liveness == Liveness::Live {
            let owners_of = socket.clone();
            let device = name.to_owned();
            let pids = blocking(name, "finding the process of", move || {
                socket_owners(&owners_of).map_err(|source| Error::FindProcess { device, source })
            })
            .await?;
            if pids.is_empty() {
                return Err(Error::FindProcess {
                    device: name.to_owned(),
                    source: io::Error::other(format!(
                        "{} is served, but by no process visible from this network namespace; \
                         delete the device from the namespace it was created in",
                        socket.display()
                    )),
                });
            }
            tracing::info!(device = name, ?pids, "stopping userspace WireGuard");
            if !self.signal_and_wait(name, &pids, Signal::SIGTERM).await? {
                tracing::warn!(
                    device = name,
                    ?pids,
                    "userspace WireGuard ignored SIGTERM; sending SIGKILL"
                );
                if !self.signal_and_wait(name, &pids, Signal::SIGKILL).await? {
                    return Err(Error::StopTimeout {
                        device: name.to_owned(),
                        pid: pids[0],
                        waited: self.config.stop_timeout * 2,
                    });
                }
            }
        }
        // wireguard-go removes its socket on a clean exit; after SIGKILL or a crash it stays.
        self.remove_files(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    fn config_in(dir: &Path, implementation: impl Into<OsString>) -> UserspaceConfig {
        UserspaceConfig {
            run_dir: dir.join("run"),
            start_timeout: Duration::from_secs(5),
            ..UserspaceConfig::with_implementation(implementation)
        }
    }

    #[test]
    fn implementation_is_found_on_path_or_by_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = script(dir.path(), "wg-impl", "exit 0");
        fs::write(dir.path().join("not-exec"), "").expect("write");
        let path_var = std::env::join_paths([Path::new("/nonexistent"), dir.path()]).expect("PATH");

        assert_eq!(
            resolve_executable(OsStr::new("wg-impl"), Some(&path_var)).expect("found"),
            exe
        );
        assert_eq!(
            resolve_executable(exe.as_os_str(), None).expect("by path"),
            exe
        );

        for (implementation, path_var) in [
            (OsString::from("missing"), Some(path_var.clone())),
            (OsString::from("not-exec"), Some(path_var.clone())),
            (OsString::from("wg-impl"), None),
            (dir.path().join("not-exec").into_os_string(), None),
            (OsString::from("/nonexistent/wireguard-go"), None),
            (OsString::new(), Some(path_var.clone())),
        ] {
            let err =
                resolve_executable(&implementation, path_var.as_deref()).expect_err("missing");
            assert!(matches!(err, Error::UserspaceNotFound { .. }), "{err:?}");
            let text = err.to_string();
            assert!(text.contains("apt-get install wireguard-go"), "{text}");
            assert!(text.contains("WG_USERSPACE_IMPLEMENTATION"), "{text}");
        }
    }

    #[test]
    fn socket_inodes_are_found_by_bound_path() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 36796 /var/run/wireguard/wg0.sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 36800 /var/run/wireguard/wg0.sock\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 111 /var/run/wireguard/wg1.sock\n\
            0000000000000000: 00000002 00000000 00000000 0002 01 222\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 333 @abstract\n";
        let wanted = Path::new("/var/run/wireguard/wg0.sock");
        assert_eq!(socket_inodes(table, |p| p == wanted), vec![36796, 36800]);
        assert!(socket_inodes(table, |p| p == Path::new("/x.sock")).is_empty());
        assert!(socket_inodes("", |_| true).is_empty());
    }

    #[test]
    fn same_socket_follows_symlinked_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("run");
        fs::create_dir(&real).expect("mkdir");
        std::os::unix::fs::symlink(&real, dir.path().join("varrun")).expect("symlink");
        assert!(same_socket(
            &dir.path().join("varrun/wg0.sock"),
            &real.join("wg0.sock")
        ));
        assert!(!same_socket(
            &dir.path().join("varrun/wg1.sock"),
            &real.join("wg0.sock")
        ));
        assert!(same_socket(
            Path::new("/nonexistent/a.sock"),
            Path::new("/nonexistent/a.sock")
        ));
        assert!(!same_socket(
            Path::new("/nonexistent/a.sock"),
            Path::new("/elsewhere/a.sock")
        ));
    }

    #[test]
    fn a_missing_process_is_gone() {
        assert!(!process_gone(
            i32::try_from(std::process::id()).expect("pid")
        ));
        // Pid numbers above the kernel's maximum (2^22) are never used.
        assert!(process_gone(1 << 23));
    }

    #[test]
    fn output_is_flattened_and_bounded() {
        let mut file = tempfile::tempfile().expect("tempfile");
        std::io::Write::write_all(
            &mut file,
            "┌──┐\n│ Failed to create TUN device: no such file │\n└──┘\n".as_bytes(),
        )
        .expect("write");
        assert_eq!(
            read_output(&mut file),
            "Failed to create TUN device: no such file"
        );
        let mut big = tempfile::tempfile().expect("tempfile");
        std::io::Write::write_all(&mut big, "x ".repeat(10_000).as_bytes()).expect("write");
        assert!(read_output(&mut big).len() <= MAX_OUTPUT);
    }

    #[tokio::test]
    async fn failing_implementation_reports_its_output_and_status() {
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = script(
            dir.path(),
            "fake-wg",
            "echo \"ERROR: ($1) Failed to create TUN device: operation not permitted\"\nexit 1",
        );
        let device = UserspaceDevice::new(config_in(dir.path(), exe.into_os_string()));
        let err = device.ensure("wgt0").await.expect_err("fails");
        assert!(matches!(err, Error::UserspaceExited { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("(wgt0) Failed to create TUN device: operation not permitted"),
            "{text}"
        );
        assert!(text.contains("exit status: 1"), "{text}");
    }

    /// Deterministic whatever the CPU's speed: it asserts that the wait ends in a timeout and
    /// not before the bound, never that the script got to print something within it (under a
    /// slow CPU a shell may not even start in 200 ms; that made this test flaky). That the
    /// first process's output reaches the error is proven by the test above, which waits for
    /// the process to exit, and the timeout's message by the one below.
    #[tokio::test]
    async fn implementation_that_never_serves_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Exits successfully without ever creating the socket.
        let exe = script(dir.path(), "fake-wg", "exit 0");
        let mut config = config_in(dir.path(), exe.into_os_string());
        let bound = Duration::from_millis(200);
        config.start_timeout = bound;
        let device = UserspaceDevice::new(config);
        let started = std::time::Instant::now();
        let err = device.ensure("wgt0").await.expect_err("times out");
        assert!(started.elapsed() >= bound, "gave up before its bound");
        assert!(
            matches!(err, Error::UserspaceTimeout { waited, .. } if waited == bound),
            "{err:?}"
        );
    }

    #[test]
    fn a_timeout_says_what_the_implementation_printed() {
        let err = Error::UserspaceTimeout {
            device: "wgt0".to_owned(),
            implementation: "/usr/bin/wireguard-go".into(),
            socket: "/run/wireguard/wgt0.sock".into(),
            waited: Duration::from_secs(5),
            output: "started".to_owned(),
        };
        let text = err.to_string();
        assert!(text.contains("within 5s; it said: started"), "{text}");
    }

    #[tokio::test]
    async fn missing_implementation_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let device = UserspaceDevice::new(config_in(dir.path(), "/nonexistent/wireguard-go"));
        let err = device.ensure("wgt0").await.expect_err("missing");
        assert!(err.is_no_backend(), "{err:?}");
    }

    #[tokio::test]
    async fn absent_device_reads_as_none_and_deletes_fine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let device = UserspaceDevice::new(config_in(dir.path(), "/nonexistent/wireguard-go"));
        assert_eq!(device.read("wgt0").await.expect("read"), None);
        assert!(!device.is_live("wgt0").await.expect("probe"));
        device.delete("wgt0").await.expect("absent is fine");
        let err = device
            .apply("wgt0", &DeviceUpdate::default())
            .await
            .expect_err("no device");
        assert!(err.is_no_device(), "{err:?}");
    }

    #[tokio::test]
    async fn stale_socket_is_removed_on_delete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config_in(dir.path(), "/nonexistent/wireguard-go");
        fs::create_dir_all(&config.run_dir).expect("mkdir");
        let socket = config.socket_path("wgt0");
        // A socket whose listener is gone, as after a crash.
        drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
        let device = UserspaceDevice::new(config);
        assert_eq!(
            device.read("wgt0").await.expect("read"),
            None,
            "a dead socket is no device"
        );
        device.delete("wgt0").await.expect("delete");
        assert!(!socket.exists());
    }

    #[tokio::test]
    async fn bad_names_are_rejected_before_any_io() {
        let device = UserspaceDevice::new(UserspaceConfig::with_implementation("/nonexistent"));
        for result in [
            device.ensure("../etc").await.map(|_| ()),
            device.read("a/b").await.map(|_| ()),
            device.delete("").await,
        ] {
            let err = result.expect_err("invalid");
            assert!(matches!(err, Error::InvalidDeviceName { .. }), "{err:?}");
        }
    }
}
