//! WireGuard key management for wgcable.
//!
//! This crate owns every piece of secret material the gateway handles:
//!
//! * [`PrivateKey`], [`PublicKey`] and [`PresharedKey`] are distinct types, so a public key can
//!   never be passed where a secret is expected (and vice versa). Their base64 form is exactly the
//!   one `wg(8)` reads and writes: standard alphabet, padded, 44 characters.
//! * [`PrivateKey::generate`] clamps exactly like `wg genkey`.
//! * [`PresharedKey::from_passphrase`] derives the pre-shared key the way Submariner does: the
//!   SHA-256 of the configured string (env `CE_IPSEC_PSK`, default [`DEFAULT_PSK`]).
//! * [`KeyStore`] loads the gateway's private key from a state directory or creates it once,
//!   atomically and with mode 0600, so that restarting the gateway keeps its identity (upstream
//!   Submariner generates a new key on every start and drops every tunnel).
//!   [`KeyStore::read_only`] reads a key provisioned from outside, such as a Kubernetes Secret
//!   volume, whose symbolic links are followed only inside the mounted directory.
//! * [`check_passphrase`] refuses an empty PSK and Submariner's well-known default;
//!   [`PskFile`] reads the passphrase from a mounted secret and [`PskWatcher`] notices when it
//!   changes, so a gateway can refresh the key without a restart.
//!
//! Secrets are zeroized on drop, print as `<redacted>` and never appear in an error message.
//!
//! What this crate must NOT know about: the network (no sockets, no netlink, no WireGuard
//! device), Submariner's data model and the engine. Its only I/O is the key file and the PSK file.

mod error;
mod key;
mod psk;
mod store;

pub use error::{FormatProblem, KeyError, KeyKind, PskFileProblem, SymlinkProblem, WeakPsk};
pub use key::{PresharedKey, PrivateKey, PublicKey, DEFAULT_PSK, KEY_BASE64_LEN, KEY_LEN};
pub use psk::{
    check_passphrase, PskFile, PskStamp, PskWatcher, PSK_FILE_NAME, SUBMARINER_SECRETS_DIR,
};
pub use store::{KeyStore, KEY_FILE_NAME};
