/// Errors from parsing, formatting and reading typed values out of the data model.
///
/// Validation problems are not here: [`crate::EndpointSpec::validate`] collects them all in a
/// [`crate::ValidationErrors`] instead of stopping at the first.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    #[error("parsing {what} from YAML")]
    ParseYaml {
        what: String,
        #[source]
        source: serde_yaml_ng::Error,
    },

    #[error("parsing {what} from JSON")]
    ParseJson {
        what: String,
        #[source]
        source: serde_json::Error,
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
         apiVersion {found_api_version:?} and kind {found_kind:?}{hint}",
        hint = wrong_type_hint(.found_api_version, .found_kind)
    )]
    WrongType {
        what: String,
        expected_api_version: &'static str,
        expected_kind: &'static str,
        found_api_version: String,
        found_kind: String,
    },

    #[error("backend_config {key:?} is {value:?}, which is not a port number (1-65535)")]
    BadPort { key: &'static str, value: String },

    // Public keys are not secret, so the value may be shown.
    #[error("backend_config \"publicKey\" is {value:?}, which is not a WireGuard public key")]
    BadPublicKey {
        value: String,
        #[source]
        source: wgcable_keys::KeyError,
    },
}

/// Points at the usual mistakes behind a wrong apiVersion/kind.
fn wrong_type_hint(api_version: &str, kind: &str) -> &'static str {
    if kind == "Endpoints" || (api_version == "v1" && kind == "Endpoint") {
        "; that is Kubernetes' core Endpoints, use `kubectl get endpoints.submariner.io -o yaml`"
    } else if kind == "List" || kind.ends_with("List") {
        "; this is a list, parse it with Endpoint::list_from_yaml"
    } else if api_version.is_empty() && kind.is_empty() {
        "; is this a bare spec? An Endpoint document needs apiVersion, kind, metadata and spec"
    } else {
        ""
    }
}
