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
         run `chmod 600 {p}` if the key cannot have leaked, otherwise remove {p} to generate a new \
         key (peers will need the new public key)",
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
            | KeyError::Corrupt { path, .. } => Some(path),
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
        )
    }
}
