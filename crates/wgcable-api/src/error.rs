use crate::parse::{FoundType, ParseError};

/// Errors from parsing, formatting and reading typed values out of the data model.
///
/// No message quotes a value read from input: parse errors say what and where
/// ([`ParseError`]), the others name the field.
///
/// Validation problems are not here: [`crate::EndpointSpec::validate`] collects them all in a
/// [`crate::ValidationErrors`] instead of stopping at the first.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    #[error("parsing {what}")]
    Parse {
        what: &'static str,
        #[source]
        source: Box<ParseError>,
    },

    #[error("formatting {what} as YAML")]
    FormatYaml {
        what: &'static str,
        #[source]
        source: serde_yaml_ng::Error,
    },

    #[error("formatting {what} as JSON")]
    FormatJson {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    #[error(
        "{what}: expected apiVersion {expected_api_version} and kind {expected_kind}, found \
         {found}"
    )]
    WrongType {
        what: String,
        expected_api_version: &'static str,
        expected_kind: &'static str,
        found: FoundType,
    },

    #[error("backend_config {key:?} is not a port number (1-65535)")]
    BadPort { key: &'static str },

    #[error("backend_config \"publicKey\" is not a WireGuard public key")]
    BadPublicKey {
        #[source]
        source: wgcable_keys::KeyError,
    },
}

impl ApiError {
    /// The parse error behind this one, if it is one; its `reason()` is a metrics label.
    pub fn parse_error(&self) -> Option<&ParseError> {
        match self {
            ApiError::Parse { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// An error and all its causes on one line, for logs and messages: `a: b: c`. A cause whose
/// text its parent already ends with is not printed twice (some layers repeat their cause).
/// The one formatter of the workspace: every crate above this one uses it.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let msg = e.to_string();
        if !out.ends_with(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = e.source();
    }
    out
}
