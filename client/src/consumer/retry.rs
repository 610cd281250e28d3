//! Handing a failed message back (`rocketmq-protocol.md` §8.2).
//!
//! First CONSUMER_SEND_MSG_BACK to the broker that stored it, so the broker's retry schedule
//! and dead-letter rule apply. If the broker refuses or cannot be reached, the client does
//! what RocketMQ clients do: it sends a copy itself to `%RETRY%<group>` with `RETRY_TOPIC`,
//! `ORIGIN_MESSAGE_ID`, `RECONSUME_TIME` and delay level `3 + reconsumeTimes`. Past the
//! maximum the copy goes there too, without a delay: its `RECONSUME_TIME` is over the maximum,
//! and the broker stores it in `%DLQ%<group>` (creating that topic, which a broker without
//! auto-creation would refuse to a client's own send). The copy keeps the `UNIQ_KEY`, so
//! [`crate::ConsumedMessage::msg_id`] is stable across deliveries, and the compression bits
//! of a body the client could not inflate, which it sends as it was stored.

use std::time::Duration;

use sluice_protocol::message::keys;
use sluice_protocol::message::record::sysflag;
use sluice_protocol::remoting::body::MessageQueue;
use sluice_protocol::remoting::custom::ConsumerSendMsgBackRequestHeader;
use sluice_protocol::{request_code, RemotingCommand};

use super::push::ConsumerInner;
use super::retry_topic;
use crate::error::ClientError;
use crate::message::{delay_level_for, ConsumedMessage, Message};
use crate::producer::{Outgoing, Target};

/// Bits 8-10 of a sysFlag: the body's compression type (zlib, LZ4, ZSTD).
const COMPRESSION_TYPE: i32 = 0x700;

/// Properties a retry copy must not carry over.
const NOT_COPIED: [&str; 5] = [
    keys::TRAN_MSG,
    keys::DELAY,
    keys::MIN_OFFSET,
    keys::MAX_OFFSET,
    keys::TIMER_DELIVER_MS,
];

impl ConsumerInner {
    /// Hands `msg` back for a later delivery; false when neither way worked.
    #[tracing::instrument(skip_all, fields(group = %self.group, msg_id = %msg.msg_id(), reconsume = msg.reconsume_times()))]
    pub(crate) async fn send_back(&self, msg: &ConsumedMessage, delay: Option<Duration>) -> bool {
        let level = delay.map_or(0, delay_level_for);
        match self.send_back_rpc(msg, level).await {
            Ok(()) => {
                tracing::debug!("message handed back to the broker");
                return true;
            }
            Err(e) => {
                tracing::debug!(error = %e, "send-back refused; sending the retry copy ourselves")
            }
        }
        let exceeded = msg.reconsume_times() >= self.s.max_reconsume_times;
        match self.send_copy(msg, level, exceeded).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "could not hand the message back; consuming it again here");
                false
            }
        }
    }

    /// Orderly mode past the maximum: straight to the dead-letter queue.
    pub(crate) async fn dead_letter(&self, msg: &ConsumedMessage) -> bool {
        if self.send_back_rpc(msg, -1).await.is_ok() {
            return true;
        }
        match self.send_copy(msg, 0, true).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(msg_id = %msg.msg_id(), error = %e, "could not dead-letter the message");
                false
            }
        }
    }

    async fn send_back_rpc(
        &self,
        msg: &ConsumedMessage,
        delay_level: i32,
    ) -> Result<(), ClientError> {
        let addr = self
            .core
            .master_addr(&msg.queue().broker_name)
            .unwrap_or_else(|_| msg.store_host().to_string());
        let header = ConsumerSendMsgBackRequestHeader {
            offset: msg.commit_log_offset(),
            group: self.group.clone(),
            delay_level,
            origin_msg_id: Some(msg.msg_id().to_owned()),
            origin_topic: Some(msg.topic().to_owned()),
            unit_mode: Some(false),
            max_reconsume_times: Some(self.s.max_reconsume_times),
        };
        let req = RemotingCommand::request(request_code::CONSUMER_SEND_MSG_BACK, header.to_ext());
        self.core
            .pool
            .invoke_ok(&addr, req, self.core.cfg.rpc_timeout)
            .await
            .map(drop)
    }

    /// Sends the retry (or dead-letter) copy to queue 0 of the retry (DLQ) topic on the broker
    /// the message came from: both topics have one queue, as RocketMQ creates them.
    async fn send_copy(
        &self,
        msg: &ConsumedMessage,
        level: i32,
        dead: bool,
    ) -> Result<(), ClientError> {
        let (copy, out) = retry_copy(&self.group, msg, level, dead, self.s.max_reconsume_times);
        let queue = MessageQueue {
            topic: copy,
            broker_name: msg.queue().broker_name.clone(),
            queue_id: 0,
        };
        let out = Outgoing {
            msg: self.retry_sender.prepare(out.msg)?,
            ..out
        };
        let r = self.retry_sender.send(&out, Target::Queue(&queue)).await?;
        tracing::debug!(topic = %queue.topic, offset = r.queue_offset, dead, "retry copy sent");
        Ok(())
    }
}

/// The copy RocketMQ's client fallback sends: same body, flag and properties (minus the ones
/// in [`NOT_COPIED`]), plus the retry bookkeeping. Returns the target topic and the message.
fn retry_copy(
    group: &str,
    msg: &ConsumedMessage,
    level: i32,
    dead: bool,
    max: i32,
) -> (String, Outgoing) {
    let topic = retry_topic(group);
    let mut copy = Message::new(topic.clone(), msg.body().clone()).with_flag(msg.flag());
    let props = copy.properties_mut();
    for (k, v) in msg.properties().iter() {
        if !NOT_COPIED.contains(&k) {
            props.insert(k, v);
        }
    }
    let times = msg.reconsume_times().saturating_add(1);
    if props.get(keys::RETRY_TOPIC).is_none() {
        props.insert(keys::RETRY_TOPIC, msg.topic());
    }
    if props.get(keys::ORIGIN_MESSAGE_ID).is_none() {
        props.insert(keys::ORIGIN_MESSAGE_ID, msg.msg_id());
    }
    // A message stored without one (its producer set none, and the broker added none) gets
    // as UNIQ_KEY the key an idempotent consumer knows it by (`DedupeKey::UniqKey`): its
    // ORIGIN_MESSAGE_ID when it is itself a retry copy, else its own id. The copy then keeps
    // that identity instead of getting a new one when it is sent. The copy's own id was used
    // before, so a second retry's fallback copy got a key the first copy's never had, and
    // was processed again beside the broker's copy of the same retry.
    if props.get(keys::UNIQ_KEY).is_none() {
        let key = msg
            .property(keys::ORIGIN_MESSAGE_ID)
            .unwrap_or(msg.msg_id())
            .to_owned();
        props.insert(keys::UNIQ_KEY, key);
    }
    props.insert(keys::RECONSUME_TIME, times.to_string());
    props.insert(keys::MAX_RECONSUME_TIMES, max.to_string());
    if !dead {
        let level = if level > 0 {
            level
        } else {
            3 + msg.reconsume_times()
        };
        props.insert(keys::DELAY, level.clamp(1, 18).to_string());
    }
    let out = Outgoing {
        msg: copy,
        sys_flag: msg.sys_flag() & (sysflag::COMPRESSED | COMPRESSION_TYPE),
        reconsume_times: Some(times),
        max_reconsume_times: Some(max),
    };
    (topic, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_copy_carries_rocketmq_bookkeeping() {
        let msg = ConsumedMessage::for_tests("Orders", "x")
            .with_property("UNIQ_KEY", "U1")
            .with_property("TAGS", "t")
            .with_property("TRAN_MSG", "true")
            .with_reconsume_times(2);
        let (topic, out) = retry_copy("g", &msg, 0, false, 16);
        assert_eq!(topic, "%RETRY%g");
        let p = out.msg.properties();
        assert_eq!(p.get("RETRY_TOPIC"), Some("Orders"));
        assert_eq!(p.get("ORIGIN_MESSAGE_ID"), Some("U1"));
        assert_eq!(p.get("UNIQ_KEY"), Some("U1"));
        assert_eq!(p.get("RECONSUME_TIME"), Some("3"));
        assert_eq!(p.get("DELAY"), Some("5"), "3 + reconsumeTimes");
        assert_eq!(p.get("TAGS"), Some("t"));
        assert_eq!(p.get("TRAN_MSG"), None);
        assert_eq!(
            (out.reconsume_times, out.max_reconsume_times),
            (Some(3), Some(16))
        );
    }

    #[test]
    fn a_dead_letter_copy_has_no_delay_and_keeps_the_original_topic() {
        let msg = ConsumedMessage::for_tests("%RETRY%g", "x")
            .with_property("RETRY_TOPIC", "Orders")
            .with_property("ORIGIN_MESSAGE_ID", "FIRST");
        let (topic, out) = retry_copy("g", &msg, 4, true, 16);
        assert_eq!(topic, "%RETRY%g", "the broker moves it to %DLQ%g");
        assert_eq!(
            out.msg.property("UNIQ_KEY"),
            Some("FIRST"),
            "the identity an idempotent consumer knows it by is kept"
        );
        assert_eq!(
            out.msg.property("UNIQ_KEY").map(str::to_owned),
            crate::idempotent::DedupeKey::UniqKey.extract(&msg)
        );
        // A first delivery stored without UNIQ_KEY: its own id.
        let plain = ConsumedMessage::for_tests("Orders", "x");
        let (_, first) = retry_copy("g", &plain, 0, false, 16);
        assert_eq!(first.msg.property("UNIQ_KEY"), Some(plain.msg_id()));
        assert_eq!(
            first.msg.property("UNIQ_KEY").map(str::to_owned),
            crate::idempotent::DedupeKey::UniqKey.extract(&plain)
        );
        let p = out.msg.properties();
        assert_eq!(p.get("DELAY"), None);
        assert_eq!(p.get("RETRY_TOPIC"), Some("Orders"));
        assert_eq!(p.get("ORIGIN_MESSAGE_ID"), Some("FIRST"));
        let (_, explicit) = retry_copy("g", &msg, 4, false, 16);
        assert_eq!(explicit.msg.property("DELAY"), Some("4"));
    }

    /// Past the maximum the copy goes to the retry topic with a count over the maximum (the
    /// broker dead-letters it), and a body left compressed keeps its compression bits.
    #[test]
    fn a_dead_copy_counts_past_the_maximum_and_a_compressed_body_keeps_its_flag() {
        let msg = ConsumedMessage::for_tests("%RETRY%g", "x")
            .with_property("RETRY_TOPIC", "Orders")
            .with_reconsume_times(16)
            .with_sys_flag(sysflag::COMPRESSED | 0x100 | sysflag::MULTI_TAGS);
        let (topic, out) = retry_copy("g", &msg, 0, true, 16);
        assert_eq!(topic, "%RETRY%g");
        assert_eq!(out.reconsume_times, Some(17));
        assert_eq!(out.msg.property("RECONSUME_TIME"), Some("17"));
        assert_eq!(
            out.sys_flag,
            sysflag::COMPRESSED | 0x100,
            "LZ4 body sent as stored"
        );
        let plain = ConsumedMessage::for_tests("Orders", "x");
        assert_eq!(retry_copy("g", &plain, 0, false, 16).1.sys_flag, 0);
    }
}
