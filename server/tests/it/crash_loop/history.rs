//! The recorded history of a crash loop: what the driver sent, what the broker acknowledged,
//! what consumers saw, and the committed offsets read after each restart. Every event is
//! stamped twice: a monotonic clock (for "happened before" between the driver's own events)
//! and the wall clock (the broker's due times and store timestamps are wall-clock).

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Topic for plain sync sends (RocketMQ protocol and HTTP).
pub const PLAIN: &str = "LoopPlain";
/// Topic for transactional sends.
pub const TXN: &str = "LoopTxn";
/// Topic for delayed messages.
pub const TIMER: &str = "LoopTimer";
/// Every topic the consumers read.
pub const TOPICS: [&str; 3] = [PLAIN, TXN, TIMER];

/// What kind of message a key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// A plain message, visible as soon as it is stored.
    Plain,
    /// A delayed message; `due_ms` is a lower bound of its due time (wall clock, epoch ms).
    Timer { due_ms: i64 },
    /// A transactional message and what its producer means to decide.
    Txn { commit: bool },
}

impl Class {
    /// The topic messages of this class go to.
    pub fn topic(&self) -> &'static str {
        match self {
            Class::Plain => PLAIN,
            Class::Timer { .. } => TIMER,
            Class::Txn { .. } => TXN,
        }
    }
}

/// How a request reached the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// RocketMQ remoting (sluice-client).
    Tcp,
    /// The HTTP facade.
    Http,
}

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ev {
    /// A send is about to go out (recorded before the request).
    Sent { key: String, class: Class, via: Via },
    /// The broker acknowledged the send (SEND_OK / 201; for a transaction: the half message).
    Acked { key: String },
    /// The send got no answer or an error: indeterminate, it may or may not exist.
    SendFailed { key: String, why: String },
    /// A transaction decision is about to go out (explicit, answer to a check, or final phase).
    TxnDecision { key: String, commit: bool },
    /// The broker's answer to a decision: `committed`, `rolled_back`, `conflict`, `not_found`…
    TxnAnswer { key: String, answer: String },
    /// A cancel by key is about to go out.
    CancelSent { key: String },
    /// The definite answer to a cancel: `cancelled`, `already_delivered`, `not_found`.
    CancelAnswer { key: String, answer: String },
    /// A consumer group was handed a message.
    Consumed(Consumed),
    /// A group's committed offset, read right after a (re)start.
    Offset(OffsetSnapshot),
    /// The pull consumer's commit of `offset` on a queue was answered.
    OffsetCommitted {
        group: String,
        topic: String,
        queue: i32,
        offset: i64,
    },
    /// The broker (re)started; `clean` when the previous run ended with SIGTERM.
    Started { cycle: usize, clean: bool },
    /// SIGKILL.
    Killed { cycle: usize },
}

/// A delivery to a consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    pub group: String,
    pub topic: String,
    pub key: String,
    pub queue: i32,
    pub offset: i64,
    /// The broker's store timestamp, when the protocol shows it (RocketMQ pull).
    pub store_ms: Option<i64>,
    /// The body is byte-identical to the one sent.
    pub intact: bool,
}

/// A committed offset read after a start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetSnapshot {
    pub cycle: usize,
    pub clean: bool,
    pub group: String,
    pub topic: String,
    pub queue: i32,
    pub committed: i64,
}

/// An event with its time stamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Microseconds since the history began (monotonic).
    pub at_us: u64,
    /// Wall clock, epoch ms.
    pub wall_ms: i64,
    pub ev: Ev,
}

/// The shared, append-only history.
#[derive(Clone)]
pub struct History {
    origin: Instant,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Default for History {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            events: Arc::default(),
        }
    }
}

/// The wall clock in epoch ms.
pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

impl History {
    /// Appends `ev`, stamped now. Stamping under the lock keeps the order of the vector the
    /// order of the monotonic stamps.
    pub fn record(&self, ev: Ev) {
        let mut events = self.events.lock().unwrap();
        events.push(Event {
            at_us: self.origin.elapsed().as_micros() as u64,
            wall_ms: wall_ms(),
            ev,
        });
    }

    /// How many recorded events `which` accepts, counted under the lock (no copy: this is
    /// polled while the load tasks record).
    pub fn count(&self, which: impl Fn(&Ev) -> bool) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| which(&e.ev))
            .count()
    }

    /// A copy of everything so far.
    pub fn snapshot(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }
}

impl Ev {
    /// The message key the event is about, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            Ev::Sent { key, .. }
            | Ev::Acked { key }
            | Ev::SendFailed { key, .. }
            | Ev::TxnDecision { key, .. }
            | Ev::TxnAnswer { key, .. }
            | Ev::CancelSent { key }
            | Ev::CancelAnswer { key, .. } => Some(key),
            Ev::Consumed(c) => Some(&c.key),
            _ => None,
        }
    }
}

/// The events about `key`, with the starts and kills around them: what a failure report
/// shows next to a broken promise.
pub fn excerpt<'a>(events: &'a [Event], key: &str) -> Vec<&'a Event> {
    let first = events.iter().position(|e| e.ev.key() == Some(key));
    let last = events.iter().rposition(|e| e.ev.key() == Some(key));
    let (Some(first), Some(last)) = (first, last) else {
        return Vec::new();
    };
    events[first..=last]
        .iter()
        .filter(|e| {
            e.ev.key() == Some(key) || matches!(e.ev, Ev::Started { .. } | Ev::Killed { .. })
        })
        .collect()
}

/// The body sent with `key`: unique, and long enough that a torn copy would show.
pub fn body_for(key: &str) -> String {
    format!("{key}|").repeat(6)
}
