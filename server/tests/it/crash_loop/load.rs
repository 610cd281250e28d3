//! The producing side of the load: sync sends over RocketMQ and HTTP, delayed messages (some
//! cancelled by key), HTTP transactions (committed, rolled back, or left open for check-back
//! or the final phase). Every request is recorded before it goes out and its answer after, so
//! the checker knows what was acknowledged and what is indeterminate.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use sluice_client::{ClientConfig, Message, ProducerBuilder, SendStatus};

use super::api::{str_field, Api};
use super::history::{body_for, wall_ms, Class, Ev, History, Via, TIMER, TXN};

/// Producer group of the HTTP transactions (its check-backs are polled).
pub const TXN_GROUP: &str = "loop-txn";
/// Upper bound of requests per task and run: the stop flag normally ends a task long before.
const MAX_OPS: usize = 100_000;
/// Pause after a failed request, so a task waiting for its stop flag does not spin.
const BACKOFF: Duration = Duration::from_millis(20);

/// A transaction as its producer knows it.
#[derive(Debug, Clone)]
pub struct TxnEntry {
    pub commit: bool,
    pub txn_id: Option<String>,
    /// The broker gave a definite answer (`committed` or `rolled_back`).
    pub settled: bool,
}

/// A timer to cancel at `at_ms` (wall clock); some fall after the due time on purpose.
#[derive(Debug, Clone)]
pub struct PendingCancel {
    pub key: String,
    pub at_ms: i64,
}

/// State that outlives one broker run: open transactions and cancels not yet sent.
#[derive(Default)]
pub struct Book {
    pub txns: Mutex<BTreeMap<String, TxnEntry>>,
    pub cancels: Mutex<Vec<PendingCancel>>,
}

/// One broker run as the load sees it.
#[derive(Clone)]
pub struct Run {
    pub hist: History,
    pub book: Arc<Book>,
    pub api: Api,
    pub ns: SocketAddr,
    pub cycle: usize,
    pub seed: u64,
    pub stop: Arc<AtomicBool>,
    /// False in the final phase: only consumers, check answers and due cancels run.
    pub produce: bool,
}

impl Run {
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// A generator for task `task` of this run, derived from the printed seed.
    pub fn rng(&self, task: u64) -> StdRng {
        StdRng::seed_from_u64(self.seed ^ ((self.cycle as u64) << 20) ^ (task << 8))
    }

    async fn pause(&self) {
        tokio::time::sleep(BACKOFF).await;
    }
}

/// A random delay for a timer: short enough to fire within the run or the next ones.
fn timer_delay(rng: &mut StdRng) -> u64 {
    rng.gen_range(200..5_000)
}

/// Plans a cancel for about one timer in three, at a random moment up to shortly after it
/// is due (so some answers are `already_delivered`).
fn maybe_plan_cancel(run: &Run, rng: &mut StdRng, key: &str, due_ms: i64) {
    if rng.gen_ratio(1, 3) {
        let at_ms = rng.gen_range(wall_ms()..due_ms + 500);
        let c = PendingCancel {
            key: key.to_owned(),
            at_ms,
        };
        run.book.cancels.lock().unwrap().push(c);
    }
}

/// Sync sends over RocketMQ with sluice-client: three plain messages, then one delivered at a
/// given time, until the run stops.
pub async fn tcp_producer(run: Run, task: u64) {
    let mut rng = run.rng(task);
    let cfg = ClientConfig::new(&run.ns.to_string());
    let Ok(producer) = ProducerBuilder::new(cfg)
        .group("loop-producer")
        .retry_times(0)
        .start()
        .await
    else {
        return;
    };
    for n in 0..MAX_OPS {
        if run.stopped() {
            break;
        }
        let key = format!("tcp-{}-{task}-{n}", run.cycle);
        let (msg, class) = if n % 4 == 3 {
            let due_ms = wall_ms() + timer_delay(&mut rng) as i64;
            let at = UNIX_EPOCH + Duration::from_millis(due_ms as u64);
            let m = Message::new(TIMER, body_for(&key)).with_deliver_at(at);
            (m, Class::Timer { due_ms })
        } else {
            (
                Message::new(super::history::PLAIN, body_for(&key)),
                Class::Plain,
            )
        };
        let msg = msg.with_keys([key.clone()]).with_tags("loop");
        run.hist.record(Ev::Sent {
            key: key.clone(),
            class: class.clone(),
            via: Via::Tcp,
        });
        match producer.send(msg).await {
            Ok(r) if r.status == SendStatus::Ok => {
                run.hist.record(Ev::Acked { key: key.clone() });
                if let Class::Timer { due_ms } = class {
                    maybe_plan_cancel(&run, &mut rng, &key, due_ms);
                }
            }
            Ok(r) => run.hist.record(Ev::SendFailed {
                key,
                why: format!("{:?}", r.status),
            }),
            Err(e) => {
                run.hist.record(Ev::SendFailed {
                    key,
                    why: e.to_string(),
                });
                run.pause().await;
            }
        }
    }
    producer.shutdown().await;
}

/// Sync sends over HTTP: three plain messages, then one with `delay_ms`.
pub async fn http_producer(run: Run, task: u64) {
    let mut rng = run.rng(task);
    for n in 0..MAX_OPS {
        if run.stopped() {
            break;
        }
        let key = format!("http-{}-{task}-{n}", run.cycle);
        let delay = (n % 4 == 3).then(|| timer_delay(&mut rng));
        // The broker computes the due time after it receives the request: later than this.
        let class = delay.map_or(Class::Plain, |d| Class::Timer {
            due_ms: wall_ms() + d as i64,
        });
        run.hist.record(Ev::Sent {
            key: key.clone(),
            class: class.clone(),
            via: Via::Http,
        });
        match run
            .api
            .produce(class.topic(), &key, &body_for(&key), delay)
            .await
        {
            Ok((201, _)) => {
                run.hist.record(Ev::Acked { key: key.clone() });
                if let Class::Timer { due_ms } = class {
                    maybe_plan_cancel(&run, &mut rng, &key, due_ms);
                }
            }
            Ok((status, v)) => {
                run.hist.record(Ev::SendFailed {
                    key,
                    why: format!("{status} {v}"),
                });
                run.pause().await;
            }
            Err(e) => {
                run.hist.record(Ev::SendFailed {
                    key,
                    why: e.to_string(),
                });
                run.pause().await;
            }
        }
    }
}

/// HTTP transactions: a half message, then commit (about 2 in 5), rollback (1 in 5), or
/// nothing (2 in 5: left to the check-back or to the final phase, with a decision drawn now).
pub async fn http_transactions(run: Run, task: u64) {
    let mut rng = run.rng(task);
    for n in 0..MAX_OPS {
        if run.stopped() {
            break;
        }
        let key = format!("txn-{}-{task}-{n}", run.cycle);
        let roll = rng.gen_range(0..5);
        let commit = roll < 2 || (roll == 4 && rng.gen_bool(0.5));
        let entry = TxnEntry {
            commit,
            txn_id: None,
            settled: false,
        };
        run.book.txns.lock().unwrap().insert(key.clone(), entry);
        run.hist.record(Ev::Sent {
            key: key.clone(),
            class: Class::Txn { commit },
            via: Via::Http,
        });
        let txn_id = match run.api.half(TXN, TXN_GROUP, &key, &body_for(&key)).await {
            Ok((201, v)) => str_field(&v, "txn_id").map(str::to_owned),
            Ok((status, v)) => {
                run.hist.record(Ev::SendFailed {
                    key,
                    why: format!("{status} {v}"),
                });
                run.pause().await;
                continue;
            }
            Err(e) => {
                run.hist.record(Ev::SendFailed {
                    key,
                    why: e.to_string(),
                });
                run.pause().await;
                continue;
            }
        };
        let Some(txn_id) = txn_id else {
            panic!("201 without txn_id for {key}")
        };
        run.hist.record(Ev::Acked { key: key.clone() });
        if let Some(e) = run.book.txns.lock().unwrap().get_mut(&key) {
            e.txn_id = Some(txn_id.clone());
        }
        if roll < 3 {
            decide(&run, &key, &txn_id, roll < 2).await;
        }
    }
}

/// Sends a decision and records the broker's answer; `true` when it answered at all.
pub async fn decide(run: &Run, key: &str, txn_id: &str, commit: bool) -> bool {
    run.hist.record(Ev::TxnDecision {
        key: key.to_owned(),
        commit,
    });
    let Ok((status, v)) = run.api.decide(txn_id, commit).await else {
        return false;
    };
    let answer = answer_of(status, &v);
    let settled = answer == "committed" || answer == "rolled_back";
    run.hist.record(Ev::TxnAnswer {
        key: key.to_owned(),
        answer,
    });
    if let Some(e) = run.book.txns.lock().unwrap().get_mut(key) {
        e.settled |= settled;
        e.txn_id.get_or_insert_with(|| txn_id.to_owned());
    }
    true
}

/// `result` of a 200, else the error code (`conflict`, `not_found`…) or the status.
fn answer_of(status: u16, v: &Value) -> String {
    if status == 200 {
        return str_field(v, "result")
            .unwrap_or("200-without-result")
            .to_owned();
    }
    v.get("error")
        .and_then(|e| str_field(e, "code"))
        .map_or_else(|| format!("http-{status}"), str::to_owned)
}

/// Answers the broker's check-backs for the HTTP group with each transaction's own decision
/// (also for half messages whose send was never answered: the check names their key).
pub async fn check_responder(run: Run) {
    for _ in 0..MAX_OPS {
        if run.stopped() {
            break;
        }
        let Ok((200, v)) = run.api.checks(TXN_GROUP, 300).await else {
            run.pause().await;
            continue;
        };
        let checks = v
            .get("checks")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for c in checks {
            let (Some(txn_id), Some(key)) = (str_field(&c, "txn_id"), first_key(&c)) else {
                continue;
            };
            let commit = run.book.txns.lock().unwrap().get(&key).map(|e| e.commit);
            match commit {
                Some(commit) => {
                    decide(&run, &key, txn_id, commit).await;
                }
                None => panic!("check-back for {key}, which this test never sent: {c}"),
            }
        }
    }
}

fn first_key(v: &Value) -> Option<String> {
    v.get("keys")?
        .as_array()?
        .first()?
        .as_str()
        .map(str::to_owned)
}

/// Sends the cancels that are due, recording each definite answer.
pub async fn canceller(run: Run) {
    for _ in 0..MAX_OPS {
        if run.stopped() {
            break;
        }
        let now = wall_ms();
        let due: Vec<PendingCancel> = {
            let mut all = run.book.cancels.lock().unwrap();
            let (due, later) = all.drain(..).partition(|c| c.at_ms <= now);
            *all = later;
            due
        };
        for c in due {
            if !cancel(&run, &c.key).await {
                // No answer (the broker is gone): try again in the next run.
                run.book.cancels.lock().unwrap().push(c);
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn cancel(run: &Run, key: &str) -> bool {
    run.hist.record(Ev::CancelSent {
        key: key.to_owned(),
    });
    match run.api.cancel(TIMER, key).await {
        Ok((200, v)) => {
            let answer = cancel_answer(&v);
            run.hist.record(Ev::CancelAnswer {
                key: key.to_owned(),
                answer,
            });
            true
        }
        Ok((status, v)) => panic!("cancel of {key} refused: {status} {v}"),
        Err(_) => false,
    }
}

/// `result`, except that a repeated cancel (the first one's answer was lost in a kill) of a
/// timer it did cancel says `already_cancelled`.
fn cancel_answer(v: &Value) -> String {
    let result = str_field(v, "result").unwrap_or("200-without-result");
    let before = v
        .get("already_cancelled")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if result != "cancelled" && before > 0 {
        "already_cancelled".to_owned()
    } else {
        result.to_owned()
    }
}
