//! Extension points for the crates that build on the broker.
//!
//! A [`PutHook`] sees every message a producer sends after the broker's checks and before it is
//! stored, and may rewrite or refuse it. That is how later crates add RocketMQ's put-time
//! behaviours without touching the send path:
//! - transactions: `TRAN_MSG=true` half messages go to `RMQ_SYS_TRANS_HALF_TOPIC`/0 with
//!   `REAL_TOPIC`/`REAL_QID`, transaction bits cleared (§5.2);
//! - delay levels: `DELAY` > 0 goes to `SCHEDULE_TOPIC_XXXX`/`level-1` (§6);
//! - timer messages: `TIMER_*` properties go to the timer topic (§7);
//! - retries: `%RETRY%` sends past the maximum go to `%DLQ%<group>` (§8).
//!
//! Without hooks, delay and timer properties are stored as plain, immediately visible messages,
//! and transactional (prepared) messages are refused with NO_PERMISSION, as Java does with
//! `rejectTransactionMessage=true`: storing them would make them invisible forever.

use std::net::SocketAddr;
use std::sync::Arc;

use sluice_protocol::Properties;
use sluice_store::{Appended, MessageInput};

/// A message on its way into the store. Hooks edit `input` (topic, queue, sysFlag) and
/// `properties`; the broker encodes `properties` into `input.properties` after the last hook.
#[derive(Debug, Clone)]
pub struct PendingMessage {
    /// What will be appended.
    pub input: MessageInput,
    /// Its properties, decoded.
    pub properties: Properties,
}

impl PendingMessage {
    /// Whether the producer sent this as a transaction's half message: the PREPARED sysFlag or
    /// `TRAN_MSG=true`, as RocketMQ's broker decides, with two exceptions:
    /// - the COMMIT sysFlag: a committed message keeps its half's properties;
    /// - a consumer's retry sent as a plain message (a reconsume count and a delay level in
    ///   one send): clients before 4.6.1 do so when CONSUMER_SEND_MSG_BACK fails, copying
    ///   every property of the message they retry, `TRAN_MSG=true` of a committed one
    ///   included. Taken for a half, that retry waited for a check of the original producer
    ///   group, and was lost when it answered rollback.
    pub fn is_half(&self) -> bool {
        use sluice_protocol::message::keys;
        use sluice_protocol::message::record::sysflag;
        let tx = sysflag::transaction_type(self.input.sys_flag);
        let marked = tx == sysflag::TRANSACTION_PREPARED
            || (tx != sysflag::TRANSACTION_COMMIT
                && self
                    .properties
                    .get(keys::TRAN_MSG)
                    .is_some_and(|v| v.eq_ignore_ascii_case("true")));
        let retry_resent = || {
            self.input.reconsume_times > 0
                && self
                    .properties
                    .get(keys::DELAY)
                    .and_then(|d| d.trim().parse::<i32>().ok())
                    .is_some_and(|level| level > 0)
        };
        marked && !retry_resent()
    }
}

/// Facts about the send a message came from.
#[derive(Debug, Clone, Copy)]
pub struct PutContext<'a> {
    /// Header `producerGroup`.
    pub producer_group: &'a str,
    /// The producer's address.
    pub remote: SocketAddr,
    /// True for SEND_BATCH_MESSAGE (batches may not be transactional or delayed).
    pub batch: bool,
    /// Header `maxReconsumeTimes`, for retry topics.
    pub max_reconsume_times: Option<i32>,
}

/// What a hook decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    /// Store the (possibly rewritten) message; later hooks still run.
    Continue,
    /// Answer the send with this code and remark; nothing is stored.
    Reject {
        /// Response code.
        code: i32,
        /// Remark for the client.
        remark: String,
    },
}

/// Intercepts messages before they are stored. Runs on the request's task: keep it quick and
/// never block (no store waits, no locks held across calls).
pub trait PutHook: Send + Sync + 'static {
    /// Name for logs.
    fn name(&self) -> &'static str;

    /// Inspects and possibly rewrites one message.
    fn before_put(&self, ctx: &PutContext<'_>, msg: &mut PendingMessage) -> HookOutcome;

    /// Sees each message of a send once the store accepted it, exactly as stored and where
    /// it went, before the producer is answered. The transaction hook keeps fresh half
    /// messages here, so the END_TRANSACTION that follows at once need not read its half back
    /// from the store and decode it again. Same rules as `before_put`.
    fn after_put(&self, _stored: &mut Stored<'_>) {}
}

/// A message a send stored, as [`PutHook::after_put`] sees it.
#[derive(Debug)]
pub struct Stored<'a> {
    /// Exactly what was appended (after every hook, properties encoded).
    pub msg: &'a MessageInput,
    /// Where it went.
    pub at: Appended,
    /// The send's own decoded properties, until a hook takes them.
    properties: Option<Properties>,
}

impl<'a> Stored<'a> {
    /// `msg` stored at `at`; `properties` are its decoded properties when the caller still
    /// has them.
    pub fn new(msg: &'a MessageInput, at: Appended, properties: Option<Properties>) -> Self {
        Self {
            msg,
            at,
            properties,
        }
    }

    /// The properties, decoded: the send's own decoded copy for the first hook that asks (no
    /// second decode, no copy), decoded again from `msg` for any later one.
    pub fn take_properties(&mut self) -> Properties {
        self.properties
            .take()
            .unwrap_or_else(|| Properties::decode(self.msg.properties.as_bytes()))
    }
}

/// What [`crate::Broker::start_with`] adds to a plain broker.
#[derive(Clone, Default)]
pub struct BrokerExtensions {
    /// Run in order on every produced message.
    pub put_hooks: Vec<Arc<dyn PutHook>>,
    /// Features that answer request codes and run background work.
    pub extensions: Vec<Arc<dyn crate::services::Extension>>,
    /// The store's file operations; `None` is the real thing. Tests put a fault layer here
    /// (`sluice_store::io::FaultyIo`) to fail syncs under a whole broker and its extensions.
    pub storage_io: Option<Arc<dyn sluice_store::io::StorageIo>>,
}

impl std::fmt::Debug for BrokerExtensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hooks: Vec<&str> = self.put_hooks.iter().map(|h| h.name()).collect();
        let exts: Vec<&str> = self.extensions.iter().map(|e| e.name()).collect();
        f.debug_struct("BrokerExtensions")
            .field("put_hooks", &hooks)
            .field("extensions", &exts)
            .field("storage_io", &self.storage_io.as_ref().map(|_| "custom"))
            .finish()
    }
}
