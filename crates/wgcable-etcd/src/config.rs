//! The source's configuration: a plain struct the binary fills from its flags.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::backoff::Backoff;
use crate::layout::{Layout, DEFAULT_PREFIX};
use crate::Error;

/// How to reach etcd and what to read from it.
///
/// The binary's flags map one to one: `--etcd-endpoints`, `--etcd-prefix`, `--etcd-cacert`,
/// `--etcd-cert`, `--etcd-key` (the last three named as etcdctl names them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members: `http://host:port`, `https://host:port`, or
    /// `host:port` (then https when TLS files are given, http otherwise). Requests are
    /// balanced over all of them and fail over when one is down.
    pub endpoints: Vec<String>,
    /// Keys live under `<prefix>/endpoints/<cluster-id>`. Default `/wgcable`.
    pub prefix: String,
    /// This gateway's cluster id (`--cluster-id`): its key is the one it writes, and the one
    /// admission compares with what it published (`EndpointSource::own_key`).
    pub local_cluster: Option<String>,
    /// The CA that signed the members' server certificates (`--etcd-cacert`).
    pub cacert: Option<PathBuf>,
    /// The client certificate (`--etcd-cert`), with its key (`--etcd-key`): both or neither.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The largest value handed on whole: the admission layer's size limit. A larger value is
    /// handed on cut to this plus one byte, so that admission refuses it as oversized without
    /// it being held whole. Default `wgcable_api::ParseLimits::default().max_bytes` (1 MiB).
    pub max_value_bytes: usize,
    /// The largest gRPC message decoded. etcd splits large watch responses into fragments no
    /// larger than its `--max-request-bytes` (default 1.5 MiB), and every value fits in such a
    /// request, so this bounds the memory one response can take. Default
    /// `2 * (max_value_bytes + 1) + 1 MiB`, and at least 4 MiB.
    pub max_message_bytes: usize,
    /// At most this many keys are held under the prefix; a listing or watch beyond it is not
    /// delivered (the source reports itself unhealthy and what is known stays). Default 10,000.
    pub max_objects: usize,
    /// At most this many value bytes in all (after cutting oversized values), with the same
    /// treatment as `max_objects`. Default 256 MiB.
    pub max_total_bytes: usize,
    /// Every request (a page of a listing, a write) must complete within this. Default 5 s.
    pub request_timeout: Duration,
    /// Connecting to one member must succeed within this. Default 3 s.
    pub connect_timeout: Duration,
    /// While watching, a progress request is sent this often; a member that does not answer
    /// within `request_timeout` is given up and another one tried. This is what finds a cut
    /// path or a hung member (TCP alone would wait minutes). Default 2 s.
    pub probe_interval: Duration,
    /// Retries after a failure wait this, jittered (see [`Backoff`]).
    pub backoff: Backoff,
}

impl EtcdConfig {
    /// A configuration with every default and these endpoints.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> EtcdConfig {
        // The admission parser's own size limit: one number for both.
        let max_value_bytes = wgcable_api::ParseLimits::default().max_bytes;
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: DEFAULT_PREFIX.to_string(),
            local_cluster: None,
            cacert: None,
            cert: None,
            key: None,
            max_value_bytes,
            max_message_bytes: default_max_message_bytes(max_value_bytes),
            max_objects: 10_000,
            max_total_bytes: 256 * 1024 * 1024,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            probe_interval: Duration::from_secs(2),
            backoff: Backoff::default(),
        }
    }

    /// Sets the value limit and the message limit that follows from it.
    pub fn with_max_value_bytes(mut self, max: usize) -> EtcdConfig {
        self.max_value_bytes = max;
        self.max_message_bytes = default_max_message_bytes(max);
        self
    }

    /// `--etcd-endpoints URL[,URL...]` as the flag takes it.
    pub fn parse_endpoints(list: &str) -> Vec<String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Whether the source talks TLS.
    pub fn tls(&self) -> bool {
        self.cacert.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// Checks what can be checked without touching anything: URLs, prefix, TLS flags that go
    /// together, limits. Files are read by [`EtcdConfig::check_files`].
    pub fn validate(&self) -> Result<Layout, Error> {
        let layout = Layout::new(&self.prefix)?;
        if let Some(id) = &self.local_cluster {
            layout.key_of(id)?;
        }
        let config = |what: String| Err(Error::Config { what });
        if self.endpoints.is_empty() {
            return config("--etcd-endpoints: give at least one etcd client URL (for example http://10.0.0.1:2379)".into());
        }
        for url in &self.endpoints {
            check_url(url, self.tls())?;
        }
        if self.cert.is_some() != self.key.is_some() {
            return config(
                "--etcd-cert and --etcd-key go together: give both (a client certificate and its key) or neither"
                    .into(),
            );
        }
        let https = self
            .endpoints
            .iter()
            .any(|u| u.starts_with("https://") || (!u.contains("://") && self.tls()));
        if https && self.cacert.is_none() {
            return config(
                "--etcd-endpoints uses https: give --etcd-cacert, the CA that signed the etcd members' certificates"
                    .into(),
            );
        }
        if self.max_value_bytes == 0 || self.max_objects == 0 || self.max_total_bytes == 0 {
            return config("etcd source limits must be positive".into());
        }
        if self.max_message_bytes < self.max_value_bytes + 64 * 1024 {
            return config(format!(
                "etcd source: the message limit ({} bytes) must exceed the value limit ({} bytes) by at least 64 KiB",
                self.max_message_bytes, self.max_value_bytes
            ));
        }
        if self.request_timeout.is_zero()
            || self.connect_timeout.is_zero()
            || self.probe_interval.is_zero()
        {
            return config("etcd source timeouts must be positive".into());
        }
        Ok(layout)
    }

    /// Reads the TLS files and checks each holds what its flag says (a certificate, a private
    /// key), naming the flag and the file when not. Never prints a file's content.
    pub fn check_files(&self) -> Result<(), Error> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        if let Some(path) = &self.cacert {
            let n = CertificateDer::pem_file_iter(path)
                .map_err(|e| tls_error("--etcd-cacert", path, e))?
                .try_fold(0usize, |n, c| c.map(|_| n + 1))
                .map_err(|e| tls_error("--etcd-cacert", path, e))?;
            if n == 0 {
                return Err(Error::Tls {
                    flag: "--etcd-cacert",
                    path: path.clone(),
                    problem: "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
                });
            }
        }
        if let Some(path) = &self.cert {
            let mut certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| tls_error("--etcd-cert", path, e))?;
            match certs.next() {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(tls_error("--etcd-cert", path, e)),
                None => {
                    return Err(Error::Tls {
                        flag: "--etcd-cert",
                        path: path.clone(),
                        problem: "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
                    })
                }
            }
        }
        if let Some(path) = &self.key {
            PrivateKeyDer::from_pem_file(path).map_err(|e| tls_error("--etcd-key", path, e))?;
            warn_if_readable_by_others(path);
        }
        Ok(())
    }
}

fn default_max_message_bytes(max_value_bytes: usize) -> usize {
    (2 * (max_value_bytes + 1) + 1024 * 1024).max(4 * 1024 * 1024)
}

fn check_url(url: &str, tls: bool) -> Result<(), Error> {
    let bad = |why: &str| Error::Config {
        what: format!("--etcd-endpoints {url}: {why}"),
    };
    let rest = if let Some(rest) = url.strip_prefix("http://") {
        if tls {
            return Err(bad(
                "http:// with TLS files given; use https:// (or host:port) for TLS, or drop the TLS flags",
            ));
        }
        rest
    } else if let Some(rest) = url.strip_prefix("https://") {
        rest
    } else if url.contains("://") {
        return Err(bad("only http:// and https:// URLs are supported"));
    } else {
        url
    };
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') || authority.contains('@') {
        return Err(bad(
            "expected scheme://host:port (for example http://10.0.0.1:2379)",
        ));
    }
    // The port is required: etcd has two well-known ports (2379 clients, 2380 peers), and
    // guessing the wrong one would only show as timeouts.
    let port = match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.ends_with(':') => port,
        _ => {
            return Err(bad(
                "give the port too (etcd's client port is usually 2379)",
            ))
        }
    };
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad("the port is not a number between 1 and 65535"));
    }
    // The `http` crate's parser, which tonic uses too: what passes here, connects.
    format!("http://{authority}")
        .parse::<http::Uri>()
        .map_err(|_| bad("not a valid URL"))?;
    Ok(())
}

fn tls_error(flag: &'static str, path: &Path, e: rustls_pki_types::pem::Error) -> Error {
    use rustls_pki_types::pem::Error as Pem;
    let problem = match e {
        Pem::Io(io) if io.kind() == std::io::ErrorKind::NotFound => "does not exist".to_string(),
        Pem::Io(io) => format!("cannot be read: {io}"),
        Pem::NoItemsFound => match flag {
            "--etcd-key" => {
                "holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA or EC)".into()
            }
            _ => "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        },
        // The pem errors describe structure (a missing end marker, bad base64), not content.
        other => format!("is not valid PEM: {other}"),
    };
    Error::Tls {
        flag,
        path: path.to_path_buf(),
        problem,
    }
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o004 != 0 {
            tracing::warn!(file = %path.display(),
                "the etcd client key (--etcd-key) is readable by every user; chmod 600 it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoints: &[&str]) -> EtcdConfig {
        EtcdConfig::new(endpoints.iter().copied())
    }

    #[test]
    fn defaults() {
        let c = config(&["http://10.0.0.1:2379"]);
        assert_eq!(c.prefix, "/wgcable");
        assert_eq!(
            c.max_value_bytes,
            wgcable_api::ParseLimits::default().max_bytes
        );
        assert!(c.max_message_bytes >= 4 << 20);
        c.validate().expect("defaults are valid");
        assert_eq!(
            EtcdConfig::parse_endpoints(" http://a:1, ,https://b:2,"),
            ["http://a:1", "https://b:2"]
        );
    }

    #[test]
    fn urls() {
        for ok in [
            "http://10.0.0.1:2379",
            "http://[fd00::1]:2379",
            "http://etcd-1.example:2379/",
            "10.0.0.1:2379",
        ] {
            config(&[ok]).validate().expect(ok);
        }
        for (bad, why) in [
            ("", "expected scheme://host:port"),
            ("http://", "expected scheme://host:port"),
            ("http://10.0.0.1", "give the port"),
            ("http://10.0.0.1:0", "not a number"),
            ("http://10.0.0.1:99999", "not a number"),
            ("http://u@10.0.0.1:2379", "expected scheme://host:port"),
            ("http://10.0.0.1:2379/v3", "expected scheme://host:port"),
            ("unix:///run/etcd.sock", "only http:// and https://"),
            ("http://a b:2379", "not a valid URL"),
        ] {
            let err = config(&[bad]).validate().expect_err(bad).to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let err = config(&[]).validate().expect_err("empty").to_string();
        assert!(err.contains("at least one"), "{err}");
    }

    #[test]
    fn tls_flags_go_together() {
        let mut c = config(&["https://10.0.0.1:2379"]);
        let err = c.validate().expect_err("https without CA").to_string();
        assert!(err.contains("--etcd-cacert"), "{err}");
        c.cacert = Some("/ca.pem".into());
        c.validate().expect("https with a CA");
        c.cert = Some("/c.pem".into());
        let err = c.validate().expect_err("cert without key").to_string();
        assert!(
            err.contains("--etcd-cert and --etcd-key go together"),
            "{err}"
        );
        c.key = Some("/k.pem".into());
        c.validate().expect("all three");
        c.endpoints = vec!["http://10.0.0.1:2379".into()];
        let err = c.validate().expect_err("http with TLS").to_string();
        assert!(err.contains("http:// with TLS files"), "{err}");
        c.endpoints = vec!["10.0.0.1:2379".into()];
        c.validate().expect("bare host:port means https with TLS");
    }

    #[test]
    fn limits_must_leave_room() {
        let mut c = config(&["http://10.0.0.1:2379"]);
        c.max_message_bytes = c.max_value_bytes;
        assert!(c.validate().is_err());
        let c = config(&["http://10.0.0.1:2379"]).with_max_value_bytes(10 << 20);
        assert!(c.max_message_bytes > 20 << 20);
        c.validate().expect("scaled message limit");
    }

    #[test]
    fn tls_files_are_checked_and_never_echoed() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path();
        let secret = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END PRIVATE KEY-----\n";
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "secret-garbage-content\n").expect("write");
        let key = dir.join("key.pem");
        std::fs::write(&key, secret).expect("write");
        let missing = dir.join("missing.pem");

        let mut c = config(&["https://10.0.0.1:2379"]);
        c.cacert = Some(missing.clone());
        let err = c.check_files().expect_err("missing").to_string();
        assert!(
            err.contains("--etcd-cacert") && err.contains("does not exist"),
            "{err}"
        );

        c.cacert = Some(garbage.clone());
        let err = c.check_files().expect_err("garbage CA").to_string();
        assert!(err.contains("holds no PEM certificate"), "{err}");
        assert!(!err.contains("secret-garbage"), "{err}");

        // A key where a certificate is expected: named, content not printed.
        c.cacert = Some(key.clone());
        let err = c.check_files().expect_err("key as CA").to_string();
        assert!(err.contains("--etcd-cacert"), "{err}");
        assert!(!err.contains("c2VjcmV0"), "{err}");

        c.cacert = None;
        c.cert = None;
        c.key = Some(garbage.clone());
        let err = c.check_files().expect_err("garbage key").to_string();
        assert!(
            err.contains("--etcd-key") && err.contains("no PEM private key"),
            "{err}"
        );
        c.key = Some(key);
        c.check_files().expect("a PEM private key");
    }
}
