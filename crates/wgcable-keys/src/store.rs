use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{
    DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _,
};
use std::path::{Path, PathBuf};

use rand_core::{OsRng, RngCore as _};
use zeroize::Zeroizing;

use crate::error::{FormatProblem, KeyError, SymlinkProblem};
use crate::key::{private_key_file_content, private_key_from_base64_bytes, PrivateKey};

/// Name of the private key file inside the state directory.
pub const KEY_FILE_NAME: &str = "private.key";

/// Prefix of the temporary file a new key is written to before it is linked into place.
const TEMP_PREFIX: &str = ".private.key.tmp-";

/// Any bigger file cannot be a key (44 characters plus a newline and maybe some whitespace).
const MAX_KEY_FILE_LEN: u64 = 4096;

/// The gateway's private key, persisted in a state directory.
///
/// Keeping the key across restarts keeps the gateway's identity (its public key in the published
/// Endpoint), so a restart does not force every peer to reconnect.
///
/// The file format is exactly what `wg genkey > private.key` writes (base64 and a newline), so an
/// operator can inspect it with `wg pubkey < private.key` or provision one with `wg genkey`.
///
/// # Kubernetes Secret volumes
///
/// A Secret mounted as a volume presents each key as a chain of relative symbolic links inside
/// the mounted directory (`private.key -> ..data/private.key`, `..data -> ..2026_01_01_00_00_00.1`),
/// swapped atomically when the Secret changes. The key file may therefore be a symbolic link,
/// but the chain is resolved only inside the store's directory (the kernel's `RESOLVE_BENEATH`):
/// a link that leads anywhere else, or an absolute link, is refused. Every other check applies
/// to the file the chain ends at: a regular file, mode 0600 or stricter (set the volume's
/// `defaultMode: 0400`), owned by the gateway's user, holding a valid key.
/// [`KeyStore::read_only`] is the store for such a volume: it never writes there.
#[derive(Debug, Clone)]
pub struct KeyStore {
    dir: PathBuf,
    path: PathBuf,
    read_only: bool,
    owner: Option<u32>,
}

impl KeyStore {
    /// A key store for `<dir>/private.key`. Touches nothing until [`KeyStore::load`] or
    /// [`KeyStore::load_or_create`] is called.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        let path = dir.join(KEY_FILE_NAME);
        KeyStore {
            dir,
            path,
            read_only: false,
            owner: None,
        }
    }

    /// A key store that only reads `<dir>/private.key` and never writes anything in `dir`: for a
    /// key provisioned from outside, such as a Kubernetes Secret volume. A missing key is an
    /// error rather than a reason to generate one.
    pub fn read_only(dir: impl Into<PathBuf>) -> Self {
        KeyStore {
            read_only: true,
            ..KeyStore::new(dir)
        }
    }

    /// Requires the key file to belong to user `uid` instead of the process's effective user.
    pub fn expecting_owner(mut self, uid: u32) -> Self {
        self.owner = Some(uid);
        self
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The key file, `<dir>/private.key`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True for a store made with [`KeyStore::read_only`].
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Loads the key, `Ok(None)` if there is no key file yet.
    ///
    /// Refuses (with an error naming the path and the fix) a file that is group- or
    /// world-accessible, owned by another user, not a regular file, a symbolic link leading out
    /// of the directory, or that does not hold a valid key.
    pub fn load(&self) -> Result<Option<PrivateKey>, KeyError> {
        let path = &self.path;
        // lstat first so a missing file is simply "no key yet" and a FIFO or directory is named
        // as such rather than reported as a confusing open error.
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(self.read_error(source)),
        };
        let is_link = meta.file_type().is_symlink();
        if !is_link {
            check_file_type(path, &meta.file_type())?;
        }
        let Some(mut file) = self.open_key_file(is_link)? else {
            return Ok(None);
        };
        // Every check below is on the opened file itself (fstat), so a file swapped after the
        // lstat cannot slip through.
        let meta = file.metadata().map_err(|source| self.read_error(source))?;
        check_file_type(path, &meta.file_type())?;
        if meta.mode() & 0o077 != 0 {
            return Err(KeyError::InsecurePermissions {
                path: path.clone(),
                mode: meta.mode(),
            });
        }
        let expected = self
            .owner
            .unwrap_or_else(|| rustix::process::geteuid().as_raw());
        if meta.uid() != expected {
            return Err(KeyError::WrongOwner {
                path: path.clone(),
                owner: meta.uid(),
                expected,
            });
        }
        if meta.len() > MAX_KEY_FILE_LEN {
            return Err(KeyError::Corrupt {
                path: path.clone(),
                problem: FormatProblem::FileTooLarge { bytes: meta.len() },
            });
        }

        let mut content = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE_LEN as usize + 1));
        (&mut file)
            .take(MAX_KEY_FILE_LEN + 1)
            .read_to_end(&mut content)
            .map_err(|source| self.read_error(source))?;
        if content.len() as u64 > MAX_KEY_FILE_LEN {
            // The file grew between the fstat and the read.
            return Err(KeyError::Corrupt {
                path: path.clone(),
                problem: FormatProblem::FileTooLarge {
                    bytes: content.len() as u64,
                },
            });
        }
        // `wg genkey > file` leaves a trailing newline; editors may add CRLF or spaces.
        private_key_from_base64_bytes(content.trim_ascii())
            .map(Some)
            .map_err(|problem| KeyError::Corrupt {
                path: path.clone(),
                problem,
            })
    }

    /// Opens the key file for reading; `Ok(None)` if it vanished since the lstat.
    ///
    /// `openat2(RESOLVE_BENEATH)` follows symbolic links only while they stay inside the store's
    /// directory, atomically, so a Secret volume's link chain is followed and nothing else is.
    /// O_NONBLOCK keeps a FIFO swapped in from blocking the open.
    fn open_key_file(&self, is_link: bool) -> Result<Option<File>, KeyError> {
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        let dir = match rustix::fs::open(
            &self.dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(dir) => dir,
            Err(e) if e == rustix::io::Errno::NOENT => return Ok(None),
            Err(e) => return Err(self.read_error(e.into())),
        };
        let opened = rustix::fs::openat2(
            &dir,
            KEY_FILE_NAME,
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        );
        match opened {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(e) if e == rustix::io::Errno::NOENT && is_link => {
                Err(self.symlink_error(SymlinkProblem::Dangling))
            }
            Err(e) if e == rustix::io::Errno::NOENT => Ok(None),
            // EXDEV: the chain left the directory (or a link is absolute).
            Err(e) if e == rustix::io::Errno::XDEV => {
                Err(self.symlink_error(SymlinkProblem::LeadsOutside))
            }
            Err(e) if e == rustix::io::Errno::LOOP => {
                Err(self.symlink_error(SymlinkProblem::TooManyLinks))
            }
            // A kernel older than 5.6, or a seccomp profile that does not know openat2.
            Err(e) if e == rustix::io::Errno::NOSYS || e == rustix::io::Errno::PERM => {
                self.open_key_file_fallback(is_link)
            }
            Err(e) => Err(self.read_error(e.into())),
        }
    }

    /// The same rule as [`Self::open_key_file`] without openat2: resolve the chain, check that
    /// it ends inside the directory, then open the resolved path without following a link.
    ///
    /// Unlike openat2 this is not atomic: a link swapped between the resolution and the open is
    /// not seen. The opened file is still checked (type, mode, owner) and the resolved path has no
    /// link left in its last component, which is what keeps a key outside the directory out.
    fn open_key_file_fallback(&self, is_link: bool) -> Result<Option<File>, KeyError> {
        let mut options = OpenOptions::new();
        options
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
        let target = if is_link {
            let dir = fs::canonicalize(&self.dir).map_err(|source| self.read_error(source))?;
            let target = match fs::canonicalize(&self.path) {
                Ok(target) => target,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(self.symlink_error(SymlinkProblem::Dangling))
                }
                Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                    return Err(self.symlink_error(SymlinkProblem::TooManyLinks))
                }
                Err(source) => return Err(self.read_error(source)),
            };
            if !target.starts_with(&dir) || target == dir {
                return Err(self.symlink_error(SymlinkProblem::LeadsOutside));
            }
            target
        } else {
            self.path.clone()
        };
        match options.open(&target) {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !is_link => Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                Err(self.symlink_error(SymlinkProblem::LeadsOutside))
            }
            Err(source) => Err(self.read_error(source)),
        }
    }

    /// Loads the key, or generates and stores a new one if there is no key file. The flag is
    /// `true` when a key was created (the caller should log the new public key).
    ///
    /// Never overwrites an existing key: if another process creates the file at the same moment,
    /// its key wins and is returned.
    pub fn load_or_create(&self) -> Result<(PrivateKey, bool), KeyError> {
        if let Some(key) = self.load()? {
            return Ok((key, false));
        }
        if self.read_only {
            return Err(KeyError::MissingReadOnly {
                path: self.path.clone(),
            });
        }
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|source| KeyError::CreateDir {
                path: self.dir.clone(),
                source,
            })?;
        let key = PrivateKey::try_generate()?;
        match self.write_new(&key) {
            Ok(()) => Ok((key, true)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Lost a race with another writer: use its key, never replace it.
                match self.load()? {
                    Some(key) => Ok((key, false)),
                    None => Err(self.write_error(e)),
                }
            }
            Err(source) => Err(self.write_error(source)),
        }
    }

    /// Writes `key` to a fresh 0600 temp file in the same directory, fsyncs it, links it into
    /// place (which fails rather than replaces if the key file exists) and fsyncs the directory
    /// so the new name survives a crash. The temp file is always removed.
    fn write_new(&self, key: &PrivateKey) -> io::Result<()> {
        let temp = self.dir.join(format!(
            "{TEMP_PREFIX}{}-{:016x}",
            std::process::id(),
            OsRng.next_u64()
        ));
        let result = write_and_link(&temp, &self.path, key);
        // Best effort: the temp name is unique, and a leftover would hold a key nobody uses.
        let _ = fs::remove_file(&temp);
        result?;
        File::open(&self.dir)?.sync_all()
    }

    fn read_error(&self, source: io::Error) -> KeyError {
        KeyError::Read {
            path: self.path.clone(),
            source,
        }
    }

    fn symlink_error(&self, problem: SymlinkProblem) -> KeyError {
        KeyError::Symlink {
            path: self.path.clone(),
            dir: self.dir.clone(),
            problem,
        }
    }

    fn write_error(&self, source: io::Error) -> KeyError {
        KeyError::Write {
            path: self.path.clone(),
            source,
        }
    }
}

fn write_and_link(temp: &Path, path: &Path, key: &PrivateKey) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(temp)?;
    file.write_all(private_key_file_content(key).as_bytes())?;
    file.sync_all()?;
    drop(file);
    // A hard link gives rename's atomicity (the key file appears complete or not at all) but,
    // unlike rename, refuses to replace an existing file: a key that appeared meanwhile wins.
    match fs::hard_link(temp, path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
        // Some filesystems have no hard links. Fall back to rename after re-checking that no
        // key exists; the window between the check and the rename is the only non-atomic part.
        Err(link_error) => match fs::symlink_metadata(path) {
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "key file appeared while writing",
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::rename(temp, path),
            Err(_) => Err(link_error),
        },
    }
}

fn check_file_type(path: &Path, file_type: &fs::FileType) -> Result<(), KeyError> {
    let found = if file_type.is_file() {
        return Ok(());
    } else if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a named pipe"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "a device or other special file"
    };
    Err(KeyError::NotRegularFile {
        path: path.to_path_buf(),
        found,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The race where another process creates the key between our `load` and our write: the
    /// link step must fail instead of replacing that key, and leave no temp file behind.
    #[test]
    fn write_new_never_replaces_an_existing_key() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = KeyStore::new(tmp.path());
        let theirs = PrivateKey::generate();
        fs::write(store.path(), private_key_file_content(&theirs).as_bytes()).expect("write");
        fs::set_permissions(
            store.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod");

        let ours = PrivateKey::generate();
        let err = store.write_new(&ours).expect_err("must not replace");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(store.load().expect("load"), Some(theirs));
        let names: Vec<_> = fs::read_dir(tmp.path())
            .expect("read dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(KEY_FILE_NAME)]);
    }

    /// The path taken where openat2 is missing (old kernels, strict seccomp profiles) follows
    /// the same rule: links inside the directory yes, anything leading out no.
    #[test]
    fn the_fallback_without_openat2_follows_only_links_inside_the_directory() {
        use std::os::unix::fs::symlink;
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("secret");
        let version = dir.join("..2026_01_01_00_00_00.1");
        fs::create_dir_all(&version).expect("mkdir");
        let key = PrivateKey::generate();
        fs::write(
            version.join(KEY_FILE_NAME),
            private_key_file_content(&key).as_bytes(),
        )
        .expect("write");
        symlink("..2026_01_01_00_00_00.1", dir.join("..data")).expect("symlink");
        symlink("..data/private.key", dir.join(KEY_FILE_NAME)).expect("symlink");
        let store = KeyStore::read_only(&dir);
        let file = store
            .open_key_file_fallback(true)
            .expect("inside")
            .expect("present");
        assert!(file.metadata().expect("fstat").is_file());

        fs::write(tmp.path().join("outside.key"), "x").expect("write");
        fs::remove_file(dir.join(KEY_FILE_NAME)).expect("rm");
        symlink("../outside.key", dir.join(KEY_FILE_NAME)).expect("symlink");
        let err = store.open_key_file_fallback(true).expect_err("outside");
        assert!(
            matches!(
                err,
                KeyError::Symlink {
                    problem: SymlinkProblem::LeadsOutside,
                    ..
                }
            ),
            "{err:?}"
        );
        fs::remove_file(dir.join(KEY_FILE_NAME)).expect("rm");
        symlink("..data/nothing", dir.join(KEY_FILE_NAME)).expect("symlink");
        let err = store.open_key_file_fallback(true).expect_err("dangling");
        assert!(
            matches!(
                err,
                KeyError::Symlink {
                    problem: SymlinkProblem::Dangling,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    /// A named pipe must be refused, not opened (which would block forever).
    #[test]
    fn refuses_fifo_without_blocking() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = KeyStore::new(tmp.path());
        let status = std::process::Command::new("mkfifo")
            .arg(store.path())
            .status()
            .expect("run mkfifo (coreutils)");
        assert!(status.success());
        let err = store.load_or_create().expect_err("fifo refused");
        assert!(
            matches!(err, KeyError::NotRegularFile { found, .. } if found == "a named pipe"),
            "{err:?}"
        );
    }
}
