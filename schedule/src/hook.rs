//! The put hook: parks delayed messages in the schedule topics before they are stored, so the
//! producer's acknowledgement means the delayed message is durable. It is also the seam for
//! committed transactional messages: give it to `sluice_txn::TxnExtension::with_commit_hooks`
//! (a committed message arrives with sysFlag COMMIT in its real topic and is parked like a
//! produced one, leniently: a due time that passed while the transaction was open releases at
//! once instead of being refused).
//!
//! It only parses properties and rewrites fields (no locks held, no I/O), then wakes the
//! timer-queue reader.

use std::sync::Arc;

use sluice_broker::{HookOutcome, PendingMessage, PutContext, PutHook, Stored, TRANS_HALF_TOPIC};
use sluice_protocol::message::record::sysflag;
use sluice_protocol::response_code as code;
use sluice_store::now_ms;

use crate::props;
use crate::service::Shared;
use crate::stats::Counters;

/// See the module docs. Get it from [`crate::ScheduleExtension::put_hook`].
pub struct SchedulePutHook {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for SchedulePutHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulePutHook").finish_non_exhaustive()
    }
}

fn reject(code: i32, remark: impl Into<String>) -> HookOutcome {
    HookOutcome::Reject {
        code,
        remark: remark.into(),
    }
}

/// A half message waits for its transaction: its delay applies after commit (the rule is the
/// broker's, [`PendingMessage::is_half`]; after the transaction hook it is in the half topic).
fn is_half(msg: &PendingMessage) -> bool {
    msg.is_half() || msg.input.topic == TRANS_HALF_TOPIC
}

impl PutHook for SchedulePutHook {
    fn name(&self) -> &'static str {
        "schedule"
    }

    fn before_put(&self, ctx: &PutContext<'_>, msg: &mut PendingMessage) -> HookOutcome {
        if let Err(topic) = props::sanitize(msg) {
            let remark = format!("Sending message to topic[{topic}] is forbidden.");
            return reject(code::NO_PERMISSION, remark);
        }
        if is_half(msg) || !props::has_delay(&msg.properties) {
            return HookOutcome::Continue;
        }
        let committed =
            sysflag::transaction_type(msg.input.sys_flag) == sysflag::TRANSACTION_COMMIT;
        let plan = match props::plan(&msg.properties, now_ms(), &self.shared.cfg, committed) {
            Ok(p) => p,
            Err(remark) => return reject(code::MESSAGE_ILLEGAL, remark),
        };
        if plan == props::Plan::Immediate {
            return HookOutcome::Continue;
        }
        if ctx.batch {
            return reject(
                code::MESSAGE_ILLEGAL,
                "batch message does not support delay level or timer properties",
            );
        }
        match props::park(msg, plan) {
            Ok(due) => {
                tracing::trace!(topic = %msg.input.topic, queue_id = msg.input.queue_id, due_ms = ?due, "delayed message parked");
                self.shared.wake.wake();
                HookOutcome::Continue
            }
            Err(remark) => reject(code::MESSAGE_ILLEGAL, remark),
        }
    }

    /// Counts a parked message once it is stored: a later hook or the store may still refuse
    /// it, and a transaction's trial of its commit runs `before_put` without storing anything.
    fn after_put(&self, stored: &mut Stored<'_>) {
        let topic = stored.msg.topic.as_str();
        if topic == sluice_broker::SCHEDULE_TOPIC || topic == sluice_broker::TIMER_TOPIC {
            Counters::add(&self.shared.counters.parked, 1);
        }
    }
}
