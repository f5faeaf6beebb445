//! The admission registry: what this gateway accepted, remembered in its state directory so a
//! restart reproduces every decision.
//!
//! One entry per cluster that holds something: the object that holds it, its public key,
//! subnets and gateway addresses (the claims no newcomer may take), and its seniority (the
//! order clusters were first accepted in). Not its whole Endpoint: addresses and ports change
//! without a registry write, and a restarted gateway reads them from the source again.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use wgcable_api::PublicKey;

use crate::fsutil::{self, ReadOutcome};
use crate::{ObjectKey, SourceError};

/// The registry's file name in the state directory.
pub const REGISTRY_FILE: &str = "admission-registry.json";

const VERSION: u32 = 1;

/// The registry file's content.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    pub version: u32,
    /// The cluster the state directory belongs to; a registry of another cluster is ignored.
    pub local_cluster: String,
    /// The seniority the next newly accepted cluster gets.
    pub next_seniority: u64,
    /// Sorted by seniority.
    pub clusters: Vec<RegisteredCluster>,
}

/// One accepted cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredCluster {
    pub cluster_id: String,
    /// The object (file name, etcd key, `namespace/name`) that holds the cluster.
    pub object_key: String,
    /// Smaller is older: the older cluster keeps what both claim.
    pub seniority: u64,
    /// Base64, as WireGuard prints it.
    pub public_key: String,
    pub subnets: Vec<IpNet>,
    #[serde(default)]
    pub gateway_ips: Vec<IpAddr>,
    /// When the cluster was first accepted (seconds since the Unix epoch).
    pub admitted_at: u64,
}

/// A registry entry after its fields were checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub cluster_id: String,
    pub key: ObjectKey,
    pub seniority: u64,
    pub public_key: PublicKey,
    pub subnets: Vec<IpNet>,
    pub gateway_ips: Vec<IpAddr>,
    pub admitted_at: u64,
}

impl Registry {
    pub fn empty(local_cluster: &str) -> Self {
        Registry {
            version: VERSION,
            local_cluster: local_cluster.to_owned(),
            next_seniority: 1,
            clusters: Vec::new(),
        }
    }

    /// Checks every entry; the first problem found makes the whole file corrupt (it is only
    /// ever written by this gateway, so a bad entry means the file was damaged or edited).
    /// Messages name the entry by position, never its content.
    pub(crate) fn entries(&self, max: usize) -> Result<Vec<Entry>, String> {
        if self.version != VERSION {
            return Err(format!("unknown version (this gateway writes {VERSION})"));
        }
        if self.clusters.len() > max {
            return Err(format!(
                "{} entries, more than max_objects ({max})",
                self.clusters.len()
            ));
        }
        let mut ids = BTreeSet::new();
        let mut keys = BTreeSet::new();
        let mut seniorities = BTreeSet::new();
        let mut out = Vec::with_capacity(self.clusters.len());
        for (i, c) in self.clusters.iter().enumerate() {
            let at = |what: &str| format!("entry {i}: {what}");
            if !crate::util::is_cluster_id(&c.cluster_id) || c.cluster_id == self.local_cluster {
                return Err(at("cluster id is not a remote cluster id"));
            }
            if c.object_key.is_empty()
                || c.object_key.len() > 512
                || c.object_key.chars().any(char::is_control)
            {
                return Err(at("object key is empty, too long or not printable"));
            }
            let public_key = PublicKey::from_base64(&c.public_key)
                .map_err(|_| at("public key is not a WireGuard public key"))?;
            if c.seniority == 0 || c.seniority >= self.next_seniority {
                return Err(at("seniority is out of range"));
            }
            if !ids.insert(c.cluster_id.clone())
                || !keys.insert(c.object_key.clone())
                || !seniorities.insert(c.seniority)
            {
                return Err(at(
                    "cluster id, object key or seniority repeats an earlier entry",
                ));
            }
            out.push(Entry {
                cluster_id: c.cluster_id.clone(),
                key: ObjectKey(c.object_key.clone()),
                seniority: c.seniority,
                public_key,
                subnets: c.subnets.iter().map(IpNet::trunc).collect(),
                gateway_ips: c.gateway_ips.clone(),
                admitted_at: c.admitted_at,
            });
        }
        out.sort_by_key(|e| e.seniority);
        Ok(out)
    }

    /// Removes `cluster_id`; true when it was there. Its subnets and key are free for the
    /// next object that claims them, which becomes the newest cluster.
    pub fn forget(&mut self, cluster_id: &str) -> bool {
        let before = self.clusters.len();
        self.clusters.retain(|c| c.cluster_id != cluster_id);
        self.clusters.len() != before
    }
}

/// What [`load`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum LoadNote {
    /// No registry yet: a first start.
    Fresh,
    Loaded,
    /// The file could not be used; it was moved aside to `moved_to` (when it could be) and
    /// the gateway starts as on a first start.
    Corrupt {
        problem: String,
        moved_to: Option<PathBuf>,
    },
    /// The registry belongs to another cluster (the state directory was reused); ignored and
    /// replaced at the next write.
    OtherCluster,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(REGISTRY_FILE)
}

/// Reads the registry of `local_cluster` from `state_dir`: bounded, never following a link; a
/// missing file is a first start and a damaged one is moved aside (`.corrupt`), never fatal.
/// Blocking: call it on the blocking pool.
pub fn load(
    state_dir: &Path,
    local_cluster: &str,
    max_bytes: usize,
    max_entries: usize,
) -> Result<(Registry, LoadNote), SourceError> {
    let file = path(state_dir);
    let bytes = match fsutil::read_regular(&file, max_bytes) {
        Ok(ReadOutcome::Read { bytes, .. }) => bytes,
        Ok(ReadOutcome::Refused(_)) => {
            return Ok(corrupt(&file, local_cluster, "not a regular file".into()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((Registry::empty(local_cluster), LoadNote::Fresh))
        }
        Err(e) => {
            return Err(SourceError::Failed {
                action: format!(
                    "reading the admission registry {}: check the state directory's permissions",
                    file.display()
                ),
                source: Some(Box::new(e)),
            })
        }
    };
    if bytes.len() > max_bytes {
        return Ok(corrupt(
            &file,
            local_cluster,
            format!("larger than {max_bytes} bytes"),
        ));
    }
    let registry: Registry = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        // The position only: our own file, but the message could still quote whatever
        // damaged it.
        Err(e) => {
            return Ok(corrupt(
                &file,
                local_cluster,
                format!("not valid JSON at line {}, column {}", e.line(), e.column()),
            ))
        }
    };
    if registry.local_cluster != local_cluster {
        return Ok((Registry::empty(local_cluster), LoadNote::OtherCluster));
    }
    if let Err(problem) = registry.entries(max_entries) {
        return Ok(corrupt(&file, local_cluster, problem));
    }
    Ok((registry, LoadNote::Loaded))
}

fn corrupt(file: &Path, local_cluster: &str, problem: String) -> (Registry, LoadNote) {
    let aside = file.with_extension("json.corrupt");
    let moved_to = std::fs::rename(file, &aside).ok().map(|()| aside);
    (
        Registry::empty(local_cluster),
        LoadNote::Corrupt { problem, moved_to },
    )
}

/// Writes the registry atomically (mode 0644: it holds public keys and subnets only).
/// Blocking: call it on the blocking pool.
pub fn save(state_dir: &Path, registry: &Registry) -> Result<(), SourceError> {
    let file = path(state_dir);
    let failed = |e: std::io::Error| SourceError::Failed {
        action: format!(
            "writing the admission registry {}: check that the state directory is writable and \
             not full",
            file.display()
        ),
        source: Some(Box::new(e)),
    };
    let bytes = serde_json::to_vec(registry).map_err(|e| failed(std::io::Error::other(e)))?;
    fsutil::write_atomic(&file, &bytes, 0o644).map_err(failed)
}

/// `wgcable admission forget CLUSTER` while no gateway runs on `state_dir`: removes the
/// cluster from the registry file. True when it was there. (A running gateway would write its
/// own registry over the file: ask it instead, see [`super::Admission::forget`].)
pub fn forget_offline(
    state_dir: &Path,
    local_cluster: &str,
    cluster_id: &str,
    max_bytes: usize,
    max_entries: usize,
) -> Result<bool, SourceError> {
    let (mut registry, note) = load(state_dir, local_cluster, max_bytes, max_entries)?;
    if note != LoadNote::Loaded || !registry.forget(cluster_id) {
        return Ok(false);
    }
    save(state_dir, &registry)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "b98wRzVxljvjDMk9tpg4DKZtbSE/V/iyLBPXQhjn6Bo=";

    fn registry() -> Registry {
        Registry {
            version: VERSION,
            local_cluster: "b".into(),
            next_seniority: 3,
            clusters: vec![RegisteredCluster {
                cluster_id: "a".into(),
                object_key: "a.yaml".into(),
                seniority: 1,
                public_key: KEY.into(),
                subnets: vec!["10.1.0.0/16".parse().expect("cidr")],
                gateway_ips: vec!["192.168.77.1".parse().expect("ip")],
                admitted_at: 1,
            }],
        }
    }

    #[test]
    fn round_trip_forget_and_fresh_start() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (r, note) = load(dir.path(), "b", 1 << 20, 100).expect("load");
        assert_eq!((r, note), (Registry::empty("b"), LoadNote::Fresh));
        save(dir.path(), &registry()).expect("save");
        let (r, note) = load(dir.path(), "b", 1 << 20, 100).expect("load");
        assert_eq!((r, note), (registry(), LoadNote::Loaded));
        let (_, note) = load(dir.path(), "c", 1 << 20, 100).expect("load");
        assert_eq!(note, LoadNote::OtherCluster);
        assert!(forget_offline(dir.path(), "b", "a", 1 << 20, 100).expect("forget"));
        assert!(!forget_offline(dir.path(), "b", "a", 1 << 20, 100).expect("forget"));
        let (r, _) = load(dir.path(), "b", 1 << 20, 100).expect("load");
        assert!(r.clusters.is_empty());
    }

    #[test]
    fn damaged_files_are_moved_aside() {
        let damaged: Vec<(&str, Vec<u8>)> = vec![
            ("garbage", b"{not json".to_vec()),
            ("huge", vec![b' '; 2000]),
            ("bad key", {
                let mut r = registry();
                r.clusters[0].public_key = "secret-looking".into();
                serde_json::to_vec(&r).expect("json")
            }),
            ("seniority", {
                let mut r = registry();
                r.clusters[0].seniority = 7;
                serde_json::to_vec(&r).expect("json")
            }),
            ("local cluster", {
                let mut r = registry();
                r.clusters[0].cluster_id = "b".into();
                serde_json::to_vec(&r).expect("json")
            }),
        ];
        for (what, bytes) in damaged {
            let dir = tempfile::tempdir().expect("temp dir");
            std::fs::write(path(dir.path()), &bytes).expect("write");
            let (r, note) = load(dir.path(), "b", 1000, 100).expect("load");
            assert_eq!(r, Registry::empty("b"), "{what}");
            match note {
                LoadNote::Corrupt { problem, moved_to } => {
                    assert!(!problem.contains("secret-looking"), "{what}: {problem}");
                    let moved_to = moved_to.expect("moved aside");
                    assert_eq!(std::fs::read(moved_to).expect("kept"), bytes, "{what}");
                }
                other => panic!("{what}: {other:?}"),
            }
        }
        // A link is never followed.
        let dir = tempfile::tempdir().expect("temp dir");
        std::os::unix::fs::symlink("/dev/zero", path(dir.path())).expect("symlink");
        let (_, note) = load(dir.path(), "b", 1000, 100).expect("load");
        assert!(matches!(note, LoadNote::Corrupt { .. }), "{note:?}");
    }
}
