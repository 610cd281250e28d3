//! Transactional messages (`rocketmq-protocol.md` §5.1): [`TransactionProducer`] sends a half
//! message, runs the local transaction, and ends it with END_TRANSACTION; its
//! [`TransactionChecker`] answers the broker's CHECK_TRANSACTION_STATE for any transaction of
//! the group, which is how a producer that crashed after its local commit still gets its
//! message committed.

use std::fmt::Display;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use sluice_protocol::message::{decode_offset_msg_id, keys, sysflag};
use sluice_protocol::remoting::custom::{
    CheckTransactionStateRequestHeader, EndTransactionRequestHeader,
};
use sluice_protocol::{request_code, RemotingCommand};
use tokio::sync::{mpsc, Semaphore};

use crate::error::ClientError;
use crate::message::{decode_records, ConsumedMessage, Message};
use crate::net::ServerRequest;
use crate::producer::{Outgoing, ProducerBuilder, ProducerInner, SendResult, SendStatus, Target};

/// The outcome of a local transaction, or of a check.
///
/// ```
/// use sluice_client::TransactionState;
/// assert_eq!(TransactionState::Commit.wire_code(), 8);
/// assert_eq!(TransactionState::Rollback.wire_code(), 12);
/// assert_eq!(TransactionState::Unknown.wire_code(), 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransactionState {
    /// Make the message visible to consumers.
    Commit,
    /// Discard the message.
    Rollback,
    /// Not known yet: the broker asks again later (CHECK_TRANSACTION_STATE).
    Unknown,
}

impl TransactionState {
    /// The `commitOrRollback` value of END_TRANSACTION: 8, 12 or 0.
    pub fn wire_code(self) -> i32 {
        match self {
            Self::Commit => sysflag::TRANSACTION_COMMIT,
            Self::Rollback => sysflag::TRANSACTION_ROLLBACK,
            Self::Unknown => sysflag::TRANSACTION_NOT_TYPE,
        }
    }
}

/// What a local transaction or checker may return: a [`TransactionState`], or a `Result`
/// whose error counts as [`TransactionState::Unknown`] (the error text goes to the broker as
/// the END_TRANSACTION remark, as Java does).
///
/// ```
/// use sluice_client::{IntoTransactionState, TransactionState};
///
/// assert_eq!(TransactionState::Commit.into_state().0, TransactionState::Commit);
/// let failed: Result<TransactionState, String> = Err("db down".into());
/// assert_eq!(failed.into_state(), (TransactionState::Unknown, Some("db down".to_owned())));
/// ```
pub trait IntoTransactionState {
    /// The state, and a remark when it came from an error.
    fn into_state(self) -> (TransactionState, Option<String>);
}

impl IntoTransactionState for TransactionState {
    fn into_state(self) -> (TransactionState, Option<String>) {
        (self, None)
    }
}

impl<E: Display> IntoTransactionState for Result<TransactionState, E> {
    fn into_state(self) -> (TransactionState, Option<String>) {
        match self {
            Ok(s) => (s, None),
            Err(e) => (TransactionState::Unknown, Some(e.to_string())),
        }
    }
}

/// Answers the broker's question "what became of this transaction?". Any producer of the
/// group may be asked about any transaction of the group, so look the answer up in shared
/// state (the database the local transaction wrote), never in this process's memory.
///
/// Closures `Fn(ConsumedMessage) -> impl Future<Output = impl IntoTransactionState>` implement
/// it. A panic, an error or a check past its timeout counts as [`TransactionState::Unknown`]
/// (the broker asks again).
///
/// The answer must come from what the local transaction left durably, keyed by the
/// transaction id (a row written in that same transaction), never from the message alone:
///
/// ```
/// use sluice_client::{ConsumedMessage, TransactionChecker, TransactionState};
///
/// /// Your database's answer: `Some(true)` when the row written by the local transaction
/// /// exists, `Some(false)` when that transaction is known to have failed, `None` when it
/// /// may still be running.
/// async fn local_outcome(tx_id: &str) -> Option<bool> {
///     // SELECT ... FROM orders WHERE tx_id = $1
/// #   let _ = tx_id;
///     None
/// }
///
/// fn checker() -> impl TransactionChecker {
///     |msg: ConsumedMessage| async move {
///         let Some(tx_id) = msg.transaction_id() else {
///             return TransactionState::Unknown;
///         };
///         match local_outcome(tx_id).await {
///             Some(true) => TransactionState::Commit,
///             Some(false) => TransactionState::Rollback,
///             None => TransactionState::Unknown, // asked again later
///         }
///     }
/// }
/// # let _ = checker();
/// ```
pub trait TransactionChecker: Send + Sync + 'static {
    /// The state of the transaction of the half message `msg`.
    fn check(&self, msg: ConsumedMessage)
        -> BoxFuture<'static, (TransactionState, Option<String>)>;
}

impl<F, Fut, R> TransactionChecker for F
where
    F: Fn(ConsumedMessage) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoTransactionState,
{
    fn check(
        &self,
        msg: ConsumedMessage,
    ) -> BoxFuture<'static, (TransactionState, Option<String>)> {
        let fut = self(msg);
        async move { fut.await.into_state() }.boxed()
    }
}

/// What the local transaction is told about the half message it must match.
///
/// ```no_run
/// # async fn demo(p: &sluice_client::TransactionProducer) -> Result<(), sluice_client::ClientError> {
/// use sluice_client::{HalfMessage, Message, TransactionState};
/// p.send_in_transaction(Message::new("Orders", "o-1"), |half: HalfMessage| async move {
///     // INSERT INTO orders (id, tx_id) VALUES ('o-1', half.transaction_id) ...
///     println!("{} on {:?}", half.transaction_id, half.send.queue);
///     TransactionState::Commit
/// }).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct HalfMessage {
    /// The transaction id (the message's `UNIQ_KEY`): record it with the local transaction so
    /// the checker can find it.
    pub transaction_id: String,
    /// The half message's send result.
    pub send: SendResult,
    /// The message as sent.
    pub message: Message,
}

/// The outcome of [`TransactionProducer::send_in_transaction`].
///
/// ```no_run
/// # async fn demo(p: &sluice_client::TransactionProducer) -> Result<(), sluice_client::ClientError> {
/// use sluice_client::{Message, TransactionState};
/// let r = p.send_in_transaction(Message::new("Orders", "o-1"), |_| async { TransactionState::Unknown }).await?;
/// if r.state == TransactionState::Unknown {
///     println!("{} will be resolved by a check-back", r.send.msg_id);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct TransactionSendResult {
    /// The half message's send result.
    pub send: SendResult,
    /// What the local transaction decided (and END_TRANSACTION reported).
    pub state: TransactionState,
}

/// Settings of a [`TransactionProducer`].
///
/// ```no_run
/// # async fn demo() -> Result<(), sluice_client::ClientError> {
/// use sluice_client::{ClientConfig, ConsumedMessage, ProducerBuilder, TransactionProducerBuilder, TransactionState};
///
/// let producer = TransactionProducerBuilder::new(
///         ProducerBuilder::new(ClientConfig::new("127.0.0.1:9876")).group("orders-tx"),
///         |_msg: ConsumedMessage| async { TransactionState::Commit },
///     )
///     .check_concurrency(8)
///     .start()
///     .await?;
/// # let _ = producer; Ok(()) }
/// ```
pub struct TransactionProducerBuilder {
    base: ProducerBuilder,
    checker: Arc<dyn TransactionChecker>,
    check_concurrency: usize,
    check_timeout: Duration,
}

impl TransactionProducerBuilder {
    /// A transactional producer with `base`'s settings whose checks `checker` answers.
    pub fn new(base: ProducerBuilder, checker: impl TransactionChecker) -> Self {
        Self {
            base,
            checker: Arc::new(checker),
            check_concurrency: 4,
            check_timeout: Duration::from_secs(60),
        }
    }

    /// Checks answered at once (default 4); further checks wait, and past the request queue
    /// they are dropped (the broker asks again).
    #[must_use]
    pub fn check_concurrency(mut self, n: usize) -> Self {
        self.check_concurrency = n.max(1);
        self
    }

    /// Longest one check may take (default 60 s); past it the check is cancelled and
    /// answered Unknown, and the broker asks again later.
    #[must_use]
    pub fn check_timeout(mut self, timeout: Duration) -> Self {
        self.check_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Starts the producer and its check handler.
    pub async fn start(self) -> Result<TransactionProducer, ClientError> {
        let (inner, requests) = ProducerInner::start(&self.base).await?;
        let dispatcher = tokio::spawn(answer_checks(
            Arc::clone(&inner),
            requests,
            self.checker,
            Arc::new(Semaphore::new(self.check_concurrency)),
            self.check_timeout,
        ));
        inner.tasks.lock().push(dispatcher);
        Ok(TransactionProducer { inner })
    }
}

/// Sends transactional messages and answers transaction checks for its group.
///
/// Several instances of one group share the checks: the broker asks whichever is connected.
///
/// ```no_run
/// # async fn demo() -> Result<(), sluice_client::ClientError> {
/// use sluice_client::{ClientConfig, ConsumedMessage, Message, ProducerBuilder, TransactionProducer, TransactionState};
///
/// let producer = TransactionProducer::builder(
///         ProducerBuilder::new(ClientConfig::new("127.0.0.1:9876")).group("orders-tx"),
///         |_msg: ConsumedMessage| async { TransactionState::Commit },
///     )
///     .start()
///     .await?;
/// let r = producer
///     .send_in_transaction(Message::new("Orders", "created"), |half| async move {
///         // insert the order together with half.transaction_id, then:
///         Ok::<_, std::io::Error>(TransactionState::Commit)
///     })
///     .await?;
/// assert_eq!(r.state, TransactionState::Commit);
/// # Ok(()) }
/// ```
pub struct TransactionProducer {
    inner: Arc<ProducerInner>,
}

impl std::fmt::Debug for TransactionProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionProducer")
            .field("group", &self.inner.sender.group)
            .finish()
    }
}

impl TransactionProducer {
    /// A builder; see [`TransactionProducerBuilder`].
    pub fn builder(
        base: ProducerBuilder,
        checker: impl TransactionChecker,
    ) -> TransactionProducerBuilder {
        TransactionProducerBuilder::new(base, checker)
    }

    /// Sends `msg` as a half message, runs `local` (an async closure returning a
    /// [`TransactionState`] or a `Result` of one), and ends the transaction accordingly.
    ///
    /// An error or panic in `local` counts as [`TransactionState::Unknown`]: the broker then
    /// asks the group's checkers. A half message the broker stored with a flush or slave
    /// timeout is rolled back without running `local` (Java's rule). END_TRANSACTION is
    /// one-way: if it is lost, the check resolves the transaction.
    ///
    /// **Sluice-only:** a delay level or deliver-at time on `msg` is kept, and Sluice delivers
    /// the committed message at that time. Apache RocketMQ's own clients strip the delay level
    /// from transactional messages and its brokers do not honour it.
    #[tracing::instrument(skip_all, fields(topic = %msg.topic(), group = %self.inner.sender.group))]
    pub async fn send_in_transaction<F, Fut, R>(
        &self,
        msg: Message,
        local: F,
    ) -> Result<TransactionSendResult, ClientError>
    where
        F: FnOnce(HalfMessage) -> Fut,
        Fut: Future<Output = R>,
        R: IntoTransactionState,
    {
        if self.inner.is_stopped() {
            return Err(ClientError::Shutdown);
        }
        let sender = &self.inner.sender;
        let mut msg = sender.prepare(msg)?;
        msg.properties_mut().insert(keys::TRAN_MSG, "true");
        msg.properties_mut()
            .insert(keys::PGROUP, sender.group.clone());
        let out = Outgoing {
            msg: msg.clone(),
            sys_flag: sysflag::TRANSACTION_PREPARED,
            reconsume_times: None,
            max_reconsume_times: None,
        };
        let send = sender.send(&out, Target::Any).await?;
        let (state, remark) = if send.status == SendStatus::Ok {
            let half = HalfMessage {
                transaction_id: send
                    .transaction_id
                    .clone()
                    .unwrap_or_else(|| send.msg_id.clone()),
                send: send.clone(),
                message: msg,
            };
            run_local(local, half).await
        } else {
            (
                TransactionState::Rollback,
                Some(format!("half message stored with {:?}", send.status)),
            )
        };
        tracing::debug!(msg_id = %send.msg_id, ?state, "local transaction done");
        if let Err(e) = self.end(&send, state, remark).await {
            tracing::warn!(msg_id = %send.msg_id, error = %e, "END_TRANSACTION not sent; the broker's check will resolve it");
        }
        Ok(TransactionSendResult { send, state })
    }

    async fn end(
        &self,
        send: &SendResult,
        state: TransactionState,
        remark: Option<String>,
    ) -> Result<(), ClientError> {
        let sender = &self.inner.sender;
        let (_, commit_log_offset) = decode_offset_msg_id(&send.offset_msg_id).map_err(|e| {
            ClientError::protocol(
                &send.queue.broker_name,
                format!("offsetMsgId {:?}: {e}", send.offset_msg_id),
            )
        })?;
        let header = EndTransactionRequestHeader {
            topic: Some(send.queue.topic.clone()),
            producer_group: sender.group.clone(),
            tran_state_table_offset: send.queue_offset,
            commit_log_offset: commit_log_offset as i64,
            commit_or_rollback: state.wire_code(),
            from_transaction_check: Some(false),
            msg_id: send.msg_id.clone(),
            transaction_id: Some(
                send.transaction_id
                    .clone()
                    .unwrap_or_else(|| send.msg_id.clone()),
            ),
            broker_name: None,
        };
        let mut req = RemotingCommand::request(request_code::END_TRANSACTION, header.to_ext());
        req.remark = remark;
        let addr = sender.core.master_addr(&send.queue.broker_name)?;
        // Bounded: the local transaction is done and the caller waits for its result; an END
        // that cannot go out in time is left to the broker's check.
        let end = sender.core.pool.invoke_oneway(&addr, req);
        sender.bounded(&send.queue.topic, end).await
    }

    /// The id brokers know this client by.
    pub fn client_id(&self) -> &str {
        &self.inner.sender.core.client_id
    }

    /// Unregisters from the brokers and closes connections; checks stop being answered.
    pub async fn shutdown(self) {
        self.inner.shutdown().await;
    }
}

impl Drop for TransactionProducer {
    fn drop(&mut self) {
        // Stops the check handler too: a dropped producer answers nothing.
        self.inner.stop_now();
    }
}

/// Runs the local transaction; a panic counts as Unknown.
async fn run_local<F, Fut, R>(local: F, half: HalfMessage) -> (TransactionState, Option<String>)
where
    F: FnOnce(HalfMessage) -> Fut,
    Fut: Future<Output = R>,
    R: IntoTransactionState,
{
    let fut = match std::panic::catch_unwind(AssertUnwindSafe(|| local(half))) {
        Ok(fut) => fut,
        Err(_) => return panicked(),
    };
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(r) => r.into_state(),
        Err(_) => panicked(),
    }
}

fn panicked() -> (TransactionState, Option<String>) {
    tracing::warn!("local transaction panicked; reporting UNKNOWN");
    (
        TransactionState::Unknown,
        Some("local transaction panicked".into()),
    )
}

/// Answers CHECK_TRANSACTION_STATE requests until the producer stops.
async fn answer_checks(
    inner: Arc<ProducerInner>,
    mut requests: mpsc::Receiver<ServerRequest>,
    checker: Arc<dyn TransactionChecker>,
    permits: Arc<Semaphore>,
    timeout: Duration,
) {
    while let Some(req) = requests.recv().await {
        if req.cmd.code != request_code::CHECK_TRANSACTION_STATE {
            continue;
        }
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break;
        };
        let group = inner.sender.group.clone();
        let checker = Arc::clone(&checker);
        let credentials = inner.sender.core.cfg.credentials().cloned();
        tokio::spawn(async move {
            answer_check(&group, req, checker.as_ref(), credentials.as_ref(), timeout).await;
            drop(permit);
        });
    }
}

#[tracing::instrument(skip_all, fields(group, remote = %req.conn.remote_addr()))]
async fn answer_check(
    group: &str,
    req: ServerRequest,
    checker: &dyn TransactionChecker,
    credentials: Option<&sluice_protocol::acl::Credentials>,
    timeout: Duration,
) {
    let h = match CheckTransactionStateRequestHeader::from_ext(&req.cmd.ext_fields) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "unreadable CHECK_TRANSACTION_STATE header");
            return;
        }
    };
    let broker = h.broker_name.clone().unwrap_or_default();
    let Some(msg) = decode_records(&req.cmd.body, &broker)
        .messages
        .into_iter()
        .next()
    else {
        tracing::warn!("CHECK_TRANSACTION_STATE without a message body");
        return;
    };
    if let Some(pgroup) = msg.property(keys::PGROUP) {
        if pgroup != group {
            tracing::debug!(pgroup, "check for another producer group ignored");
            return;
        }
    }
    let (state, remark) = run_check(checker, msg.clone(), timeout).await;
    let end = check_answer(group, &h, &msg, state);
    tracing::debug!(msg_id = %end.msg_id, ?state, "answering a transaction check");
    let mut cmd = RemotingCommand::request(request_code::END_TRANSACTION, end.to_ext());
    cmd.remark = remark;
    if let Some(c) = credentials {
        c.sign(&mut cmd);
    }
    if let Err(e) = req.conn.invoke_oneway(cmd).await {
        tracing::warn!(error = %e, "could not answer a transaction check; the broker asks again");
    }
}

/// Runs the checker; a panic (while it builds its future or while the future runs) or a
/// check still running after `timeout` answers Unknown, so the broker asks again. Without the
/// bound, `check_concurrency` checks stuck on a stalled database would hold every permit,
/// and the checks queued behind them would be dropped until the broker gave up on them.
async fn run_check(
    checker: &dyn TransactionChecker,
    msg: ConsumedMessage,
    timeout: Duration,
) -> (TransactionState, Option<String>) {
    let unknown = |why: &str| (TransactionState::Unknown, Some(why.to_owned()));
    let fut = match std::panic::catch_unwind(AssertUnwindSafe(|| checker.check(msg))) {
        Ok(fut) => fut,
        Err(_) => return unknown("transaction checker panicked"),
    };
    match tokio::time::timeout(timeout, AssertUnwindSafe(fut).catch_unwind()).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => unknown("transaction checker panicked"),
        Err(_) => {
            tracing::warn!(
                ?timeout,
                "transaction check timed out (check_timeout); answering unknown"
            );
            unknown("transaction checker timed out")
        }
    }
}

/// END_TRANSACTION for a check: the check's offsets (those of the broker's re-put copy),
/// `fromTransactionCheck=true`, the message's `UNIQ_KEY` as msgId.
fn check_answer(
    group: &str,
    h: &CheckTransactionStateRequestHeader,
    msg: &ConsumedMessage,
    state: TransactionState,
) -> EndTransactionRequestHeader {
    let msg_id = msg
        .property(keys::UNIQ_KEY)
        .map(str::to_owned)
        .or_else(|| h.msg_id.clone())
        .unwrap_or_else(|| msg.msg_id().to_owned());
    EndTransactionRequestHeader {
        topic: Some(msg.topic().to_owned()),
        producer_group: group.to_owned(),
        tran_state_table_offset: h.tran_state_table_offset,
        commit_log_offset: h.commit_log_offset,
        commit_or_rollback: state.wire_code(),
        from_transaction_check: Some(true),
        msg_id: msg_id.clone(),
        transaction_id: h
            .transaction_id
            .clone()
            .or_else(|| msg.transaction_id().map(str::to_owned))
            .or(Some(msg_id)),
        broker_name: h.broker_name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_codes_are_rocketmq_transaction_types() {
        assert_eq!(TransactionState::Commit.wire_code(), 8);
        assert_eq!(TransactionState::Rollback.wire_code(), 12);
        assert_eq!(TransactionState::Unknown.wire_code(), 0);
    }

    #[tokio::test]
    async fn errors_and_panics_of_the_local_transaction_count_as_unknown() {
        let half = || HalfMessage {
            transaction_id: "T".into(),
            send: SendResult {
                status: SendStatus::Ok,
                msg_id: "T".into(),
                offset_msg_id: String::new(),
                queue: Default::default(),
                queue_offset: 0,
                transaction_id: None,
            },
            message: Message::new("T", "x"),
        };
        let ok = run_local(|_| async { TransactionState::Rollback }, half()).await;
        assert_eq!(ok, (TransactionState::Rollback, None));
        let err = run_local(|_| async { Err::<TransactionState, _>("boom") }, half()).await;
        assert_eq!(err, (TransactionState::Unknown, Some("boom".into())));
        let panic_in_future = run_local(
            |_| async {
                if true {
                    panic!("local transaction crashed");
                }
                TransactionState::Commit
            },
            half(),
        )
        .await;
        assert_eq!(panic_in_future.0, TransactionState::Unknown);
        let panic_in_call = run_local(
            |_| -> std::future::Ready<TransactionState> { panic!("before the future") },
            half(),
        )
        .await;
        assert_eq!(panic_in_call.0, TransactionState::Unknown);
    }

    /// A checker that panics before its future exists, panics inside it, or never finishes
    /// answers Unknown; the hung one is cancelled at the timeout instead of holding a permit.
    #[tokio::test(start_paused = true)]
    async fn a_failing_or_hung_checker_answers_unknown() {
        let msg = || ConsumedMessage::for_tests("T", "x");
        let t = Duration::from_secs(60);
        let ok = |_m: ConsumedMessage| async { TransactionState::Commit };
        assert_eq!(run_check(&ok, msg(), t).await.0, TransactionState::Commit);
        let early =
            |_m: ConsumedMessage| -> std::future::Ready<TransactionState> { panic!("no db") };
        assert_eq!(
            run_check(&early, msg(), t).await.0,
            TransactionState::Unknown
        );
        let late = |_m: ConsumedMessage| async {
            if true {
                panic!("query failed");
            }
            TransactionState::Commit
        };
        assert_eq!(
            run_check(&late, msg(), t).await.0,
            TransactionState::Unknown
        );
        let hung = |_m: ConsumedMessage| async {
            std::future::pending::<()>().await;
            TransactionState::Commit
        };
        let (state, remark) = run_check(&hung, msg(), t).await;
        assert_eq!(state, TransactionState::Unknown);
        assert!(remark.is_some_and(|r| r.contains("timed out")));
    }

    #[test]
    fn a_check_answer_echoes_the_checks_offsets() {
        let h = CheckTransactionStateRequestHeader {
            topic: Some("T".into()),
            tran_state_table_offset: 11,
            commit_log_offset: 8192,
            msg_id: Some("U".into()),
            transaction_id: Some("TX".into()),
            offset_msg_id: None,
            broker_name: None,
        };
        let msg = ConsumedMessage::for_tests("T", "x").with_property("UNIQ_KEY", "U");
        let end = check_answer("pg", &h, &msg, TransactionState::Commit);
        assert_eq!(
            (end.tran_state_table_offset, end.commit_log_offset),
            (11, 8192)
        );
        assert_eq!(end.commit_or_rollback, 8);
        assert_eq!(end.from_transaction_check, Some(true));
        assert_eq!(
            (end.msg_id.as_str(), end.transaction_id.as_deref()),
            ("U", Some("TX"))
        );
    }
}
