//! The admission layer: the one place where what an endpoint source delivers (untrusted
//! bytes, see [`crate::RawObject`]) becomes the trusted, typed set of remote Endpoints the
//! engine acts on. The same for every source.
//!
//! Layers, in the order an object passes them:
//! 1. [`crate::debounce`] coalesces source events per object into batches;
//! 2. [`AdmissionRunner`] parses each changed object on the blocking pool, under a deadline
//!    and `wgcable_api::ParseLimits`, through [`ObjectParser::parse`] (the single call into
//!    the parser and the per-object policy), never quoting input in an error;
//! 3. [`Admission`] (pure: no I/O, `now` a parameter) applies the identity and conflict rules
//!    and returns what changed as an [`AdmissionUpdate`]: upserts of [`AdmittedEndpoint`]s,
//!    removals by cluster id, refusals with stable [`Reason`] codes, a republish request;
//! 4. the [`registry`] file in the state directory remembers each accepted cluster's object,
//!    key, subnets and seniority, so a restart reproduces every decision.
//!
//! The rules are written down in docs/security.md ("Admission", "Identity and conflicts").

mod config;
mod core;
mod index;
mod parse;
mod refusal;
pub mod registry;
mod runner;
mod warn;

#[cfg(test)]
mod tests;

pub use self::config::{AdmissionConfig, DebounceConfig, LocalIdentity};
pub use self::core::{
    Admission, AdmissionUpdate, AdmittedEndpoint, ClusterHolding, ConflictReport, Item, Prepared,
    RefusedObject, ToParse,
};
pub use self::parse::{Candidate, Fingerprint, ObjectParser};
pub use self::refusal::{Reason, Refusal};
pub use self::runner::{AdmissionRunner, AdmissionView};
pub use self::warn::Suppressed;
