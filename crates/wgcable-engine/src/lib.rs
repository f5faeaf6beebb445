//! The WireGuard cable driver and the gateway that runs it.
//!
//! This is the thin layer that composes the others: keys (`wgcable-keys`), the Submariner data
//! model (`wgcable-api`), links/routes/rules (`wgcable-netlink`), the WireGuard device and peer
//! planning (`wgcable-peers`), metrics (`wgcable-metrics`) and the broker seam with its
//! admission layer (`wgcable-broker`).
//!
//! - [`host`]: the host as a value: observe, [`host::plan_host`] (pure), [`host::apply`].
//! - [`CableDriver`] is Submariner's driver contract; [`WireGuardDriver`] implements it as
//!   "observe, plan, apply" (see [`driver`]).
//! - [`Gateway::builder`] assembles a gateway from an endpoint source, a leader elector, netlink
//!   and a device; [`gateway::run`] runs one with the defaults.
//!
//! Only this crate and the binary spawn long-running tasks. It knows nothing of the netlink
//! wire format, the WireGuard control protocols or any endpoint source's client library: those
//! stay behind the `Netlink`, `WgDevice` and `EndpointSource` seams, which is also what lets
//! its tests run without root.

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
