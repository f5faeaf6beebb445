//! The pre-shared key's passphrase: the rule that refuses weak ones, and reading it from a
//! mounted secret (a file, or a Kubernetes Secret volume) with change detection for a refresh.

use std::fs::{self, File, OpenOptions};
use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::error::{KeyError, PskFileProblem, WeakPsk};
use crate::key::{PresharedKey, DEFAULT_PSK};

/// The key, inside a Secret, that holds the passphrase (Submariner reads
/// `/var/run/secrets/submariner.io/<secret>/psk`).
pub const PSK_FILE_NAME: &str = "psk";

/// Where Submariner's operator mounts the Secret named by `CE_IPSEC_PSKSECRET`.
pub const SUBMARINER_SECRETS_DIR: &str = "/var/run/secrets/submariner.io";

/// Longest passphrase file accepted.
const MAX_PSK_FILE_LEN: u64 = 4096;

/// Refuses a passphrase anyone could guess: empty, or Submariner's old default `default psk`
/// (refused by upstream's 2026 hardening too).
pub fn check_passphrase(passphrase: &str) -> Result<(), KeyError> {
    if passphrase.is_empty() {
        Err(KeyError::WeakPsk(WeakPsk::Empty))
    } else if passphrase == DEFAULT_PSK {
        Err(KeyError::WeakPsk(WeakPsk::WellKnownDefault))
    } else {
        Ok(())
    }
}

/// A passphrase kept in a file: `--psk-file`, or the Secret named by `CE_IPSEC_PSKSECRET`.
///
/// The path may name the file itself or a directory holding a [`PSK_FILE_NAME`] file (a mounted
/// Secret). Symbolic links are followed, since a Secret volume is made of them. One trailing
/// newline (LF or CRLF) is dropped, so `echo secret > psk` and `kubectl create secret
/// --from-literal=psk=secret` give the same key; anything else is part of the passphrase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PskFile {
    given: PathBuf,
}

/// Identifies the file content a passphrase was read from: a Kubernetes Secret update swaps the
/// `..data` link to a new file (new inode); an edit in place changes the size or times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PskStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl PskStamp {
    fn of(meta: &fs::Metadata) -> Self {
        PskStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

impl PskFile {
    /// A passphrase file at `path` (a file, or a directory holding `psk`).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        PskFile { given: path.into() }
    }

    /// The Secret `CE_IPSEC_PSKSECRET` names: a path (containing `/`) is used as it is, a bare
    /// name is the Secret mounted where Submariner's operator mounts it,
    /// `/var/run/secrets/submariner.io/<name>`.
    pub fn from_secret(name_or_path: &str) -> Self {
        if name_or_path.contains('/') {
            PskFile::new(name_or_path)
        } else {
            PskFile::new(Path::new(SUBMARINER_SECRETS_DIR).join(name_or_path))
        }
    }

    /// The path as given.
    pub fn path(&self) -> &Path {
        &self.given
    }

    /// The file the passphrase is read from: the path, or `<path>/psk` for a directory.
    pub fn resolve(&self) -> PathBuf {
        if self.given.is_dir() {
            self.given.join(PSK_FILE_NAME)
        } else {
            self.given.clone()
        }
    }

    /// Reads the passphrase (not checked against [`check_passphrase`]; the caller decides).
    pub fn read_passphrase(&self) -> Result<(Zeroizing<String>, PskStamp), KeyError> {
        let path = self.resolve();
        let read_error = |source| KeyError::ReadPsk {
            path: path.clone(),
            source,
        };
        let bad = |problem| KeyError::BadPskFile {
            path: path.clone(),
            problem,
        };
        // O_NONBLOCK: a FIFO put there must not block the gateway.
        let mut file: File = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .map_err(read_error)?;
        let meta = file.metadata().map_err(read_error)?;
        if !meta.is_file() {
            return Err(bad(PskFileProblem::NotRegularFile));
        }
        if meta.len() > MAX_PSK_FILE_LEN {
            return Err(bad(PskFileProblem::TooLarge { bytes: meta.len() }));
        }
        let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_PSK_FILE_LEN as usize + 1));
        (&mut file)
            .take(MAX_PSK_FILE_LEN + 1)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        if bytes.len() as u64 > MAX_PSK_FILE_LEN {
            return Err(bad(PskFileProblem::TooLarge {
                bytes: bytes.len() as u64,
            }));
        }
        let mut text = match std::str::from_utf8(&bytes) {
            Ok(text) => Zeroizing::new(text.to_owned()),
            Err(_) => return Err(bad(PskFileProblem::NotText)),
        };
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        Ok((text, PskStamp::of(&meta)))
    }

    /// The current stamp of the file, to tell whether it changed since a read.
    pub fn stamp(&self) -> Result<PskStamp, KeyError> {
        let path = self.resolve();
        fs::metadata(&path)
            .map(|meta| PskStamp::of(&meta))
            .map_err(|source| KeyError::ReadPsk { path, source })
    }
}

/// Follows a [`PskFile`] for changes, for a gateway that refreshes the key without a restart.
///
/// Each [`PskWatcher::poll`] is one `stat`; the file is read again only when its stamp changed,
/// and a new key is returned only when the passphrase is different and passes
/// [`check_passphrase`] (unless weak ones are allowed). A refused or unreadable new file is an
/// error and the previous key stays in force: tunnels keep working on the old key.
#[derive(Debug)]
pub struct PskWatcher {
    file: PskFile,
    stamp: PskStamp,
    key: PresharedKey,
    allow_weak: bool,
}

impl PskWatcher {
    /// Reads `file` once; fails as a start-up error would.
    pub fn new(file: PskFile, allow_weak: bool) -> Result<Self, KeyError> {
        let (passphrase, stamp) = file.read_passphrase()?;
        if !allow_weak {
            check_passphrase(&passphrase)?;
        }
        Ok(PskWatcher {
            file,
            stamp,
            key: PresharedKey::from_passphrase(&passphrase),
            allow_weak,
        })
    }

    /// The key in force.
    pub fn key(&self) -> &PresharedKey {
        &self.key
    }

    /// The file being followed.
    pub fn file(&self) -> &PskFile {
        &self.file
    }

    /// `Ok(Some(key))` when the file now holds a different passphrase; `Ok(None)` when nothing
    /// changed (or only the file did, not the key).
    pub fn poll(&mut self) -> Result<Option<PresharedKey>, KeyError> {
        if self.file.stamp()? == self.stamp {
            return Ok(None);
        }
        let (passphrase, stamp) = self.file.read_passphrase()?;
        if !self.allow_weak {
            check_passphrase(&passphrase)?;
        }
        self.stamp = stamp;
        let key = PresharedKey::from_passphrase(&passphrase);
        if key == self.key {
            return Ok(None);
        }
        self.key = key.clone();
        Ok(Some(key))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn weak_passphrases_are_refused() {
        for (passphrase, want) in [
            ("", Some(WeakPsk::Empty)),
            (DEFAULT_PSK, Some(WeakPsk::WellKnownDefault)),
        ] {
            match check_passphrase(passphrase) {
                Err(KeyError::WeakPsk(problem)) => assert_eq!(Some(problem), want),
                other => panic!("{passphrase:?}: {other:?}"),
            }
        }
        check_passphrase("default psk ").expect("not the literal default");
        check_passphrase("s3cret").expect("fine");
    }

    #[test]
    fn secret_names_map_to_submariners_mount_point() {
        assert_eq!(
            PskFile::from_secret("submariner-ipsec-psk").path(),
            Path::new("/var/run/secrets/submariner.io/submariner-ipsec-psk")
        );
        assert_eq!(
            PskFile::from_secret("/etc/wgcable/psk").path(),
            Path::new("/etc/wgcable/psk")
        );
        assert_eq!(PskFile::from_secret("./psk").path(), Path::new("./psk"));
    }

    #[test]
    fn one_trailing_newline_is_dropped() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("psk");
        for (content, want) in [
            ("s3cret", "s3cret"),
            ("s3cret\n", "s3cret"),
            ("s3cret\r\n", "s3cret"),
            ("s3cret\n\n", "s3cret\n"),
            (" s3cret ", " s3cret "),
        ] {
            fs::write(&path, content).expect("write");
            let (got, _) = PskFile::new(&path).read_passphrase().expect("read");
            assert_eq!(got.as_str(), want, "{content:?}");
        }
    }

    #[test]
    fn bad_files_are_refused_without_echoing_them() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("psk");
        fs::write(&path, [0xff, 0xfe, b's']).expect("write");
        let err = PskFile::new(&path).read_passphrase().expect_err("binary");
        assert!(
            matches!(
                err,
                KeyError::BadPskFile {
                    problem: PskFileProblem::NotText,
                    ..
                }
            ),
            "{err:?}"
        );
        fs::write(&path, "x".repeat(5000)).expect("write");
        let err = PskFile::new(&path).read_passphrase().expect_err("large");
        assert!(err.to_string().contains("5000 bytes"), "{err}");
        assert!(!err.to_string().contains("xxx"), "{err}");
        let missing = PskFile::new(tmp.path().join("nowhere"));
        let err = missing.read_passphrase().expect_err("missing");
        assert!(matches!(err, KeyError::ReadPsk { .. }), "{err:?}");
        assert!(err.to_string().contains("nowhere"), "{err}");
    }

    /// Builds `dir` the way the kubelet lays out a Secret volume with one key, `psk`, holding
    /// `content`: `psk -> ..data/psk`, `..data -> ..<version>`; a new version swaps `..data`
    /// atomically (a rename over it).
    fn secret_volume_version(dir: &Path, version: &str, content: &str) {
        let data = dir.join(format!("..{version}"));
        fs::create_dir(&data).expect("mkdir version");
        fs::write(data.join(PSK_FILE_NAME), content).expect("write psk");
        let tmp_link = dir.join("..data_tmp");
        symlink(format!("..{version}"), &tmp_link).expect("symlink ..data_tmp");
        fs::rename(&tmp_link, dir.join("..data")).expect("swap ..data");
        if fs::symlink_metadata(dir.join(PSK_FILE_NAME)).is_err() {
            symlink(format!("..data/{PSK_FILE_NAME}"), dir.join(PSK_FILE_NAME))
                .expect("symlink psk");
        }
    }

    #[test]
    fn a_secret_volume_update_is_seen_and_only_a_new_key_is_reported() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        secret_volume_version(dir, "2026_01_01_00_00_00.1", "first");
        // The directory names the Secret; its `psk` key is found inside.
        let mut watcher = PskWatcher::new(PskFile::new(dir), false).expect("read");
        assert_eq!(watcher.key(), &PresharedKey::from_passphrase("first"));
        assert_eq!(watcher.poll().expect("poll"), None, "nothing changed");

        secret_volume_version(dir, "2026_01_02_00_00_00.1", "second");
        let new = watcher.poll().expect("poll").expect("a new key");
        assert_eq!(new, PresharedKey::from_passphrase("second"));
        assert_eq!(watcher.key(), &new);
        assert_eq!(watcher.poll().expect("poll"), None);

        // The same passphrase in a new file: the file changed, the key did not.
        secret_volume_version(dir, "2026_01_03_00_00_00.1", "second\n");
        assert_eq!(watcher.poll().expect("poll"), None);

        // A weak new passphrase is refused and the previous key stays in force.
        secret_volume_version(dir, "2026_01_04_00_00_00.1", DEFAULT_PSK);
        let err = watcher.poll().expect_err("weak refused");
        assert!(
            matches!(err, KeyError::WeakPsk(WeakPsk::WellKnownDefault)),
            "{err:?}"
        );
        assert_eq!(watcher.key(), &PresharedKey::from_passphrase("second"));
    }

    #[test]
    fn a_weak_first_passphrase_fails_unless_allowed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("psk");
        fs::write(&path, "").expect("write");
        let err = PskWatcher::new(PskFile::new(&path), false).expect_err("empty");
        assert!(matches!(err, KeyError::WeakPsk(WeakPsk::Empty)), "{err:?}");
        let watcher = PskWatcher::new(PskFile::new(&path), true).expect("allowed");
        assert_eq!(watcher.key(), &PresharedKey::from_passphrase(""));
    }
}
