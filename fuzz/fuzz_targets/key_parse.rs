//! The key parsers of wgcable-keys on arbitrary text. Invariants: no panic; whatever parses is
//! canonical (it prints back exactly as given), and the three key types agree on what parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wgcable_keys::{PresharedKey, PrivateKey, PublicKey};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let public = PublicKey::from_base64(&text);
    let private = PrivateKey::from_base64(&text);
    let preshared = PresharedKey::from_base64(&text);
    assert_eq!(public.is_ok(), preshared.is_ok());
    if let Ok(key) = &public {
        assert_eq!(key.to_base64(), text);
        assert_eq!(text.parse::<PublicKey>().ok().as_ref(), Some(key));
    }
    if let Ok(key) = &preshared {
        assert_eq!(key.to_base64().as_str(), text);
    }
    if let Ok(key) = &private {
        // Private keys are clamped on use, not on parse, so the text round-trips as well.
        assert_eq!(key.to_base64().as_str(), text);
        let _ = key.public_key();
    }
    if let Err(error) = &public {
        // Formatting an error never fails or panics. (Whether it quotes the text is a unit test
        // of wgcable-keys: here the fuzzer learned to feed the message's own words back as input,
        // which a "does not contain the input" check cannot tell from a leak.)
        let _ = error.to_string();
    }
    let _ = PresharedKey::from_passphrase(&text);
});
