use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::{DecodeError, DecodeSliceError, Engine as _};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{FormatProblem, KeyError, KeyKind};

/// Length of every WireGuard key in bytes.
pub const KEY_LEN: usize = 32;

/// Length of a key in `wg(8)`'s base64 form: 32 bytes, standard alphabet, padded.
pub const KEY_BASE64_LEN: usize = 44;

/// The pre-shared key string Submariner used when env `CE_IPSEC_PSK` was not set. Anyone can
/// derive its key: [`crate::check_passphrase`] refuses it, as upstream now does.
pub const DEFAULT_PSK: &str = "default psk";

const REDACTED: &str = "<redacted>";

/// Decodes `wg(8)` base64 into 32 bytes, strictly: exactly 44 characters, padded, canonical.
///
/// The caller's buffer is written in place so that secret bytes are not copied around.
fn decode_key(text: &[u8], out: &mut [u8; KEY_LEN]) -> Result<(), FormatProblem> {
    match text.len() {
        0 => return Err(FormatProblem::Empty),
        KEY_BASE64_LEN => {}
        // 43 characters is exactly 32 bytes without padding, a common copy/paste or
        // "URL-safe encoder" mistake; say so rather than just "wrong length".
        43 if !text.contains(&b'=') => return Err(FormatProblem::MissingPadding),
        found => return Err(FormatProblem::WrongLength { found }),
    }
    // A 33-byte scratch buffer: 44 characters without padding decode to 33 bytes, which we want
    // to report as a wrong length rather than as a buffer problem.
    let mut scratch = Zeroizing::new([0u8; KEY_LEN + 1]);
    let decoded = STANDARD
        .decode_slice(text, &mut scratch[..])
        .map_err(|e| match e {
            DecodeSliceError::DecodeError(DecodeError::InvalidByte(offset, _)) => {
                FormatProblem::InvalidCharacter { offset }
            }
            DecodeSliceError::DecodeError(DecodeError::InvalidLastSymbol(_, _)) => {
                FormatProblem::NonCanonical
            }
            DecodeSliceError::DecodeError(DecodeError::InvalidPadding)
            | DecodeSliceError::DecodeError(DecodeError::InvalidLength(_))
            | DecodeSliceError::OutputSliceTooSmall => {
                // Misplaced '=' characters; point at the first one.
                let offset = text.iter().position(|&b| b == b'=').unwrap_or(0);
                FormatProblem::InvalidCharacter { offset }
            }
        })?;
    if decoded != KEY_LEN {
        return Err(FormatProblem::WrongDecodedLength { found: decoded });
    }
    out.copy_from_slice(&scratch[..KEY_LEN]);
    Ok(())
}

/// Appends the base64 form of `bytes` to `out`, which must have room for 44 more characters so
/// that no reallocation leaves a stray copy of a secret behind.
fn encode_key_into(bytes: &[u8; KEY_LEN], out: &mut String) {
    debug_assert!(out.capacity() - out.len() >= KEY_BASE64_LEN);
    STANDARD.encode_string(bytes, out);
}

fn encode_secret(bytes: &[u8; KEY_LEN]) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(KEY_BASE64_LEN));
    encode_key_into(bytes, &mut out);
    out
}

/// Compares two keys without an early exit, so the time taken does not reveal how many leading
/// bytes match.
fn ct_eq(a: &[u8; KEY_LEN], b: &[u8; KEY_LEN]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Clamps a Curve25519 secret exactly like `wg genkey` (and the kernel) do.
fn clamp(k: &mut [u8; KEY_LEN]) {
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
}

/// A WireGuard (Curve25519) private key.
///
/// Zeroized on drop; `Debug` and `Display` print `<redacted>`. Use [`PrivateKey::to_base64`] to
/// get the text form deliberately.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PrivateKey([u8; KEY_LEN]);

impl PrivateKey {
    /// A new random key, clamped like `wg genkey`.
    ///
    /// # Panics
    /// If the operating system's random number generator fails, which leaves no safe way to make
    /// a key. Use [`PrivateKey::try_generate`] to handle that as an error.
    pub fn generate() -> Self {
        Self::try_generate().expect("the OS random number generator failed; cannot make a key")
    }

    /// Like [`PrivateKey::generate`], reporting a failing random number generator as an error.
    pub fn try_generate() -> Result<Self, KeyError> {
        let mut key = PrivateKey([0; KEY_LEN]);
        OsRng.try_fill_bytes(&mut key.0).map_err(|e| {
            // rand_core's error only implements std::error::Error with its "std" feature.
            KeyError::Random(match e.raw_os_error() {
                Some(errno) => std::io::Error::from_raw_os_error(errno),
                None => std::io::Error::other(e.to_string()),
            })
        })?;
        clamp(&mut key.0);
        Ok(key)
    }

    /// Wraps raw bytes as they are, without clamping: `wg(8)` and the kernel accept unclamped
    /// keys and clamp when computing, so keeping the bytes unchanged keeps round trips exact.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        PrivateKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Parses `wg(8)` base64 (44 characters, padded). Surrounding whitespace is not accepted;
    /// trim a key file's trailing newline first.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let mut key = PrivateKey([0; KEY_LEN]);
        decode_key(text.as_bytes(), &mut key.0).map_err(|problem| KeyError::Format {
            kind: KeyKind::Private,
            problem,
        })?;
        Ok(key)
    }

    /// The `wg(8)` base64 form, in a buffer that is zeroized when dropped.
    pub fn to_base64(&self) -> Zeroizing<String> {
        encode_secret(&self.0)
    }

    /// The matching public key (the key is clamped for the computation, as WireGuard does).
    pub fn public_key(&self) -> PublicKey {
        // StaticSecret zeroizes itself on drop (x25519-dalek's "zeroize" feature).
        let secret = x25519_dalek::StaticSecret::from(self.0);
        PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes())
    }
}

impl PartialEq for PrivateKey {
    fn eq(&self, other: &Self) -> bool {
        ct_eq(&self.0, &other.0)
    }
}

impl Eq for PrivateKey {}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({REDACTED})")
    }
}

impl fmt::Display for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl FromStr for PrivateKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_base64(s)
    }
}

/// A WireGuard public key. Not secret: `Display` prints the 44-character base64 form.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        PublicKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Parses `wg(8)` base64 (44 characters, padded, canonical).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let mut key = [0; KEY_LEN];
        decode_key(text.as_bytes(), &mut key).map_err(|problem| KeyError::Format {
            kind: KeyKind::Public,
            problem,
        })?;
        Ok(PublicKey(key))
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = String::with_capacity(KEY_BASE64_LEN);
        encode_key_into(&self.0, &mut text);
        // `pad` so that width/alignment flags work in tables.
        f.pad(&text)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_base64(s)
    }
}

impl From<&PrivateKey> for PublicKey {
    fn from(key: &PrivateKey) -> Self {
        key.public_key()
    }
}

/// A WireGuard pre-shared key (the optional symmetric key mixed into the handshake).
///
/// Zeroized on drop; `Debug` and `Display` print `<redacted>`; equality is constant-time.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PresharedKey([u8; KEY_LEN]);

impl PresharedKey {
    /// Derives the key the way Submariner does: the SHA-256 of the UTF-8 string (env
    /// `CE_IPSEC_PSK`, default [`DEFAULT_PSK`]). Every gateway of a deployment derives the same
    /// 32 bytes, so peers interoperate with upstream Submariner gateways.
    pub fn from_passphrase(passphrase: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(passphrase.as_bytes());
        let mut key = PresharedKey([0; KEY_LEN]);
        key.0.copy_from_slice(&hasher.finalize());
        key
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        PresharedKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Parses `wg(8)` base64 (44 characters, padded, canonical).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let mut key = PresharedKey([0; KEY_LEN]);
        decode_key(text.as_bytes(), &mut key.0).map_err(|problem| KeyError::Format {
            kind: KeyKind::Preshared,
            problem,
        })?;
        Ok(key)
    }

    /// The `wg(8)` base64 form, in a buffer that is zeroized when dropped.
    pub fn to_base64(&self) -> Zeroizing<String> {
        encode_secret(&self.0)
    }
}

impl PartialEq for PresharedKey {
    fn eq(&self, other: &Self) -> bool {
        ct_eq(&self.0, &other.0)
    }
}

impl Eq for PresharedKey {}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PresharedKey({REDACTED})")
    }
}

impl fmt::Display for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl FromStr for PresharedKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_base64(s)
    }
}

/// Used by the key store to decode a file's trimmed bytes without building a `String`.
pub(crate) fn private_key_from_base64_bytes(text: &[u8]) -> Result<PrivateKey, FormatProblem> {
    let mut key = PrivateKey([0; KEY_LEN]);
    decode_key(text, &mut key.0)?;
    Ok(key)
}

/// Writes the key file content (`base64 + "\n"`, like `wg genkey > file`) into a zeroizing buffer.
pub(crate) fn private_key_file_content(key: &PrivateKey) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(KEY_BASE64_LEN + 1));
    encode_key_into(&key.0, &mut out);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from `wg genkey | tee /dev/stderr | wg pubkey` (wireguard-tools v1.0).
    const WG_VECTORS: &[(&str, &str)] = &[
        (
            "YPq39CSq/QH5dHv7DYYF2RHow63DaufYS14c5FI03EM=",
            "ahDa8lFK4AxFMbLk685z3xh5xjR+z3/fXDaWXd/onEw=",
        ),
        (
            "WBDGH20HSpAgYOEGOTBcw5a0DS5qKMK9rP8WJcQrV2o=",
            "b98wRzVxljvjDMk9tpg4DKZtbSE/V/iyLBPXQhjn6Bo=",
        ),
        (
            "UHJVwDOQrqvIgtBrmzlOp1zVOOLU2TVK8LInxWQJemQ=",
            "JtzGGbv0hT9KHV86qNgsdMdsm5sPkBprHPjEPXfKrQU=",
        ),
        // Unclamped inputs: `wg pubkey` clamps before multiplying, so must we.
        (
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "L+V9o0fNYkMVKNqsX7spBzD/9oSvxM/C7ZCZX1jLO3Q=",
        ),
        (
            "//////////////////////////////////////////8=",
            "hHwNLDdSNPNl5mCVUYejc1oPdhPRYJ06ak2MU66qWiI=",
        ),
    ];

    #[test]
    fn public_key_matches_wg_pubkey() {
        for (private, public) in WG_VECTORS {
            let key = PrivateKey::from_base64(private).expect("vector parses");
            assert_eq!(key.public_key().to_base64(), *public, "for {private}");
            assert_eq!(key.public_key().to_string(), *public);
            assert_eq!(PublicKey::from(&key), key.public_key());
            // Base64 round trip is exact, unclamped bytes included.
            assert_eq!(key.to_base64().as_str(), *private);
            let parsed: PublicKey = public.parse().expect("public vector parses");
            assert_eq!(parsed.to_base64(), *public);
        }
    }

    #[test]
    fn generated_keys_are_clamped_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..64 {
            let key = PrivateKey::generate();
            let b = key.as_bytes();
            assert_eq!(b[0] & 7, 0, "low 3 bits cleared");
            assert_eq!(b[31] & 128, 0, "top bit cleared");
            assert_eq!(b[31] & 64, 64, "second-highest bit set");
            assert!(seen.insert(*b), "random keys must not repeat");
            let text = key.to_base64();
            assert_eq!(text.len(), KEY_BASE64_LEN);
            assert_eq!(PrivateKey::from_base64(&text).expect("round trip"), key);
        }
    }

    #[test]
    fn clamp_matches_wg() {
        let mut k = [0xff; KEY_LEN];
        clamp(&mut k);
        assert_eq!(k[0], 0xf8);
        assert_eq!(k[31], 0x7f);
        assert_eq!(&k[1..31], &[0xff; 30]);
        let mut k = [0; KEY_LEN];
        clamp(&mut k);
        assert_eq!(k[31], 0x40);
    }

    #[test]
    fn psk_is_sha256_of_passphrase() {
        // printf 'default psk' | sha256sum
        let expected = "88389a72ef60dc22f2236af58ed6f6d81f4bcbf0123a0965dafbfd1921593c9c";
        let psk = PresharedKey::from_passphrase(DEFAULT_PSK);
        let hex: String = psk.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected);
        // ... | xxd -r -p | base64
        assert_eq!(
            psk.to_base64().as_str(),
            "iDiacu9g3CLyI2r1jtb22B9Ly/ASOgll2vv9GSFZPJw="
        );
        assert_ne!(PresharedKey::from_passphrase("other"), psk);
        assert_eq!(
            PresharedKey::from_base64("iDiacu9g3CLyI2r1jtb22B9Ly/ASOgll2vv9GSFZPJw=")
                .expect("parses"),
            psk
        );
    }

    #[test]
    fn base64_errors() {
        let valid = WG_VECTORS[0].1;
        let cases: Vec<(String, FormatProblem)> = vec![
            (String::new(), FormatProblem::Empty),
            ("abc".into(), FormatProblem::WrongLength { found: 3 }),
            (
                format!("{valid}A"),
                FormatProblem::WrongLength { found: 45 },
            ),
            (valid[..43].into(), FormatProblem::MissingPadding),
            (
                format!("{}!{}", &valid[..10], &valid[11..]),
                FormatProblem::InvalidCharacter { offset: 10 },
            ),
            // URL-safe alphabet is not what wg(8) uses.
            (
                format!("{}-{}", &valid[..5], &valid[6..]),
                FormatProblem::InvalidCharacter { offset: 5 },
            ),
            (
                format!(" {}", &valid[1..]),
                FormatProblem::InvalidCharacter { offset: 0 },
            ),
            // Last data character 'B' sets a bit beyond the 256th.
            (
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=".into(),
                FormatProblem::NonCanonical,
            ),
            // 44 characters, but "==" means 31 bytes.
            (
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==".into(),
                FormatProblem::WrongDecodedLength { found: 31 },
            ),
            // 44 characters, no padding: 33 bytes.
            (
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
                FormatProblem::WrongDecodedLength { found: 33 },
            ),
            // 24 bytes of base64 for a 16-byte value.
            (
                "AAAAAAAAAAAAAAAAAAAAAA==".into(),
                FormatProblem::WrongLength { found: 24 },
            ),
        ];
        for (text, want) in cases {
            for (kind, got) in [
                (KeyKind::Public, PublicKey::from_base64(&text).err()),
                (KeyKind::Private, PrivateKey::from_base64(&text).err()),
                (KeyKind::Preshared, PresharedKey::from_base64(&text).err()),
            ] {
                match got {
                    Some(KeyError::Format { kind: k, problem }) => {
                        assert_eq!((k, problem), (kind, want), "input {text:?}");
                    }
                    other => panic!("input {text:?}: expected {want:?}, got {other:?}"),
                }
            }
        }
    }

    #[test]
    fn secrets_never_print() {
        let (private, _) = WG_VECTORS[0];
        let key = PrivateKey::from_base64(private).expect("parses");
        let psk = PresharedKey::from_passphrase(DEFAULT_PSK);
        let psk_text = psk.to_base64();
        for shown in [
            format!("{key:?}"),
            format!("{key}"),
            format!("{key:#?}"),
            format!("{psk:?}"),
            format!("{psk}"),
            format!("{:?}", Some(&key)),
        ] {
            assert!(shown.contains(REDACTED), "{shown}");
            assert!(!shown.contains(private), "{shown}");
            assert!(!shown.contains(psk_text.as_str()), "{shown}");
            assert!(!shown.contains(&private[..20]), "{shown}");
        }
        // A near-miss of a real key (last char dropped) must not be echoed back.
        let err = PrivateKey::from_base64(&private[..43]).expect_err("unpadded");
        let msg = format!("{err} {err:?}");
        assert!(!msg.contains(&private[..20]), "{msg}");
        let bad = format!("{}*", &private[..43]);
        let err = PrivateKey::from_base64(&bad).expect_err("bad char");
        let msg = format!("{err} {err:?}");
        assert!(!msg.contains(&private[..20]), "{msg}");
    }

    #[test]
    fn public_key_formatting() {
        let (_, public) = WG_VECTORS[1];
        let key = PublicKey::from_base64(public).expect("parses");
        assert_eq!(format!("{key:?}"), format!("PublicKey({public})"));
        assert_eq!(format!("{key:>46}"), format!("  {public}"));
        let bytes = *key.as_bytes();
        assert_eq!(PublicKey::from_bytes(bytes), key);
    }

    #[test]
    fn constant_time_eq_is_correct() {
        let a = PrivateKey::from_bytes([1; KEY_LEN]);
        let mut other = [1; KEY_LEN];
        assert_eq!(a, PrivateKey::from_bytes(other));
        other[31] = 2;
        assert_ne!(a, PrivateKey::from_bytes(other));
        other[31] = 1;
        other[0] = 0;
        assert_ne!(a, PrivateKey::from_bytes(other));
    }
}
