//! The Gateway status writer: Submariner's `GatewaySyncer`. Each report (the gateway reports
//! every status interval, 5 s) creates or updates the Gateway named after this node, with the
//! `update-timestamp` annotation; the active gateway deletes Gateways not refreshed for
//! [`STALE_AFTER`]; a gateway deletes its own on shutdown. `subctl show connections` and
//! `subctl diagnose` read these objects.

use std::time::{Duration, UNIX_EPOCH};

use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::Value;
use wgcable_broker::GatewayReport;

use crate::resources::{Gateway, GatewayStatus, Raw, UPDATE_TIMESTAMP_ANNOTATION};
use crate::source::Inner;
use crate::Error;

/// A Gateway whose timestamp is this old is stale (Submariner: three update intervals).
pub const STALE_AFTER: Duration = Duration::from_secs(15);

/// The Gateway object for a report, as Submariner's `generateGatewayObject` builds it.
pub fn gateway_object(report: &GatewayReport, version: &str, fallback_name: &str) -> Gateway {
    let hostname = if report.local.spec.hostname.is_empty() {
        fallback_name
    } else {
        report.local.spec.hostname.as_str()
    };
    let mut gateway = Gateway::new(
        hostname,
        GatewayStatus {
            version: version.to_owned(),
            ha_status: report.role.ha_status().to_owned(),
            local_endpoint: report.local.spec.clone(),
            status_failure: report.status_failure.clone(),
            connections: report.connections.clone(),
        },
    );
    gateway.metadata.annotations = Some(
        [(
            UPDATE_TIMESTAMP_ANNOTATION.to_owned(),
            unix_seconds(report.reported_at).to_string(),
        )]
        .into(),
    );
    gateway
}

fn unix_seconds(time: std::time::SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Whether a Gateway is stale at `now` (Unix seconds): no timestamp, an unreadable one, or one
/// [`STALE_AFTER`] old or more, exactly Submariner's `isGatewayStale`.
pub fn is_stale(gateway: &Value, now: i64) -> bool {
    let timestamp = gateway
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(UPDATE_TIMESTAMP_ANNOTATION))
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<i64>().ok());
    match timestamp {
        Some(t) => now >= t.saturating_add(STALE_AFTER.as_secs() as i64),
        None => true,
    }
}

/// Writes the Gateway for `report`, then (when active) deletes the stale ones.
pub(crate) async fn write(inner: &Inner, report: &GatewayReport) -> Result<(), Error> {
    let gateway = gateway_object(report, &inner.config.version, &inner.config.node_name);
    let name = gateway.metadata.name.clone().unwrap_or_default();
    let ns = &inner.config.namespace;
    let api: Api<Raw<Gateway>> = Api::namespaced(inner.local.clone(), ns);
    let desired = serde_json::to_value(&gateway).map_err(|source| Error::Encode {
        what: "the Gateway status",
        source,
    })?;
    inner.gateway_state().name = Some(name.clone());

    // Create, or update status and timestamp on what is there (other annotations and labels
    // are kept, as Submariner's CreateOrUpdate mutation does). A conflict means someone wrote
    // in between: read again and retry, a few times.
    let mut result = Err(Error::Config {
        message: format!("Gateway {ns}/{name} kept changing while being written"),
    });
    for _attempt in 0..3 {
        let existing = api
            .get_opt(&name)
            .await
            .map_err(Error::kube(format!("reading Gateway {ns}/{name}")))?;
        let outcome = match existing {
            None => api
                .create(&PostParams::default(), &Raw::from_value(desired.clone()))
                .await
                .map(drop),
            Some(existing) => {
                let updated = crate::syncer::updated_object(&existing.value, &desired);
                api.replace(&name, &PostParams::default(), &Raw::from_value(updated))
                    .await
                    .map(drop)
            }
        };
        match outcome {
            Ok(()) => {
                result = Ok(());
                break;
            }
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
                result = Err(Error::Kube {
                    action: format!("writing Gateway {ns}/{name}"),
                    source: kube::Error::Api(s),
                });
            }
            Err(source) => {
                return Err(Error::Kube {
                    action: format!("writing Gateway {ns}/{name}"),
                    source,
                })
            }
        }
    }
    result?;

    if report.role.is_leader() {
        delete_stale(inner, &name, unix_seconds(report.reported_at)).await?;
    }
    Ok(())
}

async fn delete_stale(inner: &Inner, own: &str, now: i64) -> Result<(), Error> {
    let ns = &inner.config.namespace;
    let api: Api<Raw<Gateway>> = Api::namespaced(inner.local.clone(), ns);
    let gateways = api
        .list(&ListParams::default())
        .await
        .map_err(Error::kube(format!("listing Gateways in {ns}")))?;
    for gateway in gateways.items {
        let name = gateway.name().to_owned();
        if name == own || name.is_empty() || !is_stale(&gateway.value, now) {
            continue;
        }
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {
                tracing::warn!(gateway = %name, "deleted a stale Gateway (not refreshed for 15 s)")
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                tracing::warn!(gateway = %name, error = %crate::error_chain(&e), "deleting a stale Gateway failed")
            }
        }
    }
    Ok(())
}

/// Deletes this gateway's own Gateway object (at shutdown). Errors are logged: there is
/// nothing left to retry with, and the active gateway removes it once stale anyway.
pub(crate) async fn remove_own(inner: &Inner) {
    let name = inner
        .gateway_state()
        .name
        .clone()
        .unwrap_or_else(|| wgcable_api::ensure_valid_name(&inner.config.node_name));
    let api: Api<Raw<Gateway>> = Api::namespaced(inner.local.clone(), &inner.config.namespace);
    match crate::syncer::delete_if_present(&api, &name).await {
        Ok(()) => tracing::info!(gateway = %name, "deleted this gateway's Gateway object"),
        Err(e) => {
            tracing::warn!(gateway = %name, error = %crate::error_chain(&e), "deleting this gateway's Gateway object failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn staleness_is_submariners() {
        let at = |t: &str| json!({"metadata": {"annotations": {"update-timestamp": t}}});
        assert!(!is_stale(&at("1000"), 1000));
        assert!(!is_stale(&at("1000"), 1014));
        assert!(is_stale(&at("1000"), 1015));
        assert!(is_stale(&at("not-a-number"), 1000));
        assert!(is_stale(&json!({"metadata": {}}), 1000));
        // A timestamp from the future (another node's clock ahead) is not stale.
        assert!(!is_stale(&at("2000"), 1000));
    }
}
