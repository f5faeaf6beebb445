use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Which kind of key an error is about. Used in messages so the user knows which value to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    Private,
    Public,
    Preshared,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyKind::Private => "private key",
            KeyKind::Public => "public key",
            KeyKind::Preshared => "pre-shared key",
        })
    }
}

/// Why a string is not a key in `wg(8)`'s base64 form.
///
/// Deliberately carries only lengths and offsets, never the offending characters: the string
/// being parsed may be (most of) a secret key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FormatProblem {
    /// The string (or key file) is empty.
    Empty,
    /// Not 44 characters long.
    WrongLength { found: usize },
    /// 43 characters: the 32 bytes are there but the trailing `=` is missing.
    MissingPadding,
    /// A character outside the standard base64 alphabet (or misplaced padding).
    InvalidCharacter { offset: usize },
    /// The last character sets bits beyond the 32 key bytes, so the text is not the canonical
    /// encoding of any key (wg(8) rejects it too).
    NonCanonical,
    /// Well-formed base64 that decodes to the wrong number of bytes (e.g. ends in `==`).
    WrongDecodedLength { found: usize },
    /// A key file far larger than any key.
    FileTooLarge { bytes: u64 },
}

impl fmt::Display for FormatProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatProblem::Empty => f.write_str("it is empty"),
            FormatProblem::WrongLength { found } => write!(
                f,
                "expected 44 characters of padded standard base64 (as `wg genkey` prints), found {found}"
            ),
            FormatProblem::MissingPadding => f.write_str(
                "43 characters without the trailing '=' padding; WireGuard keys are 44 characters ending in '='",
            ),
            FormatProblem::InvalidCharacter { offset } => write!(
                f,
                "invalid base64 character at offset {offset} (the standard alphabet is A-Z a-z 0-9 + / with '=' padding)"
            ),
            FormatProblem::NonCanonical => f.write_str(
                "the last character sets bits beyond the 32 key bytes (not the canonical base64 of a key)",
            ),
            FormatProblem::WrongDecodedLength { found } => {
                write!(f, "decodes to {found} bytes, a key is 32 bytes")
            }
            FormatProblem::FileTooLarge { bytes } => {
                write!(f, "the file is {bytes} bytes, a key file is 45 bytes")
            }
        }
    }
}

/// Why a key file that is a symbolic link was not followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SymlinkProblem {
    /// The chain leaves the key directory, or a link in it is absolute.
    LeadsOutside,
    /// The chain ends at nothing.
    Dangling,
    /// Too many links (a loop).
    TooManyLinks,
}

impl fmt::Display for SymlinkProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SymlinkProblem::LeadsOutside => {
                "it is a symbolic link that leads outside its directory (or is absolute)"
            }
            SymlinkProblem::Dangling => "it is a symbolic link to nothing",
            SymlinkProblem::TooManyLinks => "it is a chain of too many symbolic links (a loop?)",
        })
    }
}

/// Why a pre-shared key passphrase is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeakPsk {
    /// The passphrase is empty.
    Empty,
    /// The passphrase is Submariner's well-known default, `default psk`.
    WellKnownDefault,
}

impl fmt::Display for WeakPsk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WeakPsk::Empty => "the pre-shared key is empty",
            WeakPsk::WellKnownDefault => {
                "the pre-shared key is Submariner's well-known default \"default psk\", which anyone can derive"
            }
        })
    }
}

/// Everything that can go wrong in this crate.
///
/// No variant ever holds key material; paths, modes, lengths and offsets only.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("parsing {kind}: {problem}")]
    Format {
        kind: KeyKind,
        problem: FormatProblem,
    },

    #[error("generating a private key: the operating system's random number generator failed")]
    Random(#[source] io::Error),

    #[error("creating key directory {}", .path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("reading key file {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("writing key file {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "refusing to use key file {p}: it is accessible by group or others (mode {mode:04o}); \
         run `chmod 600 {p}` (for a Kubernetes Secret volume: `defaultMode: 0400`) if the key \
         cannot have leaked, otherwise remove {p} to generate a new key (peers will need the new \
         public key)",
        p = .path.display(),
        mode = .mode & 0o7777
    )]
    InsecurePermissions { path: PathBuf, mode: u32 },

    #[error(
        "refusing to use key file {p}: it is {found}, not a regular file; remove {p} (or point the \
         state directory elsewhere) so a new key can be generated (peers will need the new public \
         key)",
        p = .path.display()
    )]
    NotRegularFile { path: PathBuf, found: &'static str },

    #[error(
        "key file {p} does not hold a valid WireGuard private key: {problem}; remove {p} to \
         generate a new key (peers will need the new public key)",
        p = .path.display()
    )]
    Corrupt {
        path: PathBuf,
        problem: FormatProblem,
    },

    #[error(
        "refusing to use key file {p}: {problem}; only links that stay inside {d} are followed \
         (as a Kubernetes Secret volume makes them): put the key file itself there, or mount the \
         Secret at {d}",
        p = .path.display(),
        d = .dir.display()
    )]
    Symlink {
        path: PathBuf,
        dir: PathBuf,
        problem: SymlinkProblem,
    },

    #[error(
        "refusing to use key file {p}: it belongs to uid {owner}, not to the gateway's user (uid \
         {expected}), so another user could replace the key; run `chown {expected} {p}` if that \
         user is trusted, otherwise remove {p} to generate a new key",
        p = .path.display()
    )]
    WrongOwner {
        path: PathBuf,
        owner: u32,
        expected: u32,
    },

    #[error(
        "no key file {p} in the read-only key directory; provision one, e.g. `wg genkey > \
         private.key && kubectl create secret generic wgcable-key --from-file=private.key`, \
         and mount it there with defaultMode 0400",
        p = .path.display()
    )]
    MissingReadOnly { path: PathBuf },

    #[error("reading the pre-shared key file {}", .path.display())]
    ReadPsk {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("refusing the pre-shared key file {p}: {problem}", p = .path.display())]
    BadPskFile {
        path: PathBuf,
        problem: PskFileProblem,
    },

    #[error("refusing the pre-shared key: {0}")]
    WeakPsk(WeakPsk),
}

/// Why a pre-shared key file's content or type is refused (never its content itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PskFileProblem {
    /// Not a regular file (after following links).
    NotRegularFile,
    /// Larger than any sensible passphrase.
    TooLarge { bytes: u64 },
    /// Not UTF-8 text.
    NotText,
}

impl fmt::Display for PskFileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PskFileProblem::NotRegularFile => f.write_str("it is not a regular file"),
            PskFileProblem::TooLarge { bytes } => {
                write!(f, "it is {bytes} bytes; a passphrase is at most 4096")
            }
            PskFileProblem::NotText => f.write_str("it is not UTF-8 text"),
        }
    }
}

impl KeyError {
    /// The key file or directory the error is about, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            KeyError::Format { .. } | KeyError::Random(_) => None,
            KeyError::CreateDir { path, .. }
            | KeyError::Read { path, .. }
            | KeyError::Write { path, .. }
            | KeyError::InsecurePermissions { path, .. }
            | KeyError::NotRegularFile { path, .. }
            | KeyError::Corrupt { path, .. }
            | KeyError::Symlink { path, .. }
            | KeyError::WrongOwner { path, .. }
            | KeyError::MissingReadOnly { path }
            | KeyError::ReadPsk { path, .. }
            | KeyError::BadPskFile { path, .. } => Some(path),
            KeyError::WeakPsk(_) => None,
        }
    }

    /// The text was not a key (as opposed to an I/O or permission problem).
    pub fn is_format(&self) -> bool {
        matches!(self, KeyError::Format { .. })
    }

    /// An existing key file was refused (permissions, file type or content) and needs the
    /// operator's attention; retrying will not help.
    pub fn is_refused_key_file(&self) -> bool {
        matches!(
            self,
            KeyError::InsecurePermissions { .. }
                | KeyError::NotRegularFile { .. }
                | KeyError::Corrupt { .. }
                | KeyError::Symlink { .. }
                | KeyError::WrongOwner { .. }
        )
    }
}
