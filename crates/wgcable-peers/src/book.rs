//! [`PeerBook`]: the peers of every remote cluster, kept up to date one change at a time.
//!
//! The rules are [`desired_peers_of`](crate::desired_peers_of)'s: candidates in priority order
//! (seniority, then cluster id), each refused if it conflicts with an earlier accepted one
//! (same key, overlapping subnet) or on its own (own cluster, own key, local subnets...). A
//! change of one cluster can only change the decisions of the clusters it is connected to
//! through conflicts, so the book follows conflict edges from the changed cluster (its old and
//! its new claims) and decides again exactly those, in priority order. Every other cluster
//! keeps its decision, which is what planning everything again would give it too: it
//! conflicts with none of the re-decided ones. One changed cluster among thousands costs a
//! few index lookups, not a plan of every cluster; the tests check the result against the
//! all-at-once planner after every step of long random sequences.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use ipnet::IpNet;
use wgcable_keys::PublicKey;

use crate::plan::{decide, DesiredPeer, Held, LocalPeerConfig, PeerCandidate, PeerError};
use crate::prefix::PrefixIndex;

/// One cluster as the book holds it.
#[derive(Debug, Clone)]
struct Entry {
    seniority: u64,
    candidate: PeerCandidate,
    decision: Result<DesiredPeer, PeerError>,
    /// Why the device refused this candidate's peer: it stays refused until it changes.
    blocked: Option<String>,
}

impl Entry {
    fn order(&self) -> (u64, &str) {
        (self.seniority, &self.candidate.cluster_id)
    }
}

/// What accepted clusters hold.
#[derive(Debug, Default)]
struct HeldIndex {
    keys: HashMap<PublicKey, String>,
    subnets: PrefixIndex<String>,
    /// Accepted subnets per family (IPv4, IPv6).
    families: [usize; 2],
}

impl Held for HeldIndex {
    fn key_holder(&self, key: &PublicKey) -> Option<&str> {
        self.keys.get(key).map(String::as_str)
    }
    fn overlapping(&self, net: &IpNet) -> Option<(IpNet, &str)> {
        self.subnets
            .any_overlapping(net)
            .map(|(n, c)| (n, c.as_str()))
    }
}

impl HeldIndex {
    fn take(&mut self, peer: &DesiredPeer) {
        self.keys
            .insert(peer.config.public_key, peer.cluster_id.clone());
        for net in &peer.config.allowed_ips {
            if self.subnets.insert(net, peer.cluster_id.clone()).is_none() {
                self.families[usize::from(net.addr().is_ipv6())] += 1;
            }
        }
    }

    fn release(&mut self, peer: &DesiredPeer) {
        if self.keys.get(&peer.config.public_key) == Some(&peer.cluster_id) {
            self.keys.remove(&peer.config.public_key);
        }
        for net in &peer.config.allowed_ips {
            if self.subnets.remove(net).is_some() {
                self.families[usize::from(net.addr().is_ipv6())] -= 1;
            }
        }
    }
}

/// How one cluster's peer changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerDelta {
    pub cluster_id: String,
    /// Its peer before the change (`None`: it had none).
    pub before: Option<DesiredPeer>,
    /// Its peer after the change (`None`: it has none now).
    pub after: Option<DesiredPeer>,
    /// Why it has no peer now, if it is still a candidate and has none.
    pub refused: Option<PeerError>,
}

/// The peers of a set of remote clusters (see the module docs).
#[derive(Debug)]
pub struct PeerBook {
    local: LocalPeerConfig,
    local_subnets: Vec<IpNet>,
    entries: BTreeMap<String, Entry>,
    /// Every candidate's subnets, accepted or not, with the clusters claiming each.
    claims: PrefixIndex<BTreeSet<String>>,
    /// Every candidate's key, with the clusters publishing it.
    keys: HashMap<PublicKey, BTreeSet<String>>,
    held: HeldIndex,
}

/// Decisions before a change, by cluster (`None`: it was not a candidate).
type Decisions = BTreeMap<String, Option<Result<DesiredPeer, PeerError>>>;

/// The subnets and key a candidate claims (whether or not it is accepted).
fn claims_of(candidate: &PeerCandidate) -> (Vec<IpNet>, Option<PublicKey>) {
    let nets: BTreeSet<IpNet> = candidate.spec.subnets.iter().map(IpNet::trunc).collect();
    (nets.into_iter().collect(), candidate.spec.public_key)
}

impl PeerBook {
    pub fn new(local: LocalPeerConfig) -> Self {
        let local_subnets = local.local_subnets.iter().map(IpNet::trunc).collect();
        PeerBook {
            local,
            local_subnets,
            entries: BTreeMap::new(),
            claims: PrefixIndex::default(),
            keys: HashMap::new(),
            held: HeldIndex::default(),
        }
    }

    /// The local configuration every peer is planned with.
    pub fn local(&self) -> &LocalPeerConfig {
        &self.local
    }

    /// How many clusters the book holds (accepted or refused).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The candidate for `cluster`, with its seniority.
    pub fn candidate(&self, cluster: &str) -> Option<(u64, &PeerCandidate)> {
        self.entries
            .get(cluster)
            .map(|e| (e.seniority, &e.candidate))
    }

    /// The accepted peer of `cluster`.
    pub fn peer(&self, cluster: &str) -> Option<&DesiredPeer> {
        self.entries.get(cluster)?.decision.as_ref().ok()
    }

    /// Why `cluster` has no peer, if it is a candidate without one.
    pub fn refusal(&self, cluster: &str) -> Option<&PeerError> {
        self.entries.get(cluster)?.decision.as_ref().err()
    }

    /// Every accepted peer, in priority order.
    pub fn peers(&self) -> Vec<&DesiredPeer> {
        let mut entries: Vec<&Entry> = self
            .entries
            .values()
            .filter(|e| e.decision.is_ok())
            .collect();
        entries.sort_by(|a, b| a.order().cmp(&b.order()));
        entries
            .into_iter()
            .filter_map(|e| e.decision.as_ref().ok())
            .collect()
    }

    /// Every refused cluster and why.
    pub fn refused(&self) -> impl Iterator<Item = (&str, &PeerError)> {
        self.entries
            .iter()
            .filter_map(|(c, e)| e.decision.as_ref().err().map(|err| (c.as_str(), err)))
    }

    /// Every candidate, in priority order.
    pub fn candidates(&self) -> Vec<(u64, &PeerCandidate)> {
        let mut all: Vec<&Entry> = self.entries.values().collect();
        all.sort_by(|a, b| a.order().cmp(&b.order()));
        all.into_iter()
            .map(|e| (e.seniority, &e.candidate))
            .collect()
    }

    /// Whether accepted peers route any IPv4 / IPv6 subnet.
    pub fn families(&self) -> (bool, bool) {
        (self.held.families[0] > 0, self.held.families[1] > 0)
    }

    /// Replaces every candidate at once (a full snapshot) and decides them all again.
    pub fn replace_all(
        &mut self,
        candidates: impl IntoIterator<Item = (u64, PeerCandidate)>,
    ) -> Vec<PeerDelta> {
        let before: Decisions = self
            .entries
            .iter()
            .map(|(c, e)| (c.clone(), Some(e.decision.clone())))
            .collect();
        *self = PeerBook::new(self.local.clone());
        for (seniority, candidate) in candidates {
            self.index(&candidate);
            let cluster = candidate.cluster_id.clone();
            if let Some(old) = self.entries.insert(
                cluster,
                Entry {
                    seniority,
                    candidate,
                    decision: Err(PeerError::OwnCluster),
                    blocked: None,
                },
            ) {
                // The same cluster twice: the later one replaces it, as an upsert would.
                self.unindex(&old.candidate);
            }
        }
        let all: BTreeSet<String> = self.entries.keys().cloned().collect();
        let mut deltas = self.redecide(&all, &before);
        for (cluster, was) in before {
            if let Some(Ok(peer)) = was.filter(|_| !self.entries.contains_key(&cluster)) {
                deltas.push(PeerDelta {
                    cluster_id: cluster,
                    before: Some(peer),
                    after: None,
                    refused: None,
                });
            }
        }
        deltas
    }

    /// Adds or replaces `candidate`. With `keep_last_good`, a cluster that had a peer and whose
    /// new candidate is refused keeps its previous candidate (and peer); the refusal is still
    /// reported, in the cluster's delta.
    pub fn upsert(
        &mut self,
        seniority: u64,
        candidate: PeerCandidate,
        keep_last_good: bool,
    ) -> Vec<PeerDelta> {
        let cluster = candidate.cluster_id.clone();
        let previous = self.entries.get(&cluster).cloned();
        let deltas = self.replace(seniority, candidate);
        let refused_now = deltas
            .iter()
            .find(|d| d.cluster_id == cluster)
            .and_then(|d| d.refused.clone());
        match (keep_last_good, previous, refused_now) {
            (true, Some(prev), Some(refusal)) if prev.decision.is_ok() => {
                let undo = self.replace(prev.seniority, prev.candidate);
                let mut merged = compose(deltas, undo);
                if let Some(d) = merged.iter_mut().find(|d| d.cluster_id == cluster) {
                    d.refused = Some(refusal);
                } else {
                    // Back where it was: say so, with the refusal of the new candidate.
                    let peer = self.peer(&cluster).cloned();
                    merged.push(PeerDelta {
                        cluster_id: cluster,
                        before: peer.clone(),
                        after: peer,
                        refused: Some(refusal),
                    });
                }
                merged
            }
            _ => deltas,
        }
    }

    /// Removes `cluster`; clusters it kept waiting are decided again.
    pub fn remove(&mut self, cluster: &str) -> Vec<PeerDelta> {
        let Some(entry) = self.entries.get(cluster) else {
            return Vec::new();
        };
        let affected = self.closure(cluster, &[&entry.candidate]);
        let before = self.decisions(&affected);
        let entry = self.entries.remove(cluster).expect("looked up above");
        self.unindex(&entry.candidate);
        if let Ok(peer) = &entry.decision {
            self.held.release(peer);
        }
        let mut deltas = self.redecide(&affected, &before);
        if let Ok(peer) = entry.decision {
            deltas.push(PeerDelta {
                cluster_id: cluster.to_owned(),
                before: Some(peer),
                after: None,
                refused: None,
            });
        }
        deltas
    }

    /// The device refused `cluster`'s peer: refuse it (and let others have what it held)
    /// until its candidate changes.
    pub fn block(&mut self, cluster: &str, reason: String) -> Vec<PeerDelta> {
        let Some(entry) = self.entries.get_mut(cluster) else {
            return Vec::new();
        };
        entry.blocked = Some(reason);
        let candidate = entry.candidate.clone();
        let affected = self.closure(cluster, &[&candidate]);
        let before = self.decisions(&affected);
        self.redecide(&affected, &before)
    }

    fn replace(&mut self, seniority: u64, candidate: PeerCandidate) -> Vec<PeerDelta> {
        let cluster = candidate.cluster_id.clone();
        let old = self.entries.get(&cluster).map(|e| e.candidate.clone());
        let mut seeds: Vec<&PeerCandidate> = vec![&candidate];
        if let Some(old) = &old {
            seeds.push(old);
        }
        let affected = self.closure(&cluster, &seeds);
        let before = self.decisions(&affected);
        if let Some(old) = self.entries.remove(&cluster) {
            if let Ok(peer) = &old.decision {
                self.held.release(peer);
            }
            self.unindex(&old.candidate);
        }
        self.index(&candidate);
        self.entries.insert(
            cluster,
            Entry {
                seniority,
                candidate,
                decision: Err(PeerError::OwnCluster),
                blocked: None,
            },
        );
        self.redecide(&affected, &before)
    }

    /// The current decisions of `clusters` (`None`: not a candidate).
    fn decisions(&self, clusters: &BTreeSet<String>) -> Decisions {
        clusters
            .iter()
            .map(|c| (c.clone(), self.entries.get(c).map(|e| e.decision.clone())))
            .collect()
    }

    fn index(&mut self, candidate: &PeerCandidate) {
        let (nets, key) = claims_of(candidate);
        for net in nets {
            match self.claims.get_mut(&net) {
                Some(set) => {
                    set.insert(candidate.cluster_id.clone());
                }
                None => {
                    self.claims
                        .insert(&net, BTreeSet::from([candidate.cluster_id.clone()]));
                }
            }
        }
        if let Some(key) = key {
            self.keys
                .entry(key)
                .or_default()
                .insert(candidate.cluster_id.clone());
        }
    }

    fn unindex(&mut self, candidate: &PeerCandidate) {
        let (nets, key) = claims_of(candidate);
        for net in nets {
            let empty = self.claims.get_mut(&net).is_some_and(|set| {
                set.remove(&candidate.cluster_id);
                set.is_empty()
            });
            if empty {
                self.claims.remove(&net);
            }
        }
        if let Some(key) = key {
            if let Some(set) = self.keys.get_mut(&key) {
                set.remove(&candidate.cluster_id);
                if set.is_empty() {
                    self.keys.remove(&key);
                }
            }
        }
    }

    /// `start` and every cluster connected to it by conflict edges (overlapping subnets, a
    /// shared key), following `seeds`' claims for `start` and the indexed candidates' claims
    /// for the others.
    fn closure(&self, start: &str, seeds: &[&PeerCandidate]) -> BTreeSet<String> {
        let mut seen: BTreeSet<String> = BTreeSet::from([start.to_owned()]);
        let mut queue: Vec<PeerCandidate> = seeds.iter().map(|c| (*c).clone()).collect();
        let mut visited: HashSet<String> = HashSet::new();
        while let Some(candidate) = queue.pop() {
            let (nets, key) = claims_of(&candidate);
            let mut reached: Vec<&String> = Vec::new();
            for net in &nets {
                for (_, clusters) in self.claims.overlapping(net) {
                    reached.extend(clusters.iter());
                }
            }
            if let Some(key) = key {
                reached.extend(self.keys.get(&key).into_iter().flatten());
            }
            for c in reached {
                if seen.insert(c.clone()) && visited.insert(c.clone()) {
                    if let Some(e) = self.entries.get(c) {
                        queue.push(e.candidate.clone());
                    }
                }
            }
        }
        seen
    }

    /// Decides `affected` again, in priority order, against what everyone else holds, and
    /// reports the clusters whose peer or refusal changed from `before`.
    fn redecide(&mut self, affected: &BTreeSet<String>, before: &Decisions) -> Vec<PeerDelta> {
        for cluster in affected {
            if let Some(Ok(peer)) = self.entries.get(cluster).map(|e| e.decision.clone()) {
                self.held.release(&peer);
            }
        }
        let mut order: Vec<(u64, String)> = affected
            .iter()
            .filter_map(|c| self.entries.get(c).map(|e| (e.seniority, c.clone())))
            .collect();
        order.sort();
        let mut deltas = Vec::new();
        for (_, cluster) in order {
            let entry = self.entries.get(&cluster).expect("ordered from entries");
            let decision = match &entry.blocked {
                Some(reason) => Err(PeerError::DeviceRefused(reason.clone())),
                None => decide(
                    &self.local,
                    &self.local_subnets,
                    &entry.candidate,
                    &self.held,
                ),
            };
            if let Ok(peer) = &decision {
                self.held.take(peer);
            }
            let was = before.get(&cluster).and_then(Option::as_ref);
            if was != Some(&decision) {
                deltas.push(PeerDelta {
                    cluster_id: cluster.clone(),
                    before: was.and_then(|w| w.as_ref().ok()).cloned(),
                    after: decision.as_ref().ok().cloned(),
                    refused: decision.as_ref().err().cloned(),
                });
            }
            self.entries
                .get_mut(&cluster)
                .expect("ordered from entries")
                .decision = decision;
        }
        deltas
    }
}

/// Two successive sets of deltas as one: `before` from the first, `after` from the last.
fn compose(first: Vec<PeerDelta>, second: Vec<PeerDelta>) -> Vec<PeerDelta> {
    let mut by_cluster: BTreeMap<String, PeerDelta> = BTreeMap::new();
    for d in first {
        by_cluster.insert(d.cluster_id.clone(), d);
    }
    for d in second {
        match by_cluster.get_mut(&d.cluster_id) {
            Some(existing) => {
                existing.after = d.after;
                existing.refused = d.refused;
            }
            None => {
                by_cluster.insert(d.cluster_id.clone(), d);
            }
        }
    }
    by_cluster
        .into_values()
        .filter(|d| d.before != d.after || d.refused.is_some())
        .collect()
}

/// Builds a book's candidate from parts (tests and benches).
#[doc(hidden)]
pub fn candidate_for_tests(
    cluster: &str,
    spec: wgcable_api::ValidatedSpec,
    use_ip: std::net::IpAddr,
) -> PeerCandidate {
    PeerCandidate {
        cluster_id: cluster.to_owned(),
        endpoint_name: format!("{cluster}-endpoint"),
        spec: Arc::new(spec),
        use_ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::desired_peers_of;
    use std::net::IpAddr;
    use wgcable_api::ValidatedSpec;
    use wgcable_keys::PresharedKey;

    fn key(n: u8) -> PublicKey {
        PublicKey::from_bytes([n; 32])
    }

    fn local() -> LocalPeerConfig {
        LocalPeerConfig {
            cluster_id: "local".to_owned(),
            public_key: key(200),
            listen_port: 4500,
            preshared_key: PresharedKey::from_passphrase("test psk"),
            local_subnets: vec!["10.0.0.0/16".parse().expect("net")],
            keepalive: 10,
        }
    }

    fn candidate(cluster: &str, key_n: u8, subnets: &[&str]) -> PeerCandidate {
        let ip: IpAddr = format!("198.51.100.{key_n}").parse().expect("ip");
        candidate_for_tests(
            cluster,
            ValidatedSpec {
                cluster_id: cluster.to_owned(),
                subnets: subnets.iter().map(|s| s.parse().expect("net")).collect(),
                private_ips: vec![ip],
                public_ips: Vec::new(),
                health_check_ips: Vec::new(),
                public_key: Some(key(key_n)),
                udp_port: None,
                nat_enabled: false,
                backend: "wireguard".to_owned(),
                hostname: format!("gw-{cluster}"),
            },
            ip,
        )
    }

    /// The book's peers and refusals against the all-at-once planner's, over its candidates.
    fn assert_matches_full_plan(book: &PeerBook, step: &str) {
        // A blocked candidate holds nothing, exactly as if it were not there.
        let blocked = |c: &str| matches!(book.refusal(c), Some(PeerError::DeviceRefused(_)));
        let candidates: Vec<_> = book
            .candidates()
            .into_iter()
            .filter(|(_, c)| !blocked(&c.cluster_id))
            .map(|(_, c)| Ok(c.clone()))
            .collect();
        let full = desired_peers_of(book.local(), candidates);
        let peers: Vec<DesiredPeer> = book.peers().into_iter().cloned().collect();
        let names = |p: &[DesiredPeer]| p.iter().map(|p| p.cluster_id.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(&peers),
            names(&full.peers),
            "{step}: accepted clusters differ"
        );
        assert!(peers == full.peers, "{step}: peers differ");
        let mut refused: Vec<(String, PeerError)> = book
            .refused()
            .filter(|(c, _)| !blocked(c))
            .map(|(c, e)| (c.to_owned(), e.clone()))
            .collect();
        let mut full_refused = full.rejected.clone();
        refused.sort_by(|a, b| a.0.cmp(&b.0));
        full_refused.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(refused, full_refused, "{step}: refusals differ");
        let v6 = peers
            .iter()
            .any(|p| p.config.allowed_ips.iter().any(|n| n.addr().is_ipv6()));
        let v4 = peers
            .iter()
            .any(|p| p.config.allowed_ips.iter().any(|n| n.addr().is_ipv4()));
        assert_eq!(book.families(), (v4, v6), "{step}: families");
    }

    #[test]
    fn one_change_reports_only_the_clusters_it_touches() {
        let mut book = PeerBook::new(local());
        let all: Vec<(u64, PeerCandidate)> = (1..=100u8)
            .map(|i| {
                (
                    u64::from(i),
                    candidate(&format!("c{i}"), i, &[&format!("10.{i}.0.0/16")]),
                )
            })
            .collect();
        let deltas = book.replace_all(all);
        assert_eq!(deltas.len(), 100);
        assert_matches_full_plan(&book, "snapshot");

        // A moved endpoint: only that cluster.
        let mut moved = candidate("c50", 50, &["10.50.0.0/16"]);
        moved.use_ip = "203.0.113.50".parse().expect("ip");
        let deltas = book.upsert(50, moved, true);
        assert_eq!(deltas.len(), 1, "{deltas:?}");
        assert_eq!(deltas[0].cluster_id, "c50");
        assert_matches_full_plan(&book, "moved");

        // A newcomer claiming c7's subnet: refused, c7 untouched, nothing else reported.
        let deltas = book.upsert(1000, candidate("squatter", 150, &["10.7.1.0/24"]), true);
        assert_eq!(deltas.len(), 1, "{deltas:?}");
        assert!(
            matches!(&deltas[0].refused, Some(PeerError::OverlapsRemote { other_cluster, .. }) if other_cluster == "c7"),
            "{deltas:?}"
        );
        assert_matches_full_plan(&book, "squatter");

        // c7 leaves: the squatter gets the subnet at once (no restart needed).
        let deltas = book.remove("c7");
        let mut names: Vec<&str> = deltas.iter().map(|d| d.cluster_id.as_str()).collect();
        names.sort();
        assert_eq!(names, ["c7", "squatter"]);
        assert!(book.peer("squatter").is_some());
        assert_matches_full_plan(&book, "c7 left");
    }

    #[test]
    fn a_refused_change_keeps_the_last_good_peer() {
        let mut book = PeerBook::new(local());
        book.replace_all([
            (1, candidate("a", 1, &["10.1.0.0/16"])),
            (2, candidate("b", 2, &["10.2.0.0/16"])),
        ]);
        let good = book.peer("b").cloned().expect("b accepted");
        // b now claims a's subnet: refused, b keeps its previous peer.
        let deltas = book.upsert(2, candidate("b", 2, &["10.1.5.0/24"]), true);
        assert_eq!(book.peer("b"), Some(&good));
        assert!(deltas
            .iter()
            .any(|d| d.cluster_id == "b" && d.refused.is_some()));
        assert_matches_full_plan(&book, "kept last good");
        // Without keep_last_good it loses its peer.
        book.upsert(2, candidate("b", 2, &["10.1.5.0/24"]), false);
        assert!(book.peer("b").is_none());
        assert_matches_full_plan(&book, "dropped");
    }

    #[test]
    fn a_blocked_cluster_frees_what_it_held_until_it_changes() {
        let mut book = PeerBook::new(local());
        book.replace_all([
            (1, candidate("a", 1, &["10.1.0.0/16"])),
            (2, candidate("b", 2, &["10.1.0.0/24"])),
        ]);
        assert!(book.peer("b").is_none());
        let deltas = book.block("a", "invalid argument".into());
        assert!(book.peer("a").is_none());
        assert!(book.peer("b").is_some(), "b waited for a's subnet");
        assert_eq!(deltas.len(), 2);
        assert!(matches!(
            book.refusal("a"),
            Some(PeerError::DeviceRefused(r)) if r == "invalid argument"
        ));
        // A new candidate for a is decided afresh; a is senior, so it takes its subnet back.
        book.upsert(1, candidate("a", 1, &["10.1.0.0/16"]), false);
        assert!(book.peer("a").is_some());
        assert!(book.peer("b").is_none());
    }

    /// A small deterministic generator, so the test needs no extra crate and every failure
    /// reproduces.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    #[test]
    fn random_sequences_match_the_full_planner_at_every_step() {
        // Few clusters, few keys and a small address space, so conflicts are common: shared
        // keys, nested and overlapping subnets, the local subnet, IPv6.
        let subnets = [
            "10.1.0.0/16",
            "10.1.0.0/24",
            "10.1.1.0/24",
            "10.2.0.0/16",
            "10.0.5.0/24",
            "10.0.0.0/8",
            "fd01::/48",
            "fd01:0:0:1::/64",
            "fd02::/48",
            "10.3.0.0/16",
        ];
        // Steps that had both accepted and refused clusters: the test must exercise conflicts.
        let mut contested = 0;
        for seed in 0..40u64 {
            let mut rng = Lcg(seed);
            let mut book = PeerBook::new(local());
            for step in 0..60 {
                let cluster = format!("c{}", rng.next(8));
                match rng.next(10) {
                    0 => {
                        book.remove(&cluster);
                    }
                    1 => {
                        book.block(&cluster, "refused".into());
                    }
                    2 => {
                        let n = rng.next(6) as usize;
                        let all: Vec<(u64, PeerCandidate)> = (0..n)
                            .map(|i| {
                                let nets = [subnets[rng.next(10) as usize]];
                                (
                                    rng.next(5),
                                    candidate(&format!("c{i}"), rng.next(5) as u8 + 1, &nets),
                                )
                            })
                            .collect();
                        book.replace_all(all);
                    }
                    _ => {
                        let count = rng.next(3) as usize + 1;
                        let nets: Vec<&str> =
                            (0..count).map(|_| subnets[rng.next(10) as usize]).collect();
                        let c = candidate(&cluster, rng.next(5) as u8 + 1, &nets);
                        let seniority = book
                            .candidate(&cluster)
                            .map(|(s, _)| s)
                            .unwrap_or_else(|| rng.next(5));
                        book.upsert(seniority, c, rng.next(2) == 0);
                    }
                }
                assert_matches_full_plan(&book, &format!("seed {seed} step {step}"));
                if !book.peers().is_empty() && book.refused().next().is_some() {
                    contested += 1;
                }
            }
        }
        assert!(
            contested > 500,
            "only {contested} of 2400 steps had conflicts"
        );
    }
}
