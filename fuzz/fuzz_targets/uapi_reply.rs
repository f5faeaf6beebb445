//! The userspace WireGuard UAPI reply parser (`get=1`) on arbitrary text. Invariant: no panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The socket reader hands the parser text read line by line into a String.
    if let Ok(reply) = std::str::from_utf8(data) {
        let _ = wgcable_peers::fuzz_decode_get(reply);
    }
});
