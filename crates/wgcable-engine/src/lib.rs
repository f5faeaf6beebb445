//! The WireGuard cable driver and the gateway that runs it.
//!
//! This is the thin layer that composes the others: keys (`wgcable-keys`), the Submariner data
//! model (`wgcable-api`), links/routes/rules (`wgcable-netlink`), the WireGuard device and peer
//! planning (`wgcable-peers`) and metrics (`wgcable-metrics`).
//!
//! - [`CableDriver`] is Submariner's driver contract; [`WireGuardDriver`] implements it by
//!   reconciliation (see [`driver`]).
//! - [`EndpointSource`] is where remote Endpoints come from; [`FileBroker`] is the embedded one.
//! - [`gateway::run`] is the long-running loop of `wgcable gateway`.
//!
//! Only this crate and the binary spawn long-running tasks. It knows nothing of the netlink
//! wire format or of the WireGuard control protocols: those stay behind the `Netlink` and
//! `WgDevice` seams, which is also what lets its tests run without root.

pub mod config;
pub mod driver;
mod error;
pub mod gateway;
pub mod health;
pub mod host;
pub mod snat;

pub use config::DriverConfig;
pub use driver::{CableDriver, ReconcileReport, Remote, RemoteChange, Trigger, WireGuardDriver};
pub use error::{chain, Error};
pub use gateway::{Gateway, GatewayBuilder, GatewayConfig};
pub use health::{HealthChecker, HealthKey, HealthStatus, HealthTarget};
