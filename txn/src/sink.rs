//! Where a check goes: a producer's TCP connection (RocketMQ's CHECK_TRANSACTION_STATE), or,
//! for producers that cannot take an inbound request, a sink the HTTP facade provides.
//!
//! Routing, first match wins:
//! 0. the half message's own [`PROP_CHECK_URL`] → the URL sink, with that URL (a producer
//!    over HTTP names where its checks go per message; kept in the half message, so it
//!    survives a restart), when the sink accepts that URL ([`CheckSink::accepts`]: the
//!    operator's allowed hosts); a URL it refuses is ignored;
//! 1. a sink registered for the group ([`crate::TxnService::set_check_sink`]);
//! 2. the group's `check_url` → the URL sink ([`crate::TxnService::set_url_sink`]); the
//!    [`PendingCheck`] carries the URL;
//! 3. `pull_checks` → a bounded per-group queue that [`crate::TxnService::pull_checks`] drains;
//! 4. a live producer connection of the group, round-robin, skipping closed or full ones.
//!
//! A check nobody could take is not counted against `check_max`: it is tried again one
//! `check_interval` later, and its group gets no more checks in that tick (see
//! `Core::run_checks`).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use sluice_broker::ConnectionHandle;
use sluice_protocol::message::offset_msg_id;
use sluice_protocol::remoting::custom::CheckTransactionStateRequestHeader;
use sluice_protocol::{request_code, RemotingCommand};

use crate::records::HalfRecord;
use crate::table::Entry;

/// Property of a half message naming the URL its checks go to (through the URL sink). Set by
/// the HTTP facade; removed from the committed message, so consumers never see it.
pub const PROP_CHECK_URL: &str = "SLUICE_CHECK_URL";

/// A check handed to a sink or a puller: everything needed to ask the producer's application
/// about the transaction and to answer it ([`crate::TxnService::resolve`] with
/// [`PendingCheck::reference`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCheck {
    /// Producer group.
    pub producer_group: String,
    /// Transaction id (UNIQ_KEY).
    pub transaction_id: String,
    /// Identity: the half message's queue offset.
    pub half_offset: u64,
    /// Identity: the half message's commit-log offset.
    pub commit_log_offset: u64,
    /// The real topic.
    pub topic: String,
    /// The real queue.
    pub queue_id: i32,
    /// `KEYS`.
    pub keys: String,
    /// `TAGS`.
    pub tags: String,
    /// The stored body (compressed when sysFlag bit 0 was set by the producer).
    pub body: Bytes,
    /// The stored properties.
    pub properties: Vec<(String, String)>,
    /// Producer timestamp, epoch ms.
    pub born_ms: i64,
    /// When the half message was stored, epoch ms.
    pub stored_ms: i64,
    /// This check's number (1 = first).
    pub check_count: u32,
    /// Where the URL sink sends this check: the half message's [`PROP_CHECK_URL`], else the
    /// group's `check_url`.
    pub url: Option<String>,
}

impl PendingCheck {
    /// The reference to answer this check with.
    pub fn reference(&self) -> crate::TxnRef {
        crate::TxnRef {
            producer_group: self.producer_group.clone(),
            half_offset: self.half_offset,
            commit_log_offset: self.commit_log_offset,
            transaction_id: Some(self.transaction_id.clone()),
            msg_id: None,
        }
    }

    pub(crate) fn new(e: &Entry, half: &HalfRecord, checks: u32, url: Option<String>) -> Self {
        Self {
            producer_group: e.group.clone(),
            transaction_id: e.uniq.clone(),
            half_offset: e.id.half_offset,
            commit_log_offset: e.id.commit_log_offset,
            topic: e.topic.clone(),
            queue_id: e.queue_id,
            keys: e.keys.clone(),
            tags: e.tags.clone(),
            body: half.body.clone(),
            properties: half
                .props
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            born_ms: e.born_ms,
            stored_ms: e.stored_ms,
            check_count: checks,
            url,
        }
    }
}

/// Takes checks for producers that are not reached over TCP. Implemented by the HTTP facade
/// (a webhook caller, a long-poll endpoint).
pub trait CheckSink: Send + Sync + 'static {
    /// Name for logs.
    fn name(&self) -> &'static str;

    /// Whether this sink may call the URL a half message names for itself
    /// ([`PROP_CHECK_URL`]). A URL sink refuses hosts its operator did not allow, so a
    /// producer cannot point the broker at an address of its choosing; a refused URL is
    /// ignored and the check takes the group's route. Group sinks never see message URLs.
    fn accepts(&self, message_url: &str) -> bool {
        let _ = message_url;
        true
    }

    /// Hands a check over without blocking (queue it). An error means "not delivered": the
    /// check is not counted and is tried again one interval later.
    fn deliver(&self, check: PendingCheck) -> Result<(), String>;
}

/// How one check will travel.
#[derive(Clone)]
pub(crate) enum Route {
    /// To a sink (group sink or URL sink), with the URL when there is one.
    Sink(Arc<dyn CheckSink>, Option<String>),
    /// Into the group's pull queue.
    Pull,
    /// Over one of these producer connections.
    Tcp(Vec<ConnectionHandle>),
    /// Nobody to ask.
    Nowhere,
}

/// CHECK_TRANSACTION_STATE for one transaction, as C++ and Java producers expect: every
/// offset present as a decimal string, `transactionId` and `msgId` = UNIQ_KEY, the identity's
/// offsets (the producer echoes them in its END_TRANSACTION), body = the half message in its
/// real topic and queue.
pub(crate) fn check_command(
    e: &Entry,
    half: &HalfRecord,
    checks: u32,
    store_host: SocketAddr,
    broker_name: &str,
) -> RemotingCommand {
    let header = CheckTransactionStateRequestHeader {
        topic: Some(e.topic.clone()),
        tran_state_table_offset: i64::try_from(e.id.half_offset).unwrap_or(i64::MAX),
        commit_log_offset: i64::try_from(e.id.commit_log_offset).unwrap_or(i64::MAX),
        msg_id: Some(e.uniq.clone()),
        transaction_id: Some(e.uniq.clone()),
        offset_msg_id: Some(offset_msg_id(store_host, e.id.commit_log_offset)),
        broker_name: Some(broker_name.to_owned()),
    };
    RemotingCommand::request(request_code::CHECK_TRANSACTION_STATE, header.to_ext())
        .with_body(half.check_body(e.id, checks))
}

/// Sends `cmd` one-way over the first connection that takes it, starting at `start` and going
/// round; closed connections and full write queues are skipped (never waited on: this runs
/// under the table lock so no decision can slip in between). Returns the peer that took it.
pub(crate) fn send_round_robin(
    conns: &[ConnectionHandle],
    start: usize,
    cmd: &RemotingCommand,
) -> Option<SocketAddr> {
    let n = conns.len();
    for i in 0..n {
        let conn = &conns[(start + i) % n];
        if conn.is_closed() {
            continue;
        }
        match conn.try_invoke_oneway(cmd.clone()) {
            Ok(()) => return Some(conn.remote_addr()),
            Err(e) => {
                tracing::debug!(remote = %conn.remote_addr(), error = %e, "check not taken by this producer connection; trying the next");
            }
        }
    }
    None
}
