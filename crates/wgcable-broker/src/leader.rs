//! The leader-election seam for active/passive gateways.

use std::fmt;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt as _;

/// This gateway's role among the gateways of its cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Active: publishes the local Endpoint, drives the cable driver, runs the health checker.
    Leader,
    /// Passive: publishes nothing and changes nothing on the host; what is there stays (a
    /// data path that works is not torn down because a lease changed hands).
    Follower {
        /// The current leader's identity, when known.
        leader: Option<String>,
    },
}

impl Role {
    pub fn is_leader(&self) -> bool {
        matches!(self, Role::Leader)
    }

    /// Submariner's `haStatus`: `active` or `passive`.
    pub fn ha_status(&self) -> &'static str {
        match self {
            Role::Leader => "active",
            Role::Follower { .. } => "passive",
        }
    }
}

/// Decides which of a cluster's gateways leads.
#[async_trait]
pub trait LeaderElector: Send + Sync + fmt::Debug {
    /// Runs the election; yields the role whenever it changes, starting with the current one.
    /// Polling the stream is what keeps the election going (acquire, renew), so the gateway
    /// polls it on a task of its own, never behind a reconcile. Called once.
    fn roles(&self) -> BoxStream<'static, Role>;

    /// Gives leadership up at shutdown, so a standby can take over without waiting for the
    /// lease to expire.
    async fn release(&self) {}
}

/// The elector of a gateway that has no peers to elect among: always the leader.
#[derive(Clone, Copy, Debug, Default)]
pub struct AlwaysLeader;

#[async_trait]
impl LeaderElector for AlwaysLeader {
    fn roles(&self) -> BoxStream<'static, Role> {
        // Leader once, then a stream that never ends (ending would read as "election over").
        Box::pin(futures::stream::once(async { Role::Leader }).chain(futures::stream::pending()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn always_leader_leads_once_and_never_ends() {
        let mut roles = AlwaysLeader.roles();
        assert_eq!(roles.next().await, Some(Role::Leader));
        assert!(
            roles.next().now_or_never().is_none(),
            "the stream stays open"
        );
        assert_eq!(Role::Leader.ha_status(), "active");
        assert_eq!(Role::Follower { leader: None }.ha_status(), "passive");
    }
}
