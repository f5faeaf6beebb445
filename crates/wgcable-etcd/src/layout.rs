//! The key layout: `<prefix>/endpoints/<cluster-id>`, one key per cluster.
//!
//! Pure: no I/O. Everything that decides whether a key read from etcd is delivered, and how
//! a key is named in a log line, is here.

use std::fmt::Write as _;

use wgcable_api::MAX_CLUSTER_ID_LEN;

use crate::Error;

/// The default prefix, as `--etcd-prefix` shows it.
pub const DEFAULT_PREFIX: &str = "/wgcable";

/// The folder under the prefix that holds the Endpoints.
const ENDPOINTS: &str = "/endpoints/";

/// Longest key prefix accepted (etcd takes keys up to its request size; ours stay short so that
/// every key this source delivers fits in a log line).
const MAX_PREFIX_LEN: usize = 200;

/// At most this many characters of an unexpected key are printed (hostile keys may be huge).
const MAX_SHOWN_KEY_CHARS: usize = 120;

/// Where the Endpoints live under one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `<prefix>/endpoints/`, the start of the watched range.
    dir: String,
}

impl Layout {
    /// Checks `prefix` (absolute, no trailing `/`, no empty or dot segments, printable ASCII
    /// without spaces) and builds the layout.
    pub fn new(prefix: &str) -> Result<Layout, Error> {
        let bad = |why: &str| Error::Config {
            what: format!(
                "--etcd-prefix {}: {why}",
                printable(prefix.as_bytes(), MAX_SHOWN_KEY_CHARS)
            ),
        };
        if !prefix.starts_with('/') {
            return Err(bad("must start with '/' (for example /wgcable)"));
        }
        if prefix.len() > MAX_PREFIX_LEN {
            return Err(bad(&format!("is longer than {MAX_PREFIX_LEN} bytes")));
        }
        if !prefix.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(
                "may hold only printable ASCII characters without spaces",
            ));
        }
        // "/" alone is the root: allowed, the keys are then /endpoints/<id>.
        let trimmed = if prefix == "/" { "" } else { prefix };
        if trimmed.ends_with('/') {
            return Err(bad("must not end with '/'"));
        }
        if trimmed
            .split('/')
            .skip(1)
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(bad("must not contain empty, '.' or '..' segments"));
        }
        Ok(Layout {
            dir: format!("{trimmed}{ENDPOINTS}"),
        })
    }

    /// The key of `cluster_id`'s Endpoint. The id must be a DNS label.
    pub fn key_of(&self, cluster_id: &str) -> Result<String, Error> {
        if !is_dns_label(cluster_id) {
            return Err(Error::Config {
                what: format!(
                    "cluster id {}: not a DNS-1123 label (lowercase letters, digits and '-', \
                     at most {MAX_CLUSTER_ID_LEN} characters), so it has no key in etcd",
                    printable(cluster_id.as_bytes(), MAX_SHOWN_KEY_CHARS)
                ),
            });
        }
        Ok(format!("{}{cluster_id}", self.dir))
    }

    /// The start of the watched range, `<prefix>/endpoints/`.
    pub fn range_start(&self) -> &str {
        &self.dir
    }

    /// The end of the watched range (exclusive): the range start with its last byte
    /// incremented, as etcd's `--prefix` computes it. The last byte is always `/`, so this is
    /// `<prefix>/endpoints0`.
    pub fn range_end(&self) -> Vec<u8> {
        let mut end = self.dir.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        end
    }

    /// The cluster a key binds its value to, if the key matches the layout exactly:
    /// `<prefix>/endpoints/<id>` with `<id>` a DNS label. `None` for anything else (deeper
    /// paths, upper case, non-UTF-8...).
    pub fn cluster_of(&self, key: &[u8]) -> Option<String> {
        let rest = key.strip_prefix(self.dir.as_bytes())?;
        let id = std::str::from_utf8(rest).ok()?;
        is_dns_label(id).then(|| id.to_string())
    }
}

/// A DNS-1123 label: 1 to 63 lowercase letters, digits and '-', starting and ending with a
/// letter or digit. (The same rule as `EndpointSpec::validate`'s for `cluster_id`, which is not
/// public; this copy decides only which keys are delivered.)
pub fn is_dns_label(id: &str) -> bool {
    let b = id.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= MAX_CLUSTER_ID_LEN
        && b.iter().all(|c| alnum(c) || *c == b'-')
        && b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum)
}

/// A key that does not match the layout, made safe to print: printable ASCII kept, every
/// other byte as `\xNN`, cut after `max` characters with the full length noted. A key is
/// written by whoever can write to etcd, so it is treated like any untrusted input; only its
/// shape is shown, in quotes.
pub fn printable(key: &[u8], max: usize) -> String {
    let (text, cut) = escape(key, max);
    match cut {
        false => format!("\"{text}\""),
        true => format!("\"{text}...\" ({} bytes)", key.len()),
    }
}

/// A key outside the layout as the object key it is refused under: escaped as [`printable`]
/// does, without quotes, cut with `... (N bytes)`.
pub fn refused_key(key: &[u8]) -> String {
    match escape(key, MAX_SHOWN_KEY_CHARS) {
        (text, false) => text,
        (text, true) => format!("{text}... ({} bytes)", key.len()),
    }
}

/// Printable ASCII kept (quotes and backslashes escaped), every other byte as `\xNN`, at most
/// `max` bytes of the key; true when cut.
fn escape(key: &[u8], max: usize) -> (String, bool) {
    let mut out = String::new();
    for (shown, &b) in key.iter().enumerate() {
        if shown >= max {
            return (out, true);
        }
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    (out, false)
}

/// [`printable`] with the default cut.
pub fn show_key(key: &[u8]) -> String {
    printable(key, MAX_SHOWN_KEY_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        for (prefix, dir) in [
            ("/wgcable", "/wgcable/endpoints/"),
            ("/", "/endpoints/"),
            ("/a/b-c_d.e", "/a/b-c_d.e/endpoints/"),
        ] {
            assert_eq!(Layout::new(prefix).expect(prefix).range_start(), dir);
        }
        for prefix in [
            "",
            "wgcable",
            "/wgcable/",
            "/a//b",
            "/a/./b",
            "/a/..",
            "/with space",
            "/t\u{e9}st",
            "/tab\t",
        ] {
            let err = Layout::new(prefix).expect_err(prefix).to_string();
            assert!(err.starts_with("--etcd-prefix"), "{err}");
        }
        assert!(Layout::new(&format!("/{}", "a".repeat(MAX_PREFIX_LEN))).is_err());
    }

    #[test]
    fn range_end_is_the_prefix_end() {
        let l = Layout::new("/wgcable").expect("valid");
        assert_eq!(l.range_end(), b"/wgcable/endpoints0".to_vec());
        // Every key of the layout sorts inside [start, end).
        let key = l.key_of("zzz").expect("valid");
        assert!(key.as_bytes() >= l.range_start().as_bytes());
        assert!(key.as_bytes() < l.range_end().as_slice());
    }

    #[test]
    fn only_exact_layout_keys_bind_a_cluster() {
        let l = Layout::new("/wgcable").expect("valid");
        let max = "a".repeat(MAX_CLUSTER_ID_LEN);
        let too_long = "a".repeat(MAX_CLUSTER_ID_LEN + 1);
        let cases: &[(&[u8], Option<&str>)] = &[
            (b"/wgcable/endpoints/a", Some("a")),
            (b"/wgcable/endpoints/cluster-2", Some("cluster-2")),
            (b"/wgcable/endpoints/0", Some("0")),
            (max.as_bytes(), None), // no prefix
            (b"/wgcable/endpoints/", None),
            (b"/wgcable/endpoints/A", None),
            (b"/wgcable/endpoints/-a", None),
            (b"/wgcable/endpoints/a-", None),
            (b"/wgcable/endpoints/a_b", None),
            (b"/wgcable/endpoints/a.b", None),
            (b"/wgcable/endpoints/a/b", None),
            (b"/wgcable/endpoints/a\n", None),
            (b"/wgcable/endpoints/\xff", None),
            (b"/wgcable/endpointsX/a", None),
            (b"/other/endpoints/a", None),
        ];
        for (key, want) in cases {
            assert_eq!(
                l.cluster_of(key).as_deref(),
                *want,
                "{}",
                String::from_utf8_lossy(key)
            );
        }
        let long = format!("/wgcable/endpoints/{max}");
        assert_eq!(l.cluster_of(long.as_bytes()).as_deref(), Some(max.as_str()));
        let long = format!("/wgcable/endpoints/{too_long}");
        assert_eq!(l.cluster_of(long.as_bytes()), None);
    }

    #[test]
    fn key_of_refuses_ids_without_a_key() {
        let l = Layout::new("/p").expect("valid");
        assert_eq!(l.key_of("b").expect("valid"), "/p/endpoints/b");
        for id in ["", "B", "a/b", "../x", "a b"] {
            assert!(l.key_of(id).is_err(), "{id}");
        }
    }

    #[test]
    fn keys_are_printed_safely_and_bounded() {
        assert_eq!(show_key(b"/w/endpoints/A"), r#""/w/endpoints/A""#);
        assert_eq!(
            show_key(b"a\nb\x1b[31m\xff\"\\"),
            r#""a\x0ab\x1b[31m\xff\"\\""#
        );
        let huge = vec![b'x'; 10_000];
        let shown = show_key(&huge);
        assert!(shown.len() < 200, "{}", shown.len());
        assert!(shown.ends_with("...\" (10000 bytes)"), "{shown}");
        assert_eq!(refused_key(b"/w/endpoints/A\n"), "/w/endpoints/A\\x0a");
        assert!(refused_key(&huge).ends_with("... (10000 bytes)"));
    }
}
