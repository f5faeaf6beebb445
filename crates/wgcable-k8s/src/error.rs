//! The crate's one error type.

use wgcable_broker::SourceError;

/// What went wrong, and what was being done.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration (environment, flags, mounted files) is unusable; the message says
    /// what to change.
    #[error("{message}")]
    Config { message: String },
    /// A file named by the configuration could not be read.
    #[error("{action}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
    /// A request to an API server failed.
    #[error("{action}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    /// An object could not be encoded as JSON.
    #[error("encoding {what} as JSON")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// An object could not be encoded as YAML.
    #[error("encoding {what} as YAML")]
    EncodeYaml {
        what: &'static str,
        #[source]
        source: serde_yaml_ng::Error,
    },
}

impl Error {
    pub(crate) fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Kube { action, source }
    }

    /// True when the API server answered 404 Not Found.
    pub fn is_not_found(&self) -> bool {
        self.api_code() == Some(404)
    }

    /// True when the API server answered 409 Conflict (a stale resourceVersion, or the object
    /// already exists).
    pub fn is_conflict(&self) -> bool {
        self.api_code() == Some(409)
    }

    fn api_code(&self) -> Option<u16> {
        match self {
            Error::Kube {
                source: kube::Error::Api(status),
                ..
            } => Some(status.code),
            _ => None,
        }
    }

    /// True when retrying later may succeed: the server is unreachable, overloaded or
    /// answered with a conflict or a server error. Permission and validation errors are not.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Kube { source, .. } => match source {
                kube::Error::Api(status) => matches!(status.code, 409 | 429) || status.code >= 500,
                _ => true,
            },
            _ => false,
        }
    }
}

impl From<Error> for SourceError {
    fn from(error: Error) -> Self {
        if error.is_transient() {
            SourceError::Unavailable {
                action: error.to_string(),
                source: Box::new(error),
            }
        } else {
            SourceError::Failed {
                action: error.to_string(),
                source: Some(Box::new(error)),
            }
        }
    }
}
