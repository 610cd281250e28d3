//! The demo's broker: the shared embedded (or external) Sluice of `example-support`, with
//! this demo's retry policy for its consumer group: a short back-off ladder and a small
//! maximum, so poison payments reach `%DLQ%<group>` in seconds. An external Sluice keeps its
//! own retry configuration.

use std::time::Duration;

use sluice_broker::{Backoff, GroupRetryPolicy};

pub use example_support::cluster::{Cluster, Embedded};

/// Deliveries after the first before a payment is given up (`%DLQ%<group>`): a poison
/// payment is delivered `MAX_RECONSUME + 1` times.
pub const MAX_RECONSUME: i32 = 3;

/// The back-off before retry 1, 2, 3: short, so the demo takes seconds (production ladders
/// are minutes to hours; the mechanism is the same).
pub fn retry_ladder() -> Vec<Duration> {
    [250, 500, 1000].map(Duration::from_millis).to_vec()
}

/// The shared Sluice with `group`'s retry policy: [`retry_ladder`] and [`MAX_RECONSUME`].
pub async fn start(group: &str) -> anyhow::Result<Cluster> {
    Cluster::from_env(|cfg| {
        cfg.retry.groups.insert(
            group.to_owned(),
            GroupRetryPolicy {
                max_reconsume_times: MAX_RECONSUME,
                client_max_wins: true,
                backoff: Backoff::Ladder(retry_ladder()),
            },
        );
    })
    .await
}
