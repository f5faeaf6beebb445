//! The file source and admission together, with real files in temporary directories: the
//! attacks of issue 13 that need nothing but write access to the broker directory.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::stream::{BoxStream, StreamExt};
use wgcable_api::{Endpoint, EndpointSpec, PublicKey};
use wgcable_broker::admission::{
    AdmissionConfig, AdmissionRunner, AdmissionUpdate, DebounceConfig, LocalIdentity,
};
use wgcable_broker::debounce::{debounce, Batch};
use wgcable_broker::{EndpointSource, FileSource, FileSourceConfig, ObjectKey, SourceEvent};

/// Looks like a WireGuard private key: it must never appear in any event, message or log.
const SECRET_KEY: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";

fn pk(n: u8) -> PublicKey {
    PublicKey::from_bytes([n; 32])
}

fn endpoint(cluster: &str, key: u8, subnets: &[&str], ip: &str) -> Endpoint {
    let mut spec = EndpointSpec {
        cluster_id: cluster.into(),
        cable_name: format!("submariner-cable-{cluster}"),
        subnets: subnets.iter().map(|s| s.to_string()).collect(),
        private_ip: ip.into(),
        backend: "wireguard".into(),
        ..EndpointSpec::default()
    };
    spec.set_public_key(&pk(key));
    Endpoint::new(spec)
}

fn yaml(ep: &Endpoint) -> Vec<u8> {
    ep.to_yaml().expect("yaml").into_bytes()
}

/// Writes `name` atomically (a hidden temporary file renamed over it), without the fsyncs
/// of `write_atomic`: thousands of files are written in a second.
fn put(dir: &Path, name: &str, ep: &Endpoint) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, yaml(ep)).expect("write");
    std::fs::rename(&tmp, dir.join(name)).expect("rename");
}

fn local() -> LocalIdentity {
    LocalIdentity {
        cluster_id: "l".into(),
        public_key: pk(200),
        subnets: vec!["10.200.0.0/16".parse().expect("cidr")],
        underlay: vec!["192.168.77.200".parse().expect("ip")],
        own_key: Some(ObjectKey("l.yaml".into())),
        published: endpoint("l", 200, &["10.200.0.0/16"], "192.168.77.200"),
    }
}

fn source_config(dir: &Path) -> FileSourceConfig {
    FileSourceConfig {
        settle: Duration::from_millis(30),
        rescan_interval: Duration::from_secs(1),
        ..FileSourceConfig::new(dir, "l")
    }
}

fn admission_config() -> AdmissionConfig {
    AdmissionConfig {
        debounce: DebounceConfig {
            window: Duration::from_millis(30),
            max_wait: Duration::from_millis(300),
        },
        ..AdmissionConfig::default()
    }
}

/// A runtime whose shutdown never waits for a detached blocking task (a parse abandoned at
/// its deadline finishes on its own).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn run<F: std::future::Future<Output = Result<()>>>(test: F) -> Result<()> {
    let rt = runtime();
    let result = rt.block_on(test);
    rt.shutdown_background();
    result
}

struct Pipeline {
    batches: BoxStream<'static, Batch>,
    runner: AdmissionRunner,
    source: FileSource,
}

impl Pipeline {
    fn new(dir: &Path, runner: AdmissionRunner) -> Self {
        Self::with(source_config(dir), runner)
    }

    fn with(config: FileSourceConfig, runner: AdmissionRunner) -> Self {
        let source = FileSource::new(config);
        let batches = debounce(source.watch(), runner.admission().config().debounce);
        Pipeline {
            batches,
            runner,
            source,
        }
    }

    async fn next(&mut self) -> Result<AdmissionUpdate> {
        let batch = tokio::time::timeout(Duration::from_secs(30), self.batches.next())
            .await
            .context("no batch within 30 s")?
            .context("the source ended")?;
        Ok(self.runner.apply(batch).await)
    }

    /// Applies batches until `done` holds, with a deadline; returns every update seen.
    async fn until(
        &mut self,
        what: &str,
        done: impl Fn(&AdmissionRunner) -> bool,
    ) -> Result<Vec<AdmissionUpdate>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while !done(&self.runner) {
            if Instant::now() > deadline {
                bail!("{what}: not within 30 s; updates: {seen:?}");
            }
            seen.push(self.next().await?);
        }
        Ok(seen)
    }
}

impl Pipeline {
    async fn until_update(
        &mut self,
        what: &str,
        done: impl Fn(&AdmissionUpdate) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if Instant::now() > deadline {
                bail!("{what}: not within 30 s");
            }
            if done(&self.next().await?) {
                return Ok(());
            }
        }
    }
}

fn admitted(runner: &AdmissionRunner) -> Vec<String> {
    runner
        .admission()
        .admitted()
        .map(|a| a.cluster_id.clone())
        .collect()
}

fn refused(runner: &AdmissionRunner) -> Vec<(String, String)> {
    runner
        .view()
        .get()
        .refused
        .iter()
        .map(|r| (r.key.clone(), r.reason.clone()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn links_fifos_devices_and_bad_names_are_refused_without_blocking_or_reading() -> Result<()> {
    run(async {
        let top = tempfile::tempdir()?;
        let dir = top.path().join("broker");
        std::fs::create_dir(&dir)?;
        let key_file = top.path().join("private.key");
        std::fs::write(&key_file, SECRET_KEY)?;
        put(
            &dir,
            "a.yaml",
            &endpoint("a", 1, &["10.1.0.0/16"], "192.168.77.1"),
        );
        put(&dir, "l.yaml", &local().published);
        std::os::unix::fs::symlink(&key_file, dir.join("k.yaml"))?;
        std::os::unix::fs::symlink("/dev/zero", dir.join("z.yaml"))?;
        nix::unistd::mkfifo(
            &dir.join("f.yaml"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )?;
        std::os::unix::fs::symlink(dir.join("f.yaml"), dir.join("g.yaml"))?;
        std::os::unix::fs::symlink(dir.join("a.yaml"), dir.join("inside.yaml"))?;
        std::fs::create_dir(dir.join("d.yaml"))?;
        std::fs::write(dir.join("Bad_Name.yaml"), SECRET_KEY)?;
        std::fs::write(dir.join(".hidden.yaml"), SECRET_KEY)?;
        std::fs::write(dir.join("notes.txt"), SECRET_KEY)?;

        let source = FileSource::new(source_config(&dir));
        let mut events = source.watch();
        let mut seen = Vec::new();
        // The snapshot and the refusals that follow it, all at once.
        let first = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .context("the first snapshot blocked")?
            .context("ended")?;
        seen.push(first);
        while let Ok(Some(e)) =
            tokio::time::timeout(Duration::from_millis(200), events.next()).await
        {
            seen.push(e);
        }
        let text = format!("{seen:?}");
        assert!(!text.contains(SECRET_KEY), "{text}");
        let SourceEvent::Snapshot(objects) = &seen[0] else {
            bail!("first event is not a snapshot: {text}");
        };
        let keys: Vec<&str> = objects.iter().map(|o| o.key.0.as_str()).collect();
        assert_eq!(keys, ["a.yaml", "l.yaml"], "{text}");
        assert_eq!(objects[0].bound_cluster.as_deref(), Some("a"));
        assert!(
            objects[0].created.is_some(),
            "ext4 and tmpfs record birth times"
        );
        let mut refusals: Vec<(String, &str)> = seen
            .iter()
            .filter_map(|e| match e {
                SourceEvent::Refused { key, problem } => Some((key.0.clone(), problem.reason)),
                _ => None,
            })
            .collect();
        refusals.sort();
        assert_eq!(
            refusals,
            [
                ("Bad_Name.yaml".to_string(), "bad_name"),
                ("d.yaml".to_string(), "not_regular_file"),
                ("f.yaml".to_string(), "not_regular_file"),
                ("g.yaml".to_string(), "symlink"),
                ("inside.yaml".to_string(), "symlink"),
                ("k.yaml".to_string(), "symlink"),
                ("z.yaml".to_string(), "symlink"),
            ],
            "{text}"
        );

        // Through admission: a is admitted, every refusal listed, nothing leaks.
        let runner = AdmissionRunner::in_memory(admission_config(), local());
        let mut p = Pipeline::new(&dir, runner);
        let updates = p.until("a admitted", |r| admitted(r) == ["a"]).await?;
        p.until("refusals listed", |r| refused(r).len() == 7)
            .await?;
        let report = p.runner.view().get();
        let all = format!("{updates:?} {report:?}");
        assert!(!all.contains(SECRET_KEY), "{all}");
        assert!(updates.iter().all(|u| !u.republish), "our own file is fine");
        Ok(())
    })
}

#[test]
fn oversized_files_are_read_only_to_the_limit_and_refused() -> Result<()> {
    run(async {
        let dir = tempfile::tempdir()?;
        // 50 MB (sparse: a file system that cannot is fine too, it is only slower).
        let big = std::fs::File::create(dir.path().join("big.yaml"))?;
        big.set_len(50 * 1024 * 1024)?;
        drop(big);
        let source = FileSource::new(source_config(dir.path()));
        let mut events = source.watch();
        let first = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await?
            .context("ended")?;
        let SourceEvent::Snapshot(objects) = first else {
            bail!("not a snapshot");
        };
        assert_eq!(objects.len(), 1);
        assert_eq!(
            objects[0].bytes.len(),
            32 * 1024 + 1,
            "read up to the limit plus one"
        );

        let mut p = Pipeline::new(
            dir.path(),
            AdmissionRunner::in_memory(admission_config(), local()),
        );
        p.until("refused", |r| !refused(r).is_empty()).await?;
        assert_eq!(refused(&p.runner), pairs(&[("big.yaml", "too_large")]));
        Ok(())
    })
}

#[test]
fn too_many_subnets_and_deep_nesting_are_refused_and_hold_nothing_up() -> Result<()> {
    run(async {
        let dir = tempfile::tempdir()?;
        let subnets: Vec<String> = (0..10_000u32)
            .map(|i| format!("10.{}.{}.0/24", 10 + i / 256, i % 256))
            .collect();
        let refs: Vec<&str> = subnets.iter().map(String::as_str).collect();
        put(
            dir.path(),
            "many.yaml",
            &endpoint("many", 1, &refs, "192.168.77.1"),
        );
        // 50,000 nested flow sequences (100 KB): quadratic in the YAML scanner.
        let deep = format!("{}{}", "[".repeat(50_000), "]".repeat(50_000));
        std::fs::write(dir.path().join("deep.yaml"), deep)?;
        put(
            dir.path(),
            "ok.yaml",
            &endpoint("ok", 2, &["10.2.0.0/16"], "192.168.77.2"),
        );
        let config = AdmissionConfig {
            limits: wgcable_api::ParseLimits {
                max_bytes: 1024 * 1024,
                // The default: 256 subnets at most.
                ..wgcable_api::ParseLimits::default()
            },
            ..admission_config()
        };
        let source_config = FileSourceConfig {
            max_file_bytes: 1024 * 1024,
            ..source_config(dir.path())
        };
        let mut p = Pipeline::with(source_config, AdmissionRunner::in_memory(config, local()));
        p.until("both refused", |r| refused(r).len() == 2).await?;
        let refusals = refused(&p.runner);
        assert_eq!(refusals[1], ("many.yaml".into(), "too_many_subnets".into()));
        assert_eq!(refusals[0].0, "deep.yaml");
        assert_eq!(refusals[0].1, "too_deep", "{refusals:?}");
        assert_eq!(admitted(&p.runner), ["ok"], "the others are not held up");
        Ok(())
    })
}

#[test]
fn five_thousand_files_are_admitted_and_a_cap_keeps_the_oldest() -> Result<()> {
    run(async {
        let dir = tempfile::tempdir()?;
        for i in 0..5000u32 {
            let name = format!("c{i}");
            let mut ep = endpoint(
                &name,
                1,
                &[&format!("10.{}.{}.0/24", 10 + i / 256, i % 256)],
                &format!("172.16.{}.{}", i / 256, i % 256),
            );
            let key = [
                (i % 251) as u8 + 1,
                (i / 251) as u8 + 1,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
            ];
            ep.spec.set_public_key(&PublicKey::from_bytes(key));
            put(dir.path(), &format!("{name}.yaml"), &ep);
        }
        let mut p = Pipeline::new(
            dir.path(),
            AdmissionRunner::in_memory(admission_config(), local()),
        );
        let started = Instant::now();
        let updates = p
            .until("5,000 admitted", |r| r.admission().admitted_count() == 5000)
            .await?;
        eprintln!(
            "5,000 files admitted in {:?} (debug build)",
            started.elapsed()
        );
        assert_eq!(updates[0].upserted.len(), 5000, "one batch");
        assert!(updates[0].snapshot);

        let capped = FileSourceConfig {
            max_files: 100,
            ..source_config(dir.path())
        };
        let source = FileSource::new(capped);
        let mut events = source.watch();
        let mut got = Vec::new();
        got.push(events.next().await.context("ended")?);
        while let Ok(Some(e)) =
            tokio::time::timeout(Duration::from_millis(200), events.next()).await
        {
            got.push(e);
        }
        let SourceEvent::Snapshot(objects) = &got[0] else {
            bail!("not a snapshot")
        };
        assert_eq!(objects.len(), 100);
        // The oldest by birth time (the kernel's clock ticks coarsely, so by name within a tick).
        let mut by_age: Vec<(std::time::SystemTime, String)> = (0..5000)
            .map(|i| {
                let name = format!("c{i}.yaml");
                let born = std::fs::metadata(dir.path().join(&name))?.created()?;
                Ok((born, name))
            })
            .collect::<Result<_>>()?;
        by_age.sort();
        let oldest: Vec<&str> = by_age[..100].iter().map(|(_, n)| n.as_str()).collect();
        let mut got_names: Vec<&str> = objects.iter().map(|o| o.key.0.as_str()).collect();
        let mut want = oldest.clone();
        want.sort();
        got_names.sort();
        assert_eq!(got_names, want);
        assert!(
            got.iter()
                .any(|e| matches!(e, SourceEvent::Health(h) if !h.is_healthy())),
            "{:?}",
            &got[1..]
        );
        Ok(())
    })
}

#[test]
fn rapid_in_place_rewrites_are_never_applied_torn() -> Result<()> {
    run(async {
        let dir = tempfile::tempdir()?;
        let first = endpoint(
            "c",
            3,
            &["10.3.0.0/16", "10.4.0.0/16", "10.5.0.0/16", "10.6.0.0/16"],
            "192.168.77.3",
        );
        let second = endpoint(
            "c",
            3,
            &["10.3.0.0/16", "10.4.0.0/16", "10.5.0.0/16", "10.6.0.0/16"],
            "192.168.77.33",
        );
        let contents = [yaml(&first), yaml(&second)];
        std::fs::write(dir.path().join("c.yaml"), &contents[0])?;
        // A settle time longer than a writer is ever descheduled on a busy machine: a torn
        // state must hold still that long, twice read alike, to be delivered at all.
        let config = FileSourceConfig {
            settle: Duration::from_millis(150),
            ..source_config(dir.path())
        };
        let mut p = Pipeline::with(
            config,
            AdmissionRunner::in_memory(admission_config(), local()),
        );
        p.until("c admitted", |r| admitted(r) == ["c"]).await?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (path, contents, stop) =
                (dir.path().join("c.yaml"), contents.clone(), stop.clone());
            std::thread::spawn(move || -> std::io::Result<u64> {
                use std::io::Write;
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let content = &contents[(n % 2) as usize];
                    // In place, in two writes: a reader can see it empty or half written.
                    let mut f = std::fs::File::create(&path)?;
                    f.write_all(&content[..content.len() / 2])?;
                    f.write_all(&content[content.len() / 2..])?;
                    n += 1;
                }
                let mut f = std::fs::File::create(&path)?;
                f.write_all(&contents[1])?;
                Ok(n)
            })
        };
        let churn_until = Instant::now() + Duration::from_millis(2000);
        let mut updates = Vec::new();
        while Instant::now() < churn_until {
            if let Ok(Ok(u)) = tokio::time::timeout(Duration::from_millis(200), p.next()).await {
                updates.push(u);
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let writes = writer.join().expect("writer")?;
        let final_ip = |r: &AdmissionRunner| {
            r.admission()
                .admitted()
                .any(|a| a.endpoint.spec == second.spec)
        };
        updates.extend(p.until("the final content", final_ip).await?);
        let upserts: Vec<_> = updates.iter().flat_map(|u| u.upserted.iter()).collect();
        let refusals: usize = updates.iter().map(|u| u.refused.len()).sum();
        eprintln!(
            "{writes} in-place rewrites: {} upserts, {refusals} refusals",
            upserts.len()
        );
        assert!(writes > 200, "the writer churned ({writes} writes)");
        for a in &upserts {
            assert!(
                a.endpoint.spec == first.spec || a.endpoint.spec == second.spec,
                "a torn write was admitted: {:?}",
                a.endpoint.spec
            );
        }
        assert!(
            upserts.len() + refusals < 30,
            "{} upserts and {refusals} refusals for {writes} writes",
            upserts.len()
        );
        Ok(())
    })
}

#[test]
fn an_impostor_file_never_takes_the_cluster() -> Result<()> {
    run(async {
        let dir = tempfile::tempdir()?;
        // Written first, named to be read first.
        put(
            dir.path(),
            "0-a.yaml",
            &endpoint("a", 9, &["10.1.0.0/16"], "192.168.77.9"),
        );
        put(
            dir.path(),
            "a.yaml",
            &endpoint("a", 1, &["10.1.0.0/16"], "192.168.77.1"),
        );
        let mut p = Pipeline::new(
            dir.path(),
            AdmissionRunner::in_memory(admission_config(), local()),
        );
        p.until("a admitted", |r| admitted(r) == ["a"]).await?;
        let a = p
            .runner
            .admission()
            .admitted()
            .next()
            .cloned()
            .context("a")?;
        assert_eq!(a.spec.public_key, Some(pk(1)));
        assert_eq!(refused(&p.runner), pairs(&[("0-a.yaml", "impostor")]));
        Ok(())
    })
}

/// Creates `name` (atomically) until its birth time is later than `than`'s (file times have a
/// clock tick's resolution).
fn put_newer(dir: &Path, name: &str, ep: &Endpoint, than: &str) -> Result<()> {
    let born = |n: &str| -> Result<std::time::SystemTime> {
        Ok(std::fs::metadata(dir.join(n))?.created()?)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        put(dir, name, ep);
        if born(name)? > born(than)? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{name} is not newer than {than}");
        }
        std::thread::yield_now();
    }
}

#[test]
fn a_squatter_at_a_fresh_start_does_not_win_by_its_name() -> Result<()> {
    run(async {
        let dir = tempfile::tempdir()?;
        let state = tempfile::tempdir()?;
        put(
            dir.path(),
            "b.yaml",
            &endpoint("b", 2, &["10.2.0.0/16"], "192.168.77.2"),
        );
        // Created later, claiming b's subnet, with a name that is read first.
        put_newer(
            dir.path(),
            "0-zz.yaml",
            &endpoint("0-zz", 26, &["10.2.0.0/16"], "192.168.77.26"),
            "b.yaml",
        )?;
        let runner = AdmissionRunner::open(admission_config(), local(), state.path()).await?;
        let mut p = Pipeline::new(dir.path(), runner);
        p.until("b admitted", |r| admitted(r) == ["b"]).await?;
        assert_eq!(
            refused(&p.runner),
            pairs(&[("0-zz.yaml", "subnet_conflict")])
        );
        Ok(())
    })
}

#[test]
fn a_restart_reproduces_the_decisions_and_a_deletion_admits_the_waiting_at_once() -> Result<()> {
    run(async {
        let dir = tempfile::tempdir()?;
        let state = tempfile::tempdir()?;
        let staging = tempfile::tempdir_in(dir.path().parent().context("parent")?)?;
        // a's file is created first, but outside the directory: it arrives after z.
        put(
            staging.path(),
            "a.yaml",
            &endpoint("a", 1, &["10.1.0.0/16"], "192.168.77.1"),
        );
        put_newer(
            dir.path(),
            "z.yaml",
            &endpoint("z", 26, &["10.1.0.0/16"], "192.168.77.26"),
            &staging.path().join("a.yaml").display().to_string(),
        )?;

        let runner = AdmissionRunner::open(admission_config(), local(), state.path()).await?;
        let mut p = Pipeline::new(dir.path(), runner);
        p.until("z admitted", |r| admitted(r) == ["z"]).await?;
        // A rename keeps a's (older) birth time.
        std::fs::rename(staging.path().join("a.yaml"), dir.path().join("a.yaml"))?;
        p.until("a refused", |r| refused(r).len() == 1).await?;
        assert_eq!(refused(&p.runner), pairs(&[("a.yaml", "subnet_conflict")]));
        drop(p);
        let registry = std::fs::read(state.path().join("admission-registry.json"))?;
        let registry: serde_json::Value = serde_json::from_slice(&registry)?;
        assert_eq!(registry["clusters"][0]["cluster_id"], "z", "{registry}");

        // Restart: without the registry a (older) would win; with it, z keeps its subnet.
        let runner = AdmissionRunner::open(admission_config(), local(), state.path()).await?;
        let mut p = Pipeline::new(dir.path(), runner);
        let updates = p
            .until("the first batch", |r| r.admission().is_synced())
            .await?;
        assert_eq!(admitted(&p.runner), ["z"], "{updates:?}");
        assert_eq!(refused(&p.runner), pairs(&[("a.yaml", "subnet_conflict")]));
        // The incumbent leaves: a is admitted in the same batch, no restart needed.
        std::fs::remove_file(dir.path().join("z.yaml"))?;
        let updates = p.until("a admitted", |r| admitted(r) == ["a"]).await?;
        let last = updates.last().context("an update")?;
        assert_eq!(last.removed, ["z"]);
        assert_eq!(last.upserted.len(), 1);
        Ok(())
    })
}

#[test]
fn publish_withdraw_and_an_overwritten_own_endpoint() -> Result<()> {
    run(async {
        let dir = tempfile::tempdir()?;
        let source = FileSource::new(source_config(dir.path()));
        source.preflight().await?;
        let ours = local().published;
        source.publish(&ours).await?;
        let path = dir.path().join("l.yaml");
        let meta = std::fs::metadata(&path)?;
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        source.publish(&ours).await?;
        assert_eq!(
            std::fs::metadata(&path)?.ino(),
            meta.ino(),
            "identical content is not rewritten"
        );

        let mut p = Pipeline::new(
            dir.path(),
            AdmissionRunner::in_memory(admission_config(), local()),
        );
        let first = p.next().await?;
        assert!(first.snapshot && !first.republish, "{first:?}");
        // Someone else's key and IP at our own file: within one rescan, publish again.
        put(
            dir.path(),
            "l.yaml",
            &endpoint("l", 66, &["10.200.0.0/16"], "192.168.77.66"),
        );
        p.until_update("a republish", |u| u.republish).await?;
        p.source.publish(&ours).await?;
        assert_eq!(std::fs::read(&path)?, yaml(&ours));
        // Never admitted as a remote, never listed as refused.
        assert!(admitted(&p.runner).is_empty() && refused(&p.runner).is_empty());
        p.source.withdraw(&ours).await?;
        assert!(!path.exists());
        p.source.withdraw(&ours).await?;
        p.until_update("a republish after the deletion", |u| u.republish)
            .await?;
        Ok(())
    })
}

#[test]
fn preflight_checks_the_directory() -> Result<()> {
    run(async {
        let top = tempfile::tempdir()?;
        let missing = FileSource::new(FileSourceConfig::new(top.path().join("nope"), "l"));
        let e = missing.preflight().await.expect_err("missing");
        assert!(e.to_string().contains("does not exist"), "{e}");
        std::fs::write(top.path().join("file"), "")?;
        let file = FileSource::new(FileSourceConfig::new(top.path().join("file"), "l"));
        let e = file.preflight().await.expect_err("a file");
        assert!(e.to_string().contains("is not a directory"), "{e}");
        FileSource::new(FileSourceConfig::new(top.path(), "l"))
            .preflight()
            .await?;
        Ok(())
    })
}
