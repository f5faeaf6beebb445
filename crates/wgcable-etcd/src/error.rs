//! The crate's errors.

use std::path::PathBuf;

use wgcable_broker::SourceError;

/// Why building or running the etcd source failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or setting cannot work; `what` names it and says what to do.
    #[error("{what}")]
    Config { what: String },
    /// A TLS file is missing, unreadable or does not hold what its flag needs.
    #[error("{flag} {}: {problem}", path.display())]
    Tls {
        flag: &'static str,
        path: PathBuf,
        problem: String,
    },
    /// etcd could not be reached or did not answer in time; retrying may succeed.
    #[error("{action}: etcd did not answer")]
    Unavailable {
        action: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// etcd answered with a refusal (permission denied, bad request...).
    #[error("{action}: etcd refused the request")]
    Refused {
        action: String,
        #[source]
        source: etcd_client::Error,
    },
    /// The key of this cluster was rewritten or deleted by another writer; this gateway no
    /// longer writes it (see the crate docs on compare-and-swap).
    #[error("{what}")]
    Superseded { what: String },
}

impl Error {
    /// True when retrying later may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }

    /// Sorts a client error: transport failures, timeouts, and etcd's "no leader" and
    /// "unavailable" answers are worth retrying; anything else is a refusal.
    pub(crate) fn from_client(action: impl Into<String>, e: etcd_client::Error) -> Error {
        let action = action.into();
        if is_transient(&e) {
            Error::Unavailable {
                action,
                source: Box::new(e),
            }
        } else {
            Error::Refused { action, source: e }
        }
    }

    pub(crate) fn timeout(action: impl Into<String>, after: std::time::Duration) -> Error {
        Error::Unavailable {
            action: action.into(),
            source: format!("no answer within {after:?}").into(),
        }
    }
}

/// Whether a client error is a reason to retry rather than a refusal.
pub(crate) fn is_transient(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::TransportError(_)
        | etcd_client::Error::IoError(_)
        | etcd_client::Error::WatchError(_)
        | etcd_client::Error::EndpointError(_) => true,
        etcd_client::Error::GRpcStatus(status) => matches!(
            status.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Unknown
                | Code::Aborted
                | Code::Cancelled
                | Code::ResourceExhausted
                | Code::Internal
        ),
        _ => false,
    }
}

impl From<Error> for SourceError {
    fn from(e: Error) -> SourceError {
        match e {
            Error::Unavailable { action, source } => SourceError::Unavailable { action, source },
            other => SourceError::Failed {
                action: other.to_string(),
                source: std::error::Error::source(&other)
                    .map(|s| -> Box<dyn std::error::Error + Send + Sync> { s.to_string().into() }),
            },
        }
    }
}
