//! The put hook that turns a transactional send into a half message (§5.2 "prepare").
//!
//! A message is a half message when its sysFlag says PREPARED or it carries `TRAN_MSG=true`
//! (and is not a COMMIT). A producer's send typed COMMIT is stored as RocketMQ stores it, as a
//! visible message; its prepared offset is 0, so recovery's search for torn commits (which
//! matches a commit record to its half by that offset) can mistake it only for the commit of
//! a half stored at commit-log offset 0. It is
//! rewritten to `RMQ_SYS_TRANS_HALF_TOPIC`/0 with the transaction bits cleared (so it is
//! dispatched to that queue only, never to its real topic), `REAL_TOPIC`, `REAL_QID`,
//! `__transactionId__` = UNIQ_KEY and `PGROUP` (from the header when the client left it out).
//! The broker answers with the original queue id, the half queue offset, the half record's
//! offset message id and the UNIQ_KEY as transaction id.
//!
//! `DELAY` and `TIMER_*` are kept (RocketMQ strips them): they apply after the commit, through
//! the commit hooks. The commit hooks also run here once on a trial copy (as a plain send of
//! the message, judged strictly), so a delay the schedule extension would refuse is refused at
//! send time, not shortened at commit time.
//!
//! Without this hook the broker keeps refusing prepared messages (NO_PERMISSION).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use sluice_broker::{HookOutcome, PendingMessage, PutContext, PutHook, Stored, TRANS_HALF_TOPIC};
use sluice_protocol::message::keys;
use sluice_protocol::message::record::sysflag;
use sluice_protocol::response_code as code;

use crate::extension::Shared;
use crate::fresh::Fresh;
use crate::metrics::Counters;
use crate::records::HalfRecord;

/// See the module docs. Get it from [`crate::TxnExtension::put_hook`].
pub struct TxnPutHook {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for TxnPutHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxnPutHook").finish_non_exhaustive()
    }
}

impl PutHook for TxnPutHook {
    fn name(&self) -> &'static str {
        "txn-half"
    }

    fn before_put(&self, ctx: &PutContext<'_>, msg: &mut PendingMessage) -> HookOutcome {
        if !msg.is_half() {
            return HookOutcome::Continue;
        }
        if ctx.batch {
            return reject(
                code::MESSAGE_ILLEGAL,
                "batch message does not support transaction",
            );
        }
        // Stored but not yet in the table count too (see `Unindexed`); sends in flight at
        // once can still pass the bound together, by at most their number.
        let live = self.shared.live.load(Ordering::Relaxed) + self.shared.unindexed.get();
        if live >= self.shared.cfg.max_open {
            return reject(
                code::SYSTEM_BUSY,
                format!(
                    "[REJECTREQUEST] {live} transactions are open, the limit is {}",
                    self.shared.cfg.max_open
                ),
            );
        }
        if let Some(refusal) = self.trial_commit(ctx, msg) {
            return refusal;
        }
        rewrite(ctx, msg);
        HookOutcome::Continue
    }

    /// Keeps a half message just stored for its END_TRANSACTION (see `fresh`), with the
    /// header a read of its record would return (the broker's own address included).
    fn after_put(&self, stored: &mut Stored<'_>) {
        if stored.msg.topic != TRANS_HALF_TOPIC {
            return;
        }
        // Counted once stored: a later hook or the store may still refuse a rewritten half.
        Counters::inc(&self.shared.counters.halves_stored);
        self.shared
            .unindexed
            .stored(u64::try_from(stored.at.queue_offset).unwrap_or(0));
        let budget = self.shared.cfg.fresh_half_bytes;
        if budget == 0 {
            return;
        }
        let Some(store_host) = self
            .shared
            .core
            .read()
            .as_ref()
            .map(|c| c.services.store().store_host())
        else {
            return;
        };
        let props = stored.take_properties();
        // Kept only when they are exactly what a read of the record decodes.
        if !props.round_trips() {
            return;
        }
        let fresh = Fresh {
            header: HalfRecord::stored_header(stored.msg, &stored.at, store_host),
            // A copy: the send's body is a slice of its connection's read buffer, which a
            // kept slice would hold whole.
            body: Bytes::copy_from_slice(&stored.msg.body),
            props_len: stored.msg.properties.len(),
            props,
        };
        self.shared.fresh.lock().keep(fresh, budget);
    }
}

impl TxnPutHook {
    /// Runs the commit hooks on the message as a plain send of it, now; their refusal refuses
    /// the send. Plain, not COMMIT: the schedule hook is lenient with committed messages (a
    /// delay past its maximum is shortened, a passed time releases at once, since a
    /// transaction may stay open a while), so a trial as a commit refused nothing, and a
    /// 60-day delay was accepted and then delivered after the 30-day maximum.
    fn trial_commit(&self, ctx: &PutContext<'_>, msg: &PendingMessage) -> Option<HookOutcome> {
        let hooks = self.shared.commit_hooks.read();
        if hooks.is_empty() {
            return None;
        }
        let mut trial = msg.clone();
        trial.input.sys_flag &= !sysflag::TRANSACTION_MASK;
        // With the properties the committed message will carry (the half's, less the check
        // URL), so a bound on their size refuses the send, not every commit: the half's
        // additions (~90 bytes and the topic) passed the trial and failed each commit, and
        // the transaction the producer committed ended discarded. TRAN_MSG's place is held
        // by a value of its length that does not mark a half (a half is not delayed yet).
        half_properties(ctx, &mut trial);
        trial.properties.remove(crate::sink::PROP_CHECK_URL);
        trial.properties.insert(keys::TRAN_MSG, "fals");
        for hook in hooks.iter() {
            if let r @ HookOutcome::Reject { .. } = hook.before_put(ctx, &mut trial) {
                return Some(r);
            }
        }
        None
    }
}

/// Properties only the broker writes (on carry-forward copies of half messages). A producer
/// setting them could make its half message pass for a copy of another transaction, whose
/// checks and commit would then carry this message's body, or move its age.
const BROKER_ONLY: [&str; 5] = [
    crate::records::PROP_ORIGIN_QUEUE_OFFSET,
    crate::records::PROP_ORIGIN_PHYS,
    crate::records::PROP_ORIGIN_STORE_MS,
    crate::records::PROP_PARKED,
    keys::TRANSACTION_CHECK_TIMES,
];

/// The half-message rewrite itself.
fn rewrite(ctx: &PutContext<'_>, msg: &mut PendingMessage) {
    half_properties(ctx, msg);
    msg.input.topic = TRANS_HALF_TOPIC.to_owned();
    msg.input.queue_id = 0;
    msg.input.sys_flag &= !sysflag::TRANSACTION_MASK;
}

/// The properties a half message is stored with (and its committed message keeps).
fn half_properties(ctx: &PutContext<'_>, msg: &mut PendingMessage) {
    let p = &mut msg.properties;
    for key in BROKER_ONLY {
        p.remove(key);
    }
    p.insert(keys::REAL_TOPIC, msg.input.topic.clone());
    p.insert(keys::REAL_QID, msg.input.queue_id.to_string());
    p.insert(keys::TRAN_MSG, "true");
    if let Some(uniq) = p.get(keys::UNIQ_KEY).map(str::to_owned) {
        p.insert(keys::TRANSACTION_ID, uniq);
    }
    if p.get(keys::PGROUP).is_none() && !ctx.producer_group.is_empty() {
        p.insert(keys::PGROUP, ctx.producer_group);
    }
}

fn reject(code: i32, remark: impl Into<String>) -> HookOutcome {
    HookOutcome::Reject {
        code,
        remark: remark.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::Properties;
    use sluice_store::MessageInput;

    fn ctx() -> PutContext<'static> {
        PutContext {
            producer_group: "pg",
            remote: std::net::SocketAddr::from(([127, 0, 0, 1], 5)),
            batch: false,
            max_reconsume_times: None,
        }
    }

    fn msg(sys_flag: i32, tran: Option<&str>) -> PendingMessage {
        let mut properties = Properties::new();
        properties.insert("UNIQ_KEY", "U1");
        properties.insert("DELAY", "3");
        if let Some(t) = tran {
            properties.insert("TRAN_MSG", t);
        }
        let mut input = MessageInput::new("Orders", 2, "b");
        input.sys_flag = sys_flag | sysflag::COMPRESSED;
        PendingMessage { input, properties }
    }

    #[test]
    fn half_messages_are_recognised_and_commits_are_not() {
        assert!(msg(sysflag::TRANSACTION_PREPARED, None).is_half());
        assert!(msg(0, Some("TRUE")).is_half());
        assert!(!msg(sysflag::TRANSACTION_COMMIT, Some("true")).is_half());
        assert!(!msg(0, Some("false")).is_half());
        assert!(!msg(0, None).is_half());
    }

    /// A consumer's retry resent as a plain send (clients before 4.6.1, when
    /// CONSUMER_SEND_MSG_BACK fails) copies `TRAN_MSG=true` from a committed message; its
    /// reconsume count with a delay level tells it from a half, as RocketMQ's broker does.
    #[test]
    fn a_retry_resent_with_a_reconsume_count_and_delay_is_not_a_half() {
        let mut resent = msg(sysflag::TRANSACTION_PREPARED, Some("true"));
        resent.input.topic = "%RETRY%g".into();
        resent.input.reconsume_times = 1;
        assert!(!resent.is_half());
        resent.properties.insert("DELAY", "0");
        assert!(resent.is_half(), "no delay level: a half");
        resent.properties.insert("DELAY", "3");
        resent.input.reconsume_times = 0;
        assert!(resent.is_half(), "no reconsume count: a half");
    }

    #[test]
    fn the_rewrite_parks_the_message_in_the_half_queue() {
        let mut m = msg(sysflag::TRANSACTION_PREPARED, Some("true"));
        rewrite(&ctx(), &mut m);
        assert_eq!(
            (m.input.topic.as_str(), m.input.queue_id),
            (TRANS_HALF_TOPIC, 0)
        );
        assert_eq!(
            m.input.sys_flag,
            sysflag::COMPRESSED,
            "transaction bits cleared, others kept"
        );
        let p = &m.properties;
        assert_eq!(p.get("REAL_TOPIC"), Some("Orders"));
        assert_eq!(p.get("REAL_QID"), Some("2"));
        assert_eq!(p.get("__transactionId__"), Some("U1"));
        assert_eq!(p.get("PGROUP"), Some("pg"));
        assert_eq!(p.get("DELAY"), Some("3"), "delay kept for after the commit");
    }

    #[test]
    fn a_producer_cannot_pass_its_half_message_off_as_a_carry_forward_copy() {
        let mut m = msg(sysflag::TRANSACTION_PREPARED, Some("true"));
        for (k, v) in [
            ("TRAN_PREPARED_QUEUE_OFFSET", "7"),
            ("TXN_ORIGIN_PHYS", "700"),
            ("TXN_ORIGIN_STORE_MS", "99999999999999"),
            ("TXN_PARKED", "true"),
            ("TRANSACTION_CHECK_TIMES", "14"),
        ] {
            m.properties.insert(k, v);
        }
        rewrite(&ctx(), &mut m);
        for k in BROKER_ONLY {
            assert_eq!(m.properties.get(k), None, "{k} is the broker's to write");
        }
        assert_eq!(m.properties.get("REAL_TOPIC"), Some("Orders"));
    }
}
