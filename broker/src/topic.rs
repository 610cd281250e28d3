//! Topic configurations (Java's `TopicConfigManager`): loaded from and saved to
//! `<data_dir>/config/topics.json`, created on first send from the `TBW102` template, created for
//! `%RETRY%<group>` on consumer heartbeat, and announced to name servers on every change.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use sluice_protocol::remoting::body::{
    encode_json, perm, DataVersion, TopicConfig, TopicConfigSerializeWrapper,
};
use sluice_protocol::response_code;
use sluice_store::now_ms;
use tokio::sync::Notify;

use crate::error::BrokerError;
use crate::state_file;

/// The auto-create template topic.
pub const DEFAULT_TOPIC: &str = "TBW102";
/// Delay-level messages wait here.
pub const SCHEDULE_TOPIC: &str = "SCHEDULE_TOPIC_XXXX";
/// Messages delayed to an arbitrary time (the schedule extension's timers) wait here.
pub const TIMER_TOPIC: &str = "SLUICE_SYS_TIMER";
/// Half (prepared) transactional messages.
pub const TRANS_HALF_TOPIC: &str = "RMQ_SYS_TRANS_HALF_TOPIC";
/// Commit/rollback markers of half messages.
pub const TRANS_OP_HALF_TOPIC: &str = "RMQ_SYS_TRANS_OP_HALF_TOPIC";
/// Half messages checked too often.
pub const TRANS_CHECK_MAX_TIME_TOPIC: &str = "TRANS_CHECK_MAX_TIME_TOPIC";
/// Prefix of retry topics.
pub const RETRY_PREFIX: &str = "%RETRY%";
/// Prefix of dead-letter topics.
pub const DLQ_PREFIX: &str = "%DLQ%";

/// Topics producers may not send to (`TopicValidator.isNotAllowedSendTopic`).
const NOT_SENDABLE: [&str; 6] = [
    SCHEDULE_TOPIC,
    TRANS_HALF_TOPIC,
    TRANS_OP_HALF_TOPIC,
    TRANS_CHECK_MAX_TIME_TOPIC,
    "SELF_TEST_TOPIC",
    "OFFSET_MOVED_EVENT",
];

/// Topics that hold messages no consumer may see yet: half messages (and their op log),
/// messages parked after too many checks, and delayed messages waiting for their time (RocketMQ
/// lets a client pull these; Sluice promises they are invisible until committed or due).
const NOT_CONSUMABLE: [&str; 5] = [
    SCHEDULE_TOPIC,
    TRANS_HALF_TOPIC,
    TRANS_OP_HALF_TOPIC,
    TRANS_CHECK_MAX_TIME_TOPIC,
    TIMER_TOPIC,
];

/// Most queues a topic may have; queue ids become folders, so this is a resource bound.
pub(crate) const MAX_QUEUE_NUMS: i32 = 4096;

/// A new topic refused: the table already holds the configured most (`max_topics`).
///
/// Any producer may auto-create topics and any consumer group gets a retry topic, and every
/// topic is held in memory, saved with the others, and sent to the name servers at every
/// registration; without a bound, a client inventing names would grow all three for good.
/// The broker's fixed system topics are always created, and so is the dead-letter topic of a
/// group whose retry topic exists: refusing it would leave that group's failed messages
/// nowhere to go. Any other name counts, whatever its prefix: a client could otherwise send
/// to invented `%DLQ%…` or `SLUICE_SYS_…` names without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the broker holds as many topics as [broker] max_topics allows ({0}) or more; delete unused topics or raise the limit")]
pub struct TopicLimit(pub usize);

/// The longest topic a stored record can name in the form 4.x clients decode (a 1-byte
/// length; longer ones take a 2-byte form they cannot read).
pub const MAX_DECODABLE_TOPIC: usize = 127;

/// Why a retry or dead-letter topic was not created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RetryTopicRefused {
    /// `max_topics` reached.
    #[error(transparent)]
    Limit(#[from] TopicLimit),
    /// Its name passes [`MAX_DECODABLE_TOPIC`]: the C++ client read such a retry topic's
    /// records (a consumer group of 121 bytes or more) as garbage, and acknowledged them.
    #[error(
        "{0} would be longer than {MAX_DECODABLE_TOPIC} bytes, and its records unreadable by \
         4.x clients: a consumer group name is at most 120 bytes here"
    )]
    TooLong(String),
    /// A topic of that name is being deleted (for a few milliseconds); ask again.
    #[error("{0} is being deleted; it can be created again once that is done")]
    Deleting(String),
}

/// A `%RETRY%` or `%DLQ%` topic.
pub(crate) fn is_retry_or_dlq(topic: &str) -> bool {
    topic.starts_with(RETRY_PREFIX) || topic.starts_with(DLQ_PREFIX)
}

/// Whether a retry or dead-letter topic of this name may be created (see
/// [`RetryTopicRefused::TooLong`]).
pub(crate) fn check_creatable_retry(topic: &str) -> Result<(), RetryTopicRefused> {
    if topic.len() > MAX_DECODABLE_TOPIC {
        return Err(RetryTopicRefused::TooLong(topic.to_owned()));
    }
    Ok(())
}

/// Why a topic operation was refused: a response code and its remark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicReject {
    pub(crate) code: i32,
    pub(crate) remark: String,
}

impl TopicReject {
    fn new(code: i32, remark: impl Into<String>) -> Self {
        Self {
            code,
            remark: remark.into(),
        }
    }
}

/// Checks a topic name as `TopicValidator` does: `[%|a-zA-Z0-9_-]`, at most 127 bytes (255 for
/// retry and dead-letter topics: existing ones stay readable; new ones are held to
/// [`MAX_DECODABLE_TOPIC`] where they are created, see [`RetryTopicRefused`]).
pub(crate) fn validate_name(topic: &str) -> Result<(), TopicReject> {
    let max = if is_retry_or_dlq(topic) { 255 } else { 127 };
    if topic.trim().is_empty() {
        return Err(TopicReject::new(
            response_code::INVALID_PARAMETER,
            "the topic is blank",
        ));
    }
    if topic.len() > max {
        return Err(TopicReject::new(
            response_code::INVALID_PARAMETER,
            format!("the topic is longer than {max} characters"),
        ));
    }
    let ok = topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'%' | b'|' | b'_' | b'-'));
    if !ok {
        return Err(TopicReject::new(
            response_code::INVALID_PARAMETER,
            format!(
                "the topic[{topic}] contains illegal characters, allowing only ^[%|a-zA-Z0-9_-]+$"
            ),
        ));
    }
    Ok(())
}

/// True for system topics producers may not send to.
pub(crate) fn is_not_sendable(topic: &str) -> bool {
    NOT_SENDABLE.contains(&topic)
}

/// True for system topics consumers may not pull.
pub(crate) fn is_not_consumable(topic: &str) -> bool {
    NOT_CONSUMABLE.contains(&topic)
}

/// True for the broker's own topics (schedule, transaction, timer, dead-letter and the other
/// system topics); retry topics and the default template are not among them.
pub(crate) fn is_broker_topic(topic: &str) -> bool {
    is_not_sendable(topic)
        || is_not_consumable(topic)
        || topic.starts_with(DLQ_PREFIX)
        || topic.starts_with("SLUICE_SYS_")
        || topic.starts_with("RMQ_SYS_")
}

/// The broker's own topics that only admin accounts may read by key or by id: half, op,
/// schedule, timer and system topics, whose records no pull serves. A dead-letter topic is
/// not among them: it takes its group's permission (`AclAccount::topic_perm`), so a member
/// of the group may read its dead letters however it names them.
pub(crate) fn is_admin_only(topic: &str) -> bool {
    is_broker_topic(topic) && !topic.starts_with(DLQ_PREFIX)
}

/// The broker's own fixed-name topics (schedule, timer, transactions, the auto-create
/// template).
fn is_fixed_system_topic(topic: &str) -> bool {
    is_not_sendable(topic) || is_not_consumable(topic) || topic == DEFAULT_TOPIC
}

/// The retry topic of a consumer group.
pub(crate) fn retry_topic(group: &str) -> String {
    format!("{RETRY_PREFIX}{group}")
}

#[derive(Debug, Default)]
struct Table {
    topics: BTreeMap<String, TopicConfig>,
    version: DataVersion,
}

impl Table {
    /// Whether `name` may be added: it exists already, it is one of the broker's own, or the
    /// table is below `max`.
    fn admits(&self, name: &str, max: usize) -> Result<(), TopicLimit> {
        if self.topics.len() < max || self.topics.contains_key(name) || is_fixed_system_topic(name)
        {
            return Ok(());
        }
        let known_group_dlq = name
            .strip_prefix(DLQ_PREFIX)
            .is_some_and(|group| self.topics.contains_key(&retry_topic(group)));
        if known_group_dlq {
            Ok(())
        } else {
            Err(TopicLimit(max))
        }
    }
}

/// Why [`TopicManager::put_if_absent`] added nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum NotAdded {
    /// A topic of that name exists; this is its config.
    Exists(TopicConfig),
    /// The table is full.
    Limit(TopicLimit),
    /// A topic of that name is being deleted (for a few milliseconds); ask again.
    Deleting,
}

/// The broker's topics. Every change bumps the data version, wakes the name-server registrar
/// (`changed`) and is saved on a blocking thread.
#[derive(Debug)]
pub(crate) struct TopicManager {
    path: PathBuf,
    table: RwLock<Table>,
    /// Serialises file writes so an older snapshot never overwrites a newer one; holds the
    /// data-version counter last written (`None` until the first write of this process, which
    /// also records the system topics added at load).
    write_lock: Mutex<Option<i64>>,
    /// Notified on every change; the registrar re-registers at once.
    pub(crate) changed: Arc<Notify>,
    /// Most topics the table holds (see [`TopicLimit`]).
    max_topics: usize,
    /// Topics being deleted, with their configuration: a send does not create them again
    /// until their stored messages are hidden, and `topics.json` keeps them until then (see
    /// [`Self::begin_delete`]).
    deleting: Mutex<std::collections::HashMap<String, TopicConfig>>,
}

/// A topic deletion under way: the topic is out of the table (routes, sends) but still in
/// `topics.json`, and sends do not create it again. [`Deleting::finish`] or
/// [`Deleting::undo`] ends it; dropped unfinished, it is undone.
pub(crate) struct Deleting {
    topics: Arc<TopicManager>,
    topic: String,
    done: bool,
}

impl Deleting {
    /// The topic's stored messages are hidden: it leaves `topics.json` too.
    pub(crate) fn finish(mut self) {
        self.done = true;
        self.topics.deleting.lock().remove(&self.topic);
        self.topics.bump_version();
        self.topics.announce_removal(&self.topic);
    }

    /// The deletion could not be completed: the topic is put back as it was (unless one of
    /// that name was created meanwhile, which then stands).
    pub(crate) fn undo(mut self) {
        self.put_back();
    }

    /// Back into the table before it leaves the deletion map, under that map's lock (the
    /// order `begin_delete` takes them), so no save in between writes a file without it. It
    /// was in the table before, so `max_topics` does not keep it out.
    fn put_back(&mut self) {
        self.done = true;
        let restored = {
            let mut deleting = self.topics.deleting.lock();
            let Some(cfg) = deleting.remove(&self.topic) else {
                return;
            };
            let mut t = self.topics.table.write();
            if t.topics.contains_key(&self.topic) {
                return;
            }
            insert(&mut t, cfg)
        };
        self.topics.announce(&restored);
    }
}

impl Drop for Deleting {
    fn drop(&mut self) {
        if !self.done {
            self.put_back();
        }
    }
}

impl TopicManager {
    /// Loads `topics.json` (if any) and adds the system topics.
    pub(crate) fn load(
        data_dir: &std::path::Path,
        auto_create: bool,
        default_queue_nums: u32,
    ) -> Result<Self, BrokerError> {
        let path = state_file::config_dir(data_dir).join("topics.json");
        let saved: Option<TopicConfigSerializeWrapper> = state_file::load(&path)?;
        let mut table = Table::default();
        if let Some(saved) = saved {
            table.topics = saved.topic_config_table;
            table.version = saved.data_version;
        }
        let queues = i32::try_from(default_queue_nums)
            .unwrap_or(8)
            .min(MAX_QUEUE_NUMS);
        let mut system = vec![
            TopicConfig::new(SCHEDULE_TOPIC, 18, perm::READ_WRITE),
            TopicConfig::new(TRANS_HALF_TOPIC, 1, perm::READ_WRITE),
            TopicConfig::new(TRANS_OP_HALF_TOPIC, 1, perm::READ_WRITE),
            TopicConfig::new(TRANS_CHECK_MAX_TIME_TOPIC, 1, perm::READ_WRITE),
        ];
        if auto_create {
            system.push(TopicConfig::new(
                DEFAULT_TOPIC,
                queues,
                perm::READ_WRITE | perm::INHERIT,
            ));
        }
        for cfg in system {
            table.topics.entry(cfg.topic_name.clone()).or_insert(cfg);
        }
        // The template's queue count is the configuration's, not the one saved when the
        // folder was made: a changed `default_topic_queue_nums` had no effect on a folder
        // that already existed.
        if let Some(t) = table.topics.get_mut(DEFAULT_TOPIC).filter(|_| auto_create) {
            if t.write_queue_nums != queues || t.read_queue_nums != queues {
                tracing::info!(
                    from = t.write_queue_nums,
                    to = queues,
                    "auto-created topics' queue count (default_topic_queue_nums) changed"
                );
                t.write_queue_nums = queues;
                t.read_queue_nums = queues;
            }
        }
        tracing::info!(path = %path.display(), topics = table.topics.len(), "topics loaded");
        Ok(Self {
            path,
            table: RwLock::new(table),
            write_lock: Mutex::new(None),
            changed: Arc::new(Notify::new()),
            max_topics: usize::MAX,
            deleting: Mutex::default(),
        })
    }

    /// Bounds the table at `max` topics (see [`TopicLimit`]). Topics loaded from disk stay
    /// even when there are more: lowering the limit refuses new topics, it removes none.
    pub(crate) fn with_max_topics(mut self, max: usize) -> Self {
        self.max_topics = max;
        self
    }

    /// The config of `topic`, if it exists.
    pub(crate) fn get(&self, topic: &str) -> Option<TopicConfig> {
        self.table.read().topics.get(topic).cloned()
    }

    /// Every consumer group's retry topic.
    pub(crate) fn retry_topics(&self) -> Vec<TopicConfig> {
        let t = self.table.read();
        t.topics
            .range::<str, _>((
                std::ops::Bound::Included(RETRY_PREFIX),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(name, _)| name.starts_with(RETRY_PREFIX))
            .map(|(_, cfg)| cfg.clone())
            .collect()
    }

    /// Creates or replaces a topic; false when nothing changed.
    pub(crate) fn put(self: &Arc<Self>, cfg: TopicConfig) -> Result<bool, TopicLimit> {
        let inserted = {
            let mut t = self.table.write();
            if t.topics.get(&cfg.topic_name) == Some(&cfg) {
                return Ok(false);
            }
            t.admits(&cfg.topic_name, self.max_topics)?;
            insert(&mut t, cfg)
        };
        self.announce(&inserted);
        Ok(true)
    }

    /// Adds `cfg` unless a topic of that name exists, in one step under the table lock:
    /// `Err` holds the existing one. Two creates racing with different shapes cannot both
    /// pass a check and the last silently win.
    pub(crate) fn put_if_absent(self: &Arc<Self>, cfg: TopicConfig) -> Result<(), NotAdded> {
        let inserted = {
            // Held across the insert (the order `begin_delete` takes them): a topic being
            // deleted is not created again until its stored messages are hidden.
            let deleting = self.deleting.lock();
            if deleting.contains_key(&cfg.topic_name) {
                return Err(NotAdded::Deleting);
            }
            let mut t = self.table.write();
            if let Some(existing) = t.topics.get(&cfg.topic_name) {
                return Err(NotAdded::Exists(existing.clone()));
            }
            t.admits(&cfg.topic_name, self.max_topics)
                .map_err(NotAdded::Limit)?;
            insert(&mut t, cfg)
        };
        self.announce(&inserted);
        Ok(())
    }

    /// After a change: logs it, wakes the registration loop, saves in the background.
    fn announce(self: &Arc<Self>, cfg: &TopicConfig) {
        tracing::info!(topic = %cfg.topic_name, read_queues = cfg.read_queue_nums, write_queues = cfg.write_queue_nums, perm = cfg.perm, "topic created or updated");
        self.changed.notify_one();
        self.save_in_background();
    }

    /// Starts deleting a topic: it leaves the table (routes, sends, listings) at once, stays in
    /// `topics.json` until [`Deleting::finish`] (a crash before its stored messages are hidden
    /// must not lose the topic and leave them to come back), and sends do not create it again
    /// meanwhile (a message sent to a topic created again in between would be hidden with the
    /// old ones). `Ok(None)`: no such topic; `Err(())`: another deletion of it is under way
    /// (and may yet fail and put the topic back).
    #[allow(clippy::result_unit_err)]
    pub(crate) fn begin_delete(
        self: &Arc<Self>,
        topic: &str,
    ) -> Result<Option<(Deleting, TopicConfig)>, ()> {
        // Marked under the same lock a send checks after missing the topic in the table.
        let mut deleting = self.deleting.lock();
        if deleting.contains_key(topic) {
            return Err(());
        }
        let Some(removed) = self.take(topic) else {
            return Ok(None);
        };
        deleting.insert(topic.to_string(), removed.clone());
        let guard = Deleting {
            topics: Arc::clone(self),
            topic: topic.to_string(),
            done: false,
        };
        Ok(Some((guard, removed)))
    }

    /// Removes a topic's configuration (persisted; name servers drop its route at the next
    /// registration). Its data stays until retention deletes the segments. Returns what was
    /// removed.
    pub(crate) fn remove(self: &Arc<Self>, topic: &str) -> Option<TopicConfig> {
        let removed = self.take(topic)?;
        self.announce_removal(topic);
        Some(removed)
    }

    /// Takes a topic out of the table, bumping the data version.
    fn take(&self, topic: &str) -> Option<TopicConfig> {
        let mut t = self.table.write();
        let removed = t.topics.remove(topic)?;
        bump(&mut t);
        Some(removed)
    }

    fn bump_version(&self) {
        bump(&mut self.table.write());
    }

    /// After a removal: logs it, wakes the registration loop, saves in the background.
    fn announce_removal(self: &Arc<Self>, topic: &str) {
        tracing::info!(topic, "topic deleted");
        self.changed.notify_one();
        self.save_in_background();
    }

    /// The topic a send names, creating it from `default_topic` when it is unknown and the
    /// template allows it (§2.2: queue count `min(d, template write queues)`, template perm minus
    /// INHERIT). A `%RETRY%` topic gets one read-write queue. A new topic past `max_topics`
    /// does not exist, and is answered as such, with the limit in the remark.
    pub(crate) fn get_or_create_for_send(
        self: &Arc<Self>,
        topic: &str,
        default_topic: &str,
        requested_queues: i32,
    ) -> Result<TopicConfig, TopicReject> {
        if let Some(cfg) = self.get(topic) {
            return Ok(cfg);
        }
        // A dead-letter topic made by a client's send (its own fallback when a send-back is
        // refused) has the one queue the broker's dead letters use: with the template's four,
        // dead-letter listings and replays, which read queue 0, missed three in four.
        if is_retry_or_dlq(topic) {
            return self
                .get_or_create_retry(topic)
                .map_err(|e| send_refused(topic, e));
        }
        let template = self
            .get(default_topic)
            .filter(|t| perm::is_inherited(t.perm));
        let Some(template) = template else {
            return Err(TopicReject::new(
                response_code::TOPIC_NOT_EXIST,
                format!("topic[{topic}] not exist, apply first please!"),
            ));
        };
        let queues = requested_queues.clamp(1, template.write_queue_nums.max(1));
        let cfg = TopicConfig::new(topic, queues, template.perm & !perm::INHERIT);
        // Two first sends racing with different queue counts: the first one's shape stays (a
        // replace could leave the other send's message in a queue the topic no longer has).
        self.get_or_add(cfg).map_err(|e| send_refused(topic, e))
    }

    /// `%RETRY%<group>`- or `%DLQ%<group>`-style topic with one read-write queue (RocketMQ
    /// >= 4.9.2 perm), created if missing.
    pub(crate) fn get_or_create_retry(
        self: &Arc<Self>,
        topic: &str,
    ) -> Result<TopicConfig, RetryTopicRefused> {
        match self.get(topic) {
            Some(cfg) => Ok(cfg),
            None => {
                check_creatable_retry(topic)?;
                Ok(self.get_or_add(TopicConfig::new(topic, 1, perm::READ_WRITE))?)
            }
        }
    }

    /// Adds `cfg` unless a topic of its name exists; returns the config in force. Refused
    /// past `max_topics` and while a topic of the name is being deleted.
    fn get_or_add(self: &Arc<Self>, cfg: TopicConfig) -> Result<TopicConfig, RetryTopicRefused> {
        let name = cfg.topic_name.clone();
        match self.put_if_absent(cfg.clone()) {
            Ok(()) => Ok(cfg),
            Err(NotAdded::Exists(existing)) => Ok(existing),
            Err(NotAdded::Limit(l)) => Err(RetryTopicRefused::Limit(l)),
            Err(NotAdded::Deleting) => Err(RetryTopicRefused::Deleting(name)),
        }
    }

    /// Every topic and the data version, as sent to name servers and saved to disk.
    pub(crate) fn snapshot(&self) -> TopicConfigSerializeWrapper {
        let t = self.table.read();
        TopicConfigSerializeWrapper {
            data_version: t.version,
            topic_config_table: t.topics.clone(),
        }
    }

    /// Writes `topics.json` on a blocking thread and waits for it: admin requests answer
    /// only once the change is on disk, so an acknowledged topic survives a crash.
    pub(crate) async fn save_durably(self: &Arc<Self>) -> Result<(), BrokerError> {
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || me.save())
            .await
            .map_err(|e| BrokerError::Task("saving topics", e.to_string()))?
    }

    /// Writes `topics.json` now, unless the file already holds this data version (every
    /// change bumps it under the table lock): a repeated admin request or a background save
    /// after a durable one costs no write and no fsync. Blocking.
    pub(crate) fn save(&self) -> Result<(), BrokerError> {
        let mut written = self.write_lock.lock();
        // Checked before the table is copied: the offset flush calls this every interval.
        if *written == Some(self.table.read().version.counter) {
            return Ok(());
        }
        let mut snapshot = self.snapshot();
        // Topics being deleted stay on disk until their messages are hidden.
        for (name, cfg) in self.deleting.lock().iter() {
            snapshot
                .topic_config_table
                .entry(name.clone())
                .or_insert_with(|| cfg.clone());
        }
        let version = snapshot.data_version.counter;
        state_file::store(&self.path, &encode_json(&snapshot))?;
        *written = Some(version);
        Ok(())
    }

    fn save_in_background(self: &Arc<Self>) {
        let me = Arc::clone(self);
        let save = move || {
            if let Err(e) = me.save() {
                tracing::error!(error = %e, "saving topics failed");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(save);
            }
            Err(_) => save(),
        }
    }
}

/// A send's answer when its topic could not be created: TOPIC_NOT_EXIST past `max_topics` or
/// while a topic of the name is being deleted (RocketMQ producers retry it),
/// INVALID_PARAMETER for a retry topic too long for 4.x clients.
fn send_refused(topic: &str, e: RetryTopicRefused) -> TopicReject {
    match e {
        RetryTopicRefused::Limit(l) => not_created(topic, l),
        long @ RetryTopicRefused::TooLong(_) => {
            TopicReject::new(response_code::INVALID_PARAMETER, long.to_string())
        }
        RetryTopicRefused::Deleting(_) => TopicReject::new(
            response_code::TOPIC_NOT_EXIST,
            format!("topic[{topic}] not exist: it is being deleted"),
        ),
    }
}

/// TOPIC_NOT_EXIST for a send whose topic could not be created: the topic does not exist, and
/// the remark says why it was not made.
fn not_created(topic: &str, limit: TopicLimit) -> TopicReject {
    TopicReject::new(
        response_code::TOPIC_NOT_EXIST,
        format!("topic[{topic}] not exist and not created: {limit}"),
    )
}

/// Puts `cfg` in the table and bumps the data version; returns a copy for the log.
fn insert(t: &mut Table, cfg: TopicConfig) -> TopicConfig {
    t.topics.insert(cfg.topic_name.clone(), cfg.clone());
    bump(t);
    cfg
}

/// A new data version: name servers and `topics.json` take the table again.
fn bump(t: &mut Table) {
    t.version = DataVersion {
        counter: t.version.counter + 1,
        timestamp: now_ms(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_like_java() {
        assert!(validate_name("Topic_A-1%|x").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a b").is_err());
        assert!(validate_name(&"a".repeat(128)).is_err());
        assert!(validate_name(&format!("%RETRY%{}", "g".repeat(200))).is_ok());
        assert!(is_not_sendable(SCHEDULE_TOPIC) && !is_not_sendable("T"));
    }

    /// The template saved in `topics.json` kept the queue count the folder was made with, so
    /// a changed `default_topic_queue_nums` had no effect on it.
    #[test]
    fn the_configured_queue_count_replaces_the_saved_templates() {
        let dir = tempfile::tempdir().unwrap();
        let m = Arc::new(TopicManager::load(dir.path(), true, 8).unwrap());
        m.get_or_create_for_send("First", DEFAULT_TOPIC, 64)
            .unwrap();
        m.save().unwrap();
        let m = Arc::new(TopicManager::load(dir.path(), true, 2).unwrap());
        let template = m.get(DEFAULT_TOPIC).unwrap();
        assert_eq!(
            (template.read_queue_nums, template.write_queue_nums),
            (2, 2)
        );
        let t = m
            .get_or_create_for_send("Second", DEFAULT_TOPIC, 64)
            .unwrap();
        assert_eq!(t.write_queue_nums, 2);
        assert_eq!(
            m.get("First").unwrap().write_queue_nums,
            8,
            "topics made keep theirs"
        );
    }

    #[test]
    fn auto_create_takes_the_smaller_queue_count_and_drops_inherit() {
        let dir = tempfile::tempdir().unwrap();
        let m = Arc::new(TopicManager::load(dir.path(), true, 8).unwrap());
        let t = m.get_or_create_for_send("New", DEFAULT_TOPIC, 4).unwrap();
        assert_eq!((t.read_queue_nums, t.write_queue_nums, t.perm), (4, 4, 6));
        let t = m.get_or_create_for_send("Big", DEFAULT_TOPIC, 64).unwrap();
        assert_eq!(t.write_queue_nums, 8);
        let r = m
            .get_or_create_for_send("%RETRY%g", DEFAULT_TOPIC, 4)
            .unwrap();
        assert_eq!((r.write_queue_nums, r.perm), (1, 6));
        m.save().unwrap();
        let again = TopicManager::load(dir.path(), false, 8).unwrap();
        assert_eq!(again.get("New").unwrap().write_queue_nums, 4);
    }

    #[test]
    fn a_save_of_an_unchanged_table_writes_nothing_and_a_change_writes_again() {
        let dir = tempfile::tempdir().unwrap();
        let m = Arc::new(TopicManager::load(dir.path(), false, 8).unwrap());
        m.save().unwrap();
        let file = dir.path().join("config/topics.json");
        assert!(
            file.exists(),
            "the first save writes (system topics included)"
        );
        std::fs::remove_file(&file).unwrap();
        m.save().unwrap();
        assert!(!file.exists(), "nothing changed since: no write, no fsync");
        m.put(TopicConfig::new("Orders", 2, perm::READ_WRITE))
            .unwrap(); // saves (no runtime: inline)
        let again = TopicManager::load(dir.path(), false, 8).unwrap();
        assert_eq!(again.get("Orders").unwrap().write_queue_nums, 2);
    }

    #[test]
    fn past_max_topics_new_topics_are_refused_but_existing_and_dead_letter_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let m = TopicManager::load(dir.path(), true, 8).unwrap();
        let system = m.snapshot().topic_config_table.len();
        let m = Arc::new(m.with_max_topics(system + 2));
        m.get_or_create_for_send("A", DEFAULT_TOPIC, 4).unwrap();
        m.get_or_create_retry("%RETRY%g").unwrap();
        let full = m.get_or_create_for_send("B", DEFAULT_TOPIC, 4).unwrap_err();
        assert_eq!(full.code, response_code::TOPIC_NOT_EXIST);
        assert!(full.remark.contains("max_topics"), "{}", full.remark);
        assert_eq!(
            m.get_or_create_retry("%RETRY%h"),
            Err(RetryTopicRefused::Limit(TopicLimit(system + 2)))
        );
        let admin = m.put_if_absent(TopicConfig::new("C", 1, perm::READ_WRITE));
        assert_eq!(admin, Err(NotAdded::Limit(TopicLimit(system + 2))));
        assert!(m.get("B").is_none() && m.get("C").is_none());
        // Prefixes are no way around it: only a known group's dead-letter topic is exempt.
        for name in ["%DLQ%nobody", "SLUICE_SYS_X", "RMQ_SYS_Y"] {
            assert!(
                m.get_or_create_for_send(name, DEFAULT_TOPIC, 4).is_err(),
                "{name}"
            );
        }
        assert_eq!(
            m.get_or_create_retry("%DLQ%nobody"),
            Err(RetryTopicRefused::Limit(TopicLimit(system + 2)))
        );
        // What exists can still be sent to and changed; the broker's own topics still come.
        m.get_or_create_for_send("A", DEFAULT_TOPIC, 4).unwrap();
        assert_eq!(m.put(TopicConfig::new("A", 2, perm::READ_WRITE)), Ok(true));
        // Deleting one makes room again.
        m.remove("A").unwrap();
        m.get_or_create_for_send("B", DEFAULT_TOPIC, 4).unwrap();
        m.get_or_create_retry("%DLQ%g").unwrap();
        assert!(m.snapshot().topic_config_table.len() > system + 2);
    }

    #[test]
    fn a_send_does_not_create_a_topic_again_while_it_is_being_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let m = Arc::new(TopicManager::load(dir.path(), true, 8).unwrap());
        m.get_or_create_for_send("Gone", DEFAULT_TOPIC, 4).unwrap();
        let (deleting, _) = m.begin_delete("Gone").unwrap().expect("it existed");
        assert!(m.begin_delete("Gone").is_err(), "a second deletion waits");
        let err = m
            .get_or_create_for_send("Gone", DEFAULT_TOPIC, 4)
            .unwrap_err();
        assert_eq!(err.code, response_code::TOPIC_NOT_EXIST);
        assert!(err.remark.contains("being deleted"), "{}", err.remark);
        // On disk until finished: a crash now must not lose the topic with its messages
        // not yet hidden.
        m.save().unwrap();
        let saved = std::fs::read_to_string(&m.path).unwrap();
        assert!(saved.contains("\"Gone\""), "{saved}");
        deleting.finish();
        m.save().unwrap();
        let saved = std::fs::read_to_string(&m.path).unwrap();
        assert!(!saved.contains("\"Gone\""), "{saved}");
        m.get_or_create_for_send("Gone", DEFAULT_TOPIC, 4).unwrap();
        assert!(m.begin_delete("Never").unwrap().is_none());
        // The admin path waits for the deletion too.
        let (deleting, cfg) = m.begin_delete("Gone").unwrap().unwrap();
        assert_eq!(m.put_if_absent(cfg), Err(NotAdded::Deleting));
        deleting.finish();
        assert!(m.deleting.lock().is_empty());
        // Dropped unfinished (its task cancelled): put back.
        m.get_or_create_for_send("Gone", DEFAULT_TOPIC, 4).unwrap();
        let (deleting, _) = m.begin_delete("Gone").unwrap().unwrap();
        assert!(m.get("Gone").is_none());
        drop(deleting);
        assert!(m.get("Gone").is_some());
    }

    #[test]
    fn without_auto_create_unknown_topics_do_not_exist() {
        let dir = tempfile::tempdir().unwrap();
        let m = Arc::new(TopicManager::load(dir.path(), false, 8).unwrap());
        let err = m
            .get_or_create_for_send("New", DEFAULT_TOPIC, 4)
            .unwrap_err();
        assert_eq!(err.code, response_code::TOPIC_NOT_EXIST);
    }
}
