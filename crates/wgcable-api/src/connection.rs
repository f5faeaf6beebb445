use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::endpoint::{Endpoint, EndpointSpec};
use crate::serde_util::null_as_default;

/// The state of a cable to a remote endpoint, as Submariner reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionStatus {
    Connected,
    Connecting,
    Error,
    /// No status yet (Submariner's `ConnectionNone`).
    #[default]
    None,
}

impl ConnectionStatus {
    /// Every status, e.g. to pre-create or clear metric series for each.
    pub const ALL: &'static [ConnectionStatus] = &[
        ConnectionStatus::Connected,
        ConnectionStatus::Connecting,
        ConnectionStatus::Error,
        ConnectionStatus::None,
    ];

    /// The wire (and metric label) form: `connected`, `connecting`, `error` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionStatus::Connected => "connected",
            ConnectionStatus::Connecting => "connecting",
            ConnectionStatus::Error => "error",
            ConnectionStatus::None => "none",
        }
    }
}

impl<'de> Deserialize<'de> for ConnectionStatus {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.as_str() {
            "connected" => Ok(ConnectionStatus::Connected),
            "connecting" => Ok(ConnectionStatus::Connecting),
            "error" => Ok(ConnectionStatus::Error),
            // Go leaves the status "" until the first check (NewConnection does not set it).
            "none" | "" => Ok(ConnectionStatus::None),
            other => Err(serde::de::Error::unknown_variant(
                other,
                &["connected", "connecting", "error", "none"],
            )),
        }
    }
}

impl fmt::Display for ConnectionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Round-trip time statistics of a connection's health check, as Go duration strings
/// (e.g. `"1.234ms"`), like Submariner's `LatencyRTTSpec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub struct LatencyRtt {
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub last: String,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub min: String,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub average: String,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub max: String,
    #[serde(
        rename = "stdDev",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub std_dev: String,
}

/// The observed state of the cable to one remote endpoint (Submariner's `Connection`, as found
/// in a Gateway's `status.connections`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub struct Connection {
    // A plain string in Submariner's CRD (no enum): Go gateways write "" before the first check.
    #[serde(default, deserialize_with = "null_as_default")]
    #[cfg_attr(feature = "schemars", schemars(with = "String"))]
    pub status: ConnectionStatus,

    #[serde(
        rename = "statusMessage",
        default,
        deserialize_with = "null_as_default"
    )]
    pub status_message: String,

    /// Shared, not copied: a gateway judges every connection at every status poll, and the
    /// remote's Endpoint changes far less often than that.
    #[serde(default, deserialize_with = "null_as_default")]
    pub endpoint: Arc<EndpointSpec>,

    #[serde(
        rename = "usingIP",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub using_ip: String,

    #[serde(
        rename = "usingNAT",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub using_nat: bool,

    #[serde(
        rename = "latencyRTT",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub latency_rtt: Option<LatencyRtt>,
}

impl Connection {
    /// A connection with no status yet, like Submariner's `NewConnection`.
    pub fn new(
        endpoint: impl Into<Arc<EndpointSpec>>,
        using_ip: impl Into<String>,
        using_nat: bool,
    ) -> Self {
        Connection {
            endpoint: endpoint.into(),
            using_ip: using_ip.into(),
            using_nat,
            ..Connection::default()
        }
    }

    /// Sets the status and its message together, so they never disagree.
    pub fn set_status(&mut self, status: ConnectionStatus, message: impl Into<String>) {
        self.status = status;
        self.status_message = message.into();
    }
}

/// A connection as wgcable's `/connections` serves it: Submariner's [`Connection`] (its fields,
/// names and values unchanged, so anything that reads Submariner's reads this) plus the
/// cable's traffic figures, for which Submariner's type has no field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectionReport {
    #[serde(flatten)]
    pub connection: Connection,

    /// Bytes received from the peer, as the device counts them.
    #[serde(rename = "rxBytes", default, skip_serializing_if = "Option::is_none")]
    pub rx_bytes: Option<u64>,

    /// Bytes sent to the peer.
    #[serde(rename = "txBytes", default, skip_serializing_if = "Option::is_none")]
    pub tx_bytes: Option<u64>,

    /// Seconds since the last handshake with the peer; absent before the first.
    #[serde(
        rename = "lastHandshakeSeconds",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub last_handshake_seconds: Option<f64>,
}

impl From<Connection> for ConnectionReport {
    fn from(connection: Connection) -> Self {
        ConnectionReport {
            connection,
            ..ConnectionReport::default()
        }
    }
}

/// What the engine hands a cable driver to connect to a remote endpoint: the endpoint plus
/// the IP to reach it on and whether NAT is in the way (Submariner's `NATEndpointInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatEndpointInfo {
    pub endpoint: Endpoint,
    pub use_ip: String,
    pub use_nat: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_a_submariner_connection_plus_traffic() {
        let mut report =
            ConnectionReport::from(Connection::new(EndpointSpec::default(), "192.0.2.1", false));
        report
            .connection
            .set_status(ConnectionStatus::Connected, "ok");
        let plain = serde_json::to_value(&report).expect("serializes");
        assert_eq!(
            plain,
            serde_json::to_value(&report.connection).expect("serializes"),
            "without figures it is exactly Submariner's object"
        );
        report.rx_bytes = Some(7);
        report.tx_bytes = Some(9);
        report.last_handshake_seconds = Some(1.5);
        let json = serde_json::to_value(&report).expect("serializes");
        assert_eq!(json["status"], "connected");
        assert_eq!(json["usingIP"], "192.0.2.1");
        assert_eq!(json["rxBytes"], 7);
        assert_eq!(json["lastHandshakeSeconds"], 1.5);
        let back: ConnectionReport = serde_json::from_value(json).expect("parses");
        assert_eq!(back, report);
        // And a Connection reader reads it (unknown fields are ignored).
        let as_submariner: Connection =
            serde_json::from_value(serde_json::to_value(&report).expect("json")).expect("parses");
        assert_eq!(as_submariner, report.connection);
    }

    #[test]
    fn status_strings() {
        for status in ConnectionStatus::ALL {
            let json = serde_json::to_string(status).expect("serializes");
            assert_eq!(json, format!("\"{}\"", status.as_str()));
            assert_eq!(status.to_string(), status.as_str());
            let back: ConnectionStatus = serde_json::from_str(&json).expect("parses");
            assert_eq!(back, *status);
        }
        assert_eq!(
            ConnectionStatus::ALL
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>(),
            ["connected", "connecting", "error", "none"]
        );
        assert!(serde_json::from_str::<ConnectionStatus>("\"Connected\"").is_err());
        assert_eq!(
            serde_json::from_str::<ConnectionStatus>("\"\"").expect("Go's unset status"),
            ConnectionStatus::None
        );
    }
}
