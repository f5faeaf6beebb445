//! Careful file I/O shared by the file source and the admission registry: reads that never
//! follow a link, never block on a FIFO and never read more than asked; atomic writes.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// What a path turned out to be when it was not a readable regular file.
#[derive(Debug)]
pub enum ReadRefusal {
    /// A symbolic link (never followed, wherever it points).
    Symlink,
    /// A FIFO, socket, device or directory.
    NotRegular(&'static str),
}

/// What kind of file `meta` (from `symlink_metadata`) describes, for messages.
pub fn kind_name(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_symlink() {
        "symbolic link"
    } else if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() || t.is_char_device() {
        "device"
    } else if t.is_file() {
        "regular file"
    } else {
        "special file"
    }
}

/// What identifies one version of a file: a write changes size, mtime or ctime (ctime cannot
/// be set from user space), a rename over it changes the inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl Stamp {
    pub fn of(meta: &Metadata) -> Self {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// The outcome of [`read_regular`].
#[derive(Debug)]
pub enum ReadOutcome {
    /// The file's first `limit + 1` bytes at most, and its stamp before and after the read
    /// (they differ when it was written meanwhile).
    Read {
        bytes: Vec<u8>,
        before: Stamp,
        after: Stamp,
    },
    Refused(ReadRefusal),
}

/// Reads at most `limit + 1` bytes of the regular file at `path`, so an oversized file is
/// seen as oversized without being read whole.
///
/// The path is checked with `lstat` first, so a FIFO or device is never even opened; the open
/// itself uses `O_NOFOLLOW` (a link swapped in after the check fails with `ELOOP` instead of
/// being followed) and `O_NONBLOCK` (a FIFO swapped in opens without waiting for a writer),
/// and the opened file is checked again with `fstat`.
pub fn read_regular(path: &Path, limit: usize) -> io::Result<ReadOutcome> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(ReadOutcome::Refused(ReadRefusal::Symlink));
    }
    if !meta.file_type().is_file() {
        return Ok(ReadOutcome::Refused(ReadRefusal::NotRegular(kind_name(
            &meta,
        ))));
    }
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc_flags())
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Ok(ReadOutcome::Refused(ReadRefusal::Symlink))
        }
        Err(e) => return Err(e),
    };
    let opened = file.metadata()?;
    if !opened.file_type().is_file() {
        return Ok(ReadOutcome::Refused(ReadRefusal::NotRegular(kind_name(
            &opened,
        ))));
    }
    let before = Stamp::of(&opened);
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    let mut bytes = Vec::with_capacity(usize::try_from(before.size.min(cap)).unwrap_or(0));
    (&file).take(cap).read_to_end(&mut bytes)?;
    let after = Stamp::of(&file.metadata()?);
    Ok(ReadOutcome::Read {
        bytes,
        before,
        after,
    })
}

fn libc_flags() -> i32 {
    nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC
}

/// Writes `content` to `path` atomically with `mode`: a hidden temporary file in the same
/// directory (`.wgcable-*.tmp`, which readers skip), fsync, rename over the target, fsync the
/// directory. Readers see the old or the new file, never a torn one.
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".wgcable-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(content)?;
    tmp.as_file().sync_all()?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode))?;
    tmp.persist(path).map_err(|e| e.error)?;
    // Without it the rename may not survive a crash; a failure here loses nothing already
    // written, so it is not an error.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_capped_and_links_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 1000]).expect("write");
        match read_regular(&big, 10).expect("read") {
            ReadOutcome::Read {
                bytes,
                before,
                after,
            } => {
                assert_eq!(bytes.len(), 11);
                assert_eq!(before, after);
            }
            other => panic!("{other:?}"),
        }
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&big, &link).expect("symlink");
        assert!(matches!(
            read_regular(&link, 10).expect("read"),
            ReadOutcome::Refused(ReadRefusal::Symlink)
        ));
        assert!(matches!(
            read_regular(dir.path(), 10).expect("read"),
            ReadOutcome::Refused(ReadRefusal::NotRegular("directory"))
        ));
    }

    #[test]
    fn atomic_writes_replace_and_set_the_mode() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f.json");
        write_atomic(&path, b"one", 0o644).expect("write");
        write_atomic(&path, b"two", 0o600).expect("rewrite");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    }
}
