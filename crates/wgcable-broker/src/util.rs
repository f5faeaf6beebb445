//! Small helpers shared by the admission layer and the sources.

/// Whether `id` is a valid cluster id: a DNS-1123 label (lowercase letters, digits and `-`,
/// starting and ending with a letter or digit, at most 63 characters), as Submariner requires.
///
/// By hand (six lines) rather than through `EndpointSpec::validate`, which needs a whole spec:
/// sources use it on file names and keys before anything is parsed.
pub fn is_cluster_id(id: &str) -> bool {
    let b = id.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= wgcable_api::MAX_CLUSTER_ID_LEN
        && b.iter().all(|c| alnum(c) || *c == b'-')
        && b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cluster_ids() {
        for good in ["a", "cluster-1", "0-a", &"a".repeat(63)] {
            assert!(super::is_cluster_id(good), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "a b",
            &"a".repeat(64),
            "é",
        ] {
            assert!(!super::is_cluster_id(bad), "{bad}");
        }
    }
}
