//! The state directory's lock: one gateway per state directory.
//!
//! Two gateways on one state directory share a private key: each would refuse the other's
//! Endpoint (same key) with a misleading reason, and both would rewrite the same registry.
//! The second one exits at once instead, naming the holder.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::Error;

/// The lock file's name in the state directory.
pub const LOCK_FILE_NAME: &str = "gateway.lock";

/// Held for as long as the gateway runs; the kernel releases it when the process ends, even
/// on a crash, so a stale lock never blocks a restart.
#[derive(Debug)]
pub struct StateLock {
    _lock: nix::fcntl::Flock<File>,
    path: PathBuf,
}

impl StateLock {
    /// Takes the lock of `state_dir` (creating the directory and the file if needed), or says
    /// which process holds it.
    pub fn acquire(state_dir: &Path) -> Result<StateLock, Error> {
        let path = state_dir.join(LOCK_FILE_NAME);
        // The lock is the gateway's first write: a read-only or full state directory is
        // found here, before anything on the host changes, so say what to check.
        let io = |action: &str| {
            Error::io(format!(
                "{action} {} (the state directory --state-dir {} must be writable and have room)",
                path.display(),
                state_dir.display()
            ))
        };
        std::fs::create_dir_all(state_dir).map_err(Error::io(format!(
            "creating state directory {}",
            state_dir.display()
        )))?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("opening the lock file"))?;
        let mut lock =
            match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(lock) => lock,
                Err((mut file, errno)) if errno == nix::errno::Errno::EWOULDBLOCK => {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    return Err(Error::StateDirLocked {
                        state_dir: state_dir.to_owned(),
                        holder: holder.trim().parse().ok(),
                    });
                }
                Err((_, errno)) => {
                    return Err(io("locking the lock file")(
                        std::io::Error::from_raw_os_error(errno as i32),
                    ))
                }
            };
        // Our pid, for the next one to name.
        let file: &mut File = &mut lock;
        file.set_len(0).map_err(io("writing the lock file"))?;
        file.rewind().map_err(io("writing the lock file"))?;
        write!(file, "{}", std::process::id()).map_err(io("writing the lock file"))?;
        Ok(StateLock { _lock: lock, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = StateLock::acquire(dir.path()).expect("first");
        // flock locks belong to open file descriptions: a second open in this process
        // conflicts exactly as another process would.
        let err = StateLock::acquire(dir.path()).expect_err("held");
        match &err {
            Error::StateDirLocked { holder, .. } => {
                assert_eq!(*holder, Some(std::process::id()));
            }
            other => panic!("unexpected {other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.contains("another gateway") && text.contains(&std::process::id().to_string()),
            "{text}"
        );
        drop(first);
        StateLock::acquire(dir.path()).expect("free again once the holder is gone");
    }
}
