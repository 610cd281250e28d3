//! Issue #11: a crash at every step of every multi-file operation. Each case arms one crash
//! point in the real `sluice` binary (`SLUICE_CRASH_POINT`, see `sluice_store::crash_point`),
//! drives mixed HTTP traffic until the process aborts there, restarts it on the same data
//! folder, and checks:
//! - it died at that point (SIGABRT), so the step was really reached under load;
//! - it starts again; no temporary file is left anywhere in the data folder, and every timer
//!   run on disk is one `schedule/state.json` names (old or new state, never a mix);
//! - every acknowledged message, timer, committed transaction and created topic is there, and
//!   a consumer group's saved offsets are the old or the new ones: present and within what was
//!   delivered.
//!
//! Which file a write lands in is part of the point's name (`@consumerOffset.json`), and the
//! `#n` visit lets earlier writes of the same file succeed, so "old" is a real earlier state.

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_store::crash_point as cp;

use crate::common::{start_on, Sluice};
use crate::crash_loop::api::{str_field, Api};

const PLAIN: &str = "CpPlain";
const TIMER: &str = "CpTimer";
const TXN: &str = "CpTxn";
const GROUP: &str = "cp";
const VERIFY: &str = "cp_verify";
const PRODUCER: &str = "cp_producer";
/// Load steps before giving up on reaching the point (each step is a few requests).
const MAX_STEPS: usize = 20_000;
/// Wall-clock bound on the load phase.
const LOAD_LIMIT: Duration = Duration::from_secs(90);
/// Wall-clock bound on reading everything back after the restart.
const VERIFY_LIMIT: Duration = Duration::from_secs(90);
/// Delay of the timers: due soon after the restart.
const TIMER_DELAY_MS: u64 = 800;
/// What `abort` ends a process with.
const SIGABRT: i32 = 6;
/// Every case: frequent checkpoints and offset saves, so each point is reached in seconds.
const BASE_ENV: [(&str, &str); 3] = [
    ("SLUICE_BROKER_OFFSET_FLUSH_INTERVAL_MS", "300"),
    ("SLUICE_TXN_CHECKPOINT_INTERVAL_MS", "200"),
    ("SLUICE_TXN_CHECK_AFTER_MS", "60000"),
];
/// Segments just above the minimum (two maximum records), so 64 KiB bodies roll them.
const SMALL_SEGMENTS: (&str, &str) = ("SLUICE_STORE_SEGMENT_BYTES", "9437184");

/// One crash point to reach.
struct Case {
    /// `SLUICE_CRASH_POINT`'s value.
    spec: String,
    /// Extra `SLUICE_*` settings.
    env: Vec<(&'static str, &'static str)>,
    /// Body size of the plain messages.
    body: usize,
    /// The crash hits a later save of the offsets file: an earlier one must survive it.
    offsets_survive: bool,
    /// What the case is about must have been acknowledged before the crash, or the case
    /// proved nothing.
    needs: Need,
}

/// The kind of acknowledged work a case puts at risk.
#[derive(Clone, Copy, Debug)]
enum Need {
    Plain,
    Timers,
    Txns,
    Topics,
    Consumed,
}

impl Need {
    fn met(self, a: &Acked) -> bool {
        match self {
            Need::Plain => !a.plain.is_empty(),
            Need::Timers => !a.timers.is_empty(),
            Need::Txns => !a.txns.is_empty(),
            Need::Topics => !a.topics.is_empty(),
            Need::Consumed => a.consumed > 0,
        }
    }
}

impl Case {
    fn new(point: &str, file: Option<&str>, nth: u32) -> Self {
        let spec = match file {
            Some(f) => format!("{point}@{f}#{nth}"),
            None => format!("{point}#{nth}"),
        };
        Self {
            spec,
            env: Vec::new(),
            body: 256,
            offsets_survive: false,
            needs: Need::Plain,
        }
    }

    fn needs(mut self, needs: Need) -> Self {
        self.needs = needs;
        self
    }

    /// The point's name, as the process reports reaching it.
    fn point(&self) -> &str {
        self.spec.split(['@', '#']).next().unwrap_or(&self.spec)
    }

    fn big_bodies(mut self) -> Self {
        self.env.push(SMALL_SEGMENTS);
        self.body = 64 * 1024;
        self
    }
}

/// What the broker acknowledged before it died.
#[derive(Default)]
struct Acked {
    plain: Vec<String>,
    timers: Vec<String>,
    txns: Vec<String>,
    topics: Vec<String>,
    /// Messages of `PLAIN` acknowledged by `GROUP` (their offsets may be saved).
    consumed: usize,
    /// Deliveries of `PLAIN` to `GROUP`, acknowledged or not: saved offsets never pass them
    /// (a new group starts at the oldest message).
    delivered: usize,
}

#[test]
fn a_crash_while_replacing_the_store_checkpoint_leaves_the_old_or_the_new_one() {
    for point in [
        cp::ATOMIC_TMP_WRITTEN,
        cp::ATOMIC_TMP_SYNCED,
        cp::ATOMIC_RENAMED,
    ] {
        run_case(Case::new(point, Some("/checkpoint"), 3));
    }
}

#[test]
fn a_crash_while_saving_consumer_offsets_keeps_the_previous_offsets() {
    for point in [
        cp::ATOMIC_TMP_WRITTEN,
        cp::ATOMIC_TMP_SYNCED,
        cp::ATOMIC_RENAMED,
    ] {
        let mut case = Case::new(point, Some("consumerOffset.json"), 3).needs(Need::Consumed);
        case.offsets_survive = true;
        run_case(case);
    }
}

#[test]
fn a_crash_while_saving_topics_loses_no_acknowledged_topic() {
    for point in [cp::ATOMIC_TMP_WRITTEN, cp::ATOMIC_RENAMED] {
        // The first saves happen at start (system topics); later ones are the load's topics.
        run_case(Case::new(point, Some("topics.json"), 12).needs(Need::Topics));
    }
}

#[test]
fn a_crash_during_the_transaction_checkpoint_loses_no_commit() {
    for point in [cp::ATOMIC_TMP_SYNCED, cp::ATOMIC_RENAMED] {
        run_case(Case::new(point, Some("txn/checkpoint.json"), 4).needs(Need::Txns));
    }
}

#[test]
fn a_crash_at_each_step_of_a_timer_checkpoint_loses_no_timer() {
    run_case(Case::new(cp::TIMER_RUN_WRITTEN, None, 2).needs(Need::Timers));
    run_case(Case::new(cp::TIMER_STATE_SAVED, None, 2).needs(Need::Timers));
    run_case(Case::new(cp::ATOMIC_TMP_WRITTEN, Some("schedule/state.json"), 2).needs(Need::Timers));
}

#[test]
fn a_crash_at_each_step_of_a_segment_roll_loses_no_acknowledged_message() {
    run_case(Case::new(cp::SEGMENT_SEALED, None, 1).big_bodies());
    // The first creation is the first segment of a fresh store; the second is a roll.
    run_case(Case::new(cp::SEGMENT_CREATED, None, 2).big_bodies());
}

#[test]
fn a_crash_right_after_a_consume_queue_file_is_created_loses_nothing() {
    // Queue files are created as queues get their first message: the 8th comes with load.
    run_case(Case::new(cp::CQ_FILE_CREATED, None, 8));
}

#[test]
fn every_crash_point_is_visited_by_a_case() {
    // Keep in step with the cases above: a new point needs a case.
    let covered = [
        cp::ATOMIC_TMP_WRITTEN,
        cp::ATOMIC_TMP_SYNCED,
        cp::ATOMIC_RENAMED,
        cp::SEGMENT_SEALED,
        cp::SEGMENT_CREATED,
        cp::CQ_FILE_CREATED,
        cp::TIMER_RUN_WRITTEN,
        cp::TIMER_STATE_SAVED,
    ];
    let all: BTreeSet<&str> = cp::POINTS.iter().copied().collect();
    assert_eq!(all, covered.into_iter().collect::<BTreeSet<_>>());
}

fn run_case(case: Case) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    // Port 0 everywhere: the restart need not reuse the ports, and picking "free" ports
    // races the other tests of this binary.
    let ports = (0, 0, 0);
    let mut env: Vec<(&str, &str)> = BASE_ENV.to_vec();
    env.extend(case.env.iter().copied());
    let mut armed = env.clone();
    armed.push((cp::VAR, &case.spec));

    let mut sluice = start_on(data.path(), ports.0, ports.1, ports.2, &armed);
    let acked = rt.block_on(drive_until_exit(&mut sluice, case.body));
    let status = sluice
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{}: never reached, after {}", case.spec, summary(&acked)));
    assert_eq!(
        status.signal(),
        Some(SIGABRT),
        "{}: the process ended otherwise than at the crash point: {status}",
        case.spec
    );
    // Any abort ends with SIGABRT: the process must say it was this point.
    let reached = format!("crash point {} reached", case.point());
    assert!(
        sluice.stderr_shows(&reached, Duration::from_secs(10)),
        "{}: aborted, but not at the crash point",
        case.spec
    );
    assert!(
        case.needs.met(&acked),
        "{}: nothing of {:?} was acknowledged before the crash, so nothing was at risk ({})",
        case.spec,
        case.needs,
        summary(&acked)
    );
    eprintln!("{}: aborted after {}", case.spec, summary(&acked));

    let sluice = start_on(data.path(), ports.0, ports.1, ports.2, &env);
    assert_no_temp_files(data.path(), &case.spec);
    assert_timer_runs_named(data.path(), &case);
    rt.block_on(verify(&sluice, &acked, &case));
    sluice.stop();
}

fn summary(a: &Acked) -> String {
    format!(
        "{} plain, {} timers, {} txns, {} topics, {} consumed",
        a.plain.len(),
        a.timers.len(),
        a.txns.len(),
        a.topics.len(),
        a.consumed
    )
}

/// Mixed traffic until the process is gone: a plain send every step, and in turn a timer, a
/// committed transaction, a topic (every fourth turn) or a receive-and-ack.
async fn drive_until_exit(sluice: &mut Sluice, body_len: usize) -> Acked {
    let api = Api::new(sluice.http);
    let mut acked = Acked::default();
    let started = Instant::now();
    for i in 0..MAX_STEPS {
        if sluice.has_exited() || started.elapsed() > LOAD_LIMIT {
            break;
        }
        let key = format!("p{i}");
        if let Ok((201, _)) = api.produce(PLAIN, &key, &body(&key, body_len), None).await {
            acked.plain.push(key);
        }
        match i % 4 {
            0 => timer(&api, i, &mut acked).await,
            1 => txn(&api, i, &mut acked).await,
            2 if i % 16 == 2 => topic(&api, i, &mut acked).await,
            _ => consume(&api, &mut acked).await,
        }
    }
    acked
}

async fn timer(api: &Api, i: usize, acked: &mut Acked) {
    let key = format!("t{i}");
    let sent = api
        .produce(TIMER, &key, &body(&key, 64), Some(TIMER_DELAY_MS))
        .await;
    if let Ok((201, _)) = sent {
        acked.timers.push(key);
    }
}

async fn txn(api: &Api, i: usize, acked: &mut Acked) {
    let key = format!("x{i}");
    let Ok((201, v)) = api.half(TXN, PRODUCER, &key, &body(&key, 64)).await else {
        return;
    };
    let id = str_field(&v, "txn_id").expect("a half message answer names its txn_id");
    if let Ok((200, _)) = api.decide(id, true).await {
        acked.txns.push(key);
    }
}

async fn topic(api: &Api, i: usize, acked: &mut Acked) {
    let name = format!("CpTopic{i}");
    if let Ok((201, _)) = api.create_topic(&name, 2).await {
        acked.topics.push(name);
    }
}

async fn consume(api: &Api, acked: &mut Acked) {
    let Ok((200, v)) = api.receive(GROUP, PLAIN, 0).await else {
        return;
    };
    let receipts: Vec<String> = messages(&v)
        .iter()
        .filter_map(|m| str_field(m, "receipt").map(str::to_owned))
        .collect();
    let n = receipts.len();
    acked.delivered += n;
    if n > 0 {
        if let Ok((200, _)) = api.ack(GROUP, receipts).await {
            acked.consumed += n;
        }
    }
}

fn body(key: &str, len: usize) -> String {
    let mut b = format!("{key}:");
    while b.len() < len {
        b.push_str(key);
    }
    b.truncate(len.max(key.len() + 1));
    b
}

fn messages(v: &Value) -> Vec<Value> {
    v.get("messages")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn first_key(m: &Value) -> Option<String> {
    m.get("keys")?
        .as_array()?
        .first()?
        .as_str()
        .map(str::to_owned)
}

/// No `*.tmp` anywhere under the data folder once the restarted process is up.
fn assert_no_temp_files(dir: &Path, spec: &str) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                assert!(
                    !path.to_string_lossy().ends_with(".tmp"),
                    "{spec}: a temporary file is left after the restart: {}",
                    path.display()
                );
            }
        }
    }
}

/// Every `schedule/runs/*.run` is named by `schedule/state.json`: an unnamed run (written
/// before the crash, never adopted) was removed at the restart.
fn assert_timer_runs_named(dir: &Path, case: &Case) {
    let spec = &case.spec;
    // The schedule's folder is inside the store's (the path used before, `<data>/schedule`,
    // never existed, so this check never ran).
    let state = dir.join("store/schedule/state.json");
    // A schedule that never checkpointed has no state yet (its runs are rebuilt from the
    // log); the timer cases crash in a checkpoint, after an earlier one wrote it.
    let bytes = match std::fs::read(&state) {
        Ok(bytes) => bytes,
        Err(_) if !matches!(case.needs, Need::Timers) => return,
        Err(e) => panic!("{spec}: schedule/state.json after the restart: {e}"),
    };
    let v: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{spec}: schedule/state.json is not whole JSON: {e}"));
    let named: BTreeSet<u64> = v["runs"]
        .as_array()
        .expect("state.json lists its runs")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    let entries = match std::fs::read_dir(dir.join("store/schedule/runs")) {
        Ok(entries) => entries,
        Err(_) if !matches!(case.needs, Need::Timers) => return,
        Err(e) => panic!("{spec}: schedule/runs after the restart: {e}"),
    };
    // Every run state.json names is on disk too (a named run lost is a lost timer).
    for id in &named {
        let run = dir.join(format!("store/schedule/runs/{id:020}.run"));
        assert!(
            run.is_file(),
            "{spec}: state.json names run {id}, missing on disk"
        );
    }
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let id: u64 = name
            .strip_suffix(".run")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{spec}: unexpected file in schedule/runs: {name}"));
        assert!(
            named.contains(&id),
            "{spec}: run {name} is on disk but not named by state.json ({named:?})"
        );
    }
}

async fn verify(sluice: &Sluice, acked: &Acked, case: &Case) {
    let api = Api::new(sluice.http);
    let spec = &case.spec;
    read_back(&api, PLAIN, &acked.plain, spec, Some(case.body)).await;
    read_back(&api, TIMER, &acked.timers, spec, Some(64)).await;
    read_back(&api, TXN, &acked.txns, spec, Some(64)).await;
    for t in &acked.topics {
        let (status, v) = api.topic(t).await.expect("topic answer");
        assert_eq!(status, 200, "{spec}: acknowledged topic {t} is gone: {v}");
    }
    check_offsets(&api, acked, case).await;
}

/// Receives `topic` from the start with a fresh group until every acknowledged key arrived
/// (with its body intact when `body_len` is given).
async fn read_back(api: &Api, topic: &str, want: &[String], spec: &str, body_len: Option<usize>) {
    let mut missing: BTreeSet<&str> = want.iter().map(String::as_str).collect();
    let deadline = Instant::now() + VERIFY_LIMIT;
    while !missing.is_empty() && Instant::now() < deadline {
        let Ok((200, v)) = api.receive(VERIFY, topic, 500).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let msgs = messages(&v);
        let mut receipts = Vec::new();
        for m in &msgs {
            let key = first_key(m).unwrap_or_default();
            if let Some(len) = body_len {
                assert_eq!(
                    str_field(m, "body"),
                    Some(body(&key, len).as_str()),
                    "{spec}: {key} on {topic} came back changed"
                );
            }
            missing.remove(key.as_str());
            receipts.extend(str_field(m, "receipt").map(str::to_owned));
        }
        if !receipts.is_empty() {
            let _ = api.ack(VERIFY, receipts).await;
        }
    }
    assert!(
        missing.is_empty(),
        "{spec}: {} acknowledged on {topic} never came back, e.g. {:?}",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
}

/// The group's saved offsets after the restart: when an earlier save preceded the crash they
/// must be there, and never beyond what was delivered.
async fn check_offsets(api: &Api, acked: &Acked, case: &Case) {
    let (status, v) = api.group(GROUP, PLAIN).await.expect("group answer");
    if status == 404 {
        assert!(
            !case.offsets_survive,
            "{}: the offsets saved before the crash are gone",
            case.spec
        );
        return;
    }
    assert_eq!(status, 200, "{}: {v}", case.spec);
    let total: i64 = v["offsets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| str_field(o, "topic") == Some(PLAIN))
        .filter_map(|o| o.get("committed").and_then(Value::as_i64))
        .sum();
    if case.offsets_survive {
        assert!(
            total > 0,
            "{}: the offsets saved before the crash are gone: {v}",
            case.spec
        );
    }
    assert!(
        total <= acked.delivered as i64,
        "{}: saved offsets ({total}) beyond what was delivered ({}): {v}",
        case.spec,
        acked.delivered
    );
}
