//! Policy sync inside Envoy. The poller (a bootstrap singleton, or the lease holder among the
//! filter VMs) fetches signed snapshots and publishes verified ones to shared data; every filter
//! VM follows the published snapshot on its ticks; the lease decides which filter VM polls.
//! Usage reports go the other way (`usage_reporter`). Host-agnostic, tested with the fake host.

mod follower;
mod lease;
mod poller;

pub use follower::{Followed, PolicyFollower};
pub use lease::claim_instance_number;
pub use poller::SnapshotPoller;

#[cfg(test)]
mod tests;
