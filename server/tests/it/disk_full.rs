//! Issue #11: a real full disk. The test mounts a small tmpfs (it runs as root, as this
//! project's tests and CI do; without the right to mount it fails and says so), puts the
//! broker's data folder on it, and fills the rest with ballast files:
//! - sends are refused with a clear JSON error, the process stays up, and nothing refused is
//!   later delivered;
//! - a state file that cannot be written (a new topic) is refused, not acknowledged;
//! - once the ballast is deleted, sends and topic creation work again without a restart;
//! - after a clean restart every acknowledged message is back, intact.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::start_on;
use crate::crash_loop::api::{str_field, Api};

const TOPIC: &str = "Full";
const GROUP: &str = "full_reader";
/// The tmpfs: the broker's preallocated files for one queue take about 100 MiB.
const FS_MIB: u64 = 192;
/// Space left free before the sends: less than one 9 MiB segment, so a roll hits ENOSPC.
const LEFT_FREE: u64 = 4 << 20;
const BODY: usize = 64 * 1024;
/// Bound on sends per phase.
const MAX_SENDS: usize = 2_000;

/// A tmpfs mounted on a temporary folder, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test fills a real file system: it mounts a {mib} MiB tmpfs, which needs root \
             (CAP_SYS_ADMIN); mount said: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Available bytes on the file system holding `p` (`df`'s Avail).
fn available(p: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(p)
        .output()
        .expect("run df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df prints the available bytes")
}

/// Writes a ballast file of up to `bytes` (stops quietly at ENOSPC: "fill everything").
fn ballast(path: &Path, bytes: u64) -> PathBuf {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xA5u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        if f.write_all(&chunk[..n]).is_err() {
            break;
        }
        left -= n as u64;
    }
    let _ = f.sync_all();
    path.to_path_buf()
}

fn body(i: usize) -> String {
    let head = format!("m{i}:");
    let mut b = head.repeat(BODY / head.len() + 1);
    b.truncate(BODY);
    b
}

#[test]
fn a_full_disk_refuses_cleanly_and_service_resumes_when_space_returns() {
    let fs = Tmpfs::mount(FS_MIB);
    let data = fs.path().join("data");
    // Port 0 everywhere: the restart need not reuse the ports, and picking "free" ports
    // races the other tests of this binary.
    let ports = (0, 0, 0);
    let env = [
        // Segments just above their minimum, so a roll needs only 9 MiB.
        ("SLUICE_STORE_SEGMENT_BYTES", "9437184"),
        // The guard would refuse first; this test wants the file system's own ENOSPC.
        ("SLUICE_STORE_DISK_MAX_USED_RATIO", "1.0"),
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sluice = start_on(&data, ports.0, ports.1, ports.2, &env);
    let api = Api::new(sluice.http);
    let mut acked = Vec::new();

    rt.block_on(async {
        let (status, v) = api.create_topic(TOPIC, 1).await.unwrap();
        assert_eq!(status, 201, "{v}");
        send(&api, 0, &mut acked)
            .await
            .expect("the first send fits");
        // Its queue file (preallocated) must exist before the disk is filled.
        dispatched(&api, 1).await;
        // The dispatcher creates the index file (its ~4 MB slot table written with zeros)
        // after it publishes the queue entry; measured before that, the free space would
        // include what the index is about to take, and the ballast would leave none.
        settled(fs.path()).await;

        // Phase A: less than a segment left; the segment in use fills, then its roll is refused.
        let free = available(fs.path());
        let ballast_a = ballast(&fs.path().join("ballast-a"), free.saturating_sub(LEFT_FREE));
        let refusal = send_until_refused(&api, 1, &mut acked).await;
        let (status, v) = refusal.expect("a full disk refuses a send");
        assert!(
            acked.len() > 100,
            "the current segment filled before the refusal ({} sent)",
            acked.len()
        );
        assert!(
            status == 503 || status == 507,
            "a full disk answers 503/507, not {status}: {v}"
        );
        let code = v["error"]["code"].as_str().unwrap_or_default().to_owned();
        assert!(!code.is_empty(), "the refusal has a stable code: {v}");
        assert!(
            v["error"]["request_id"].as_str().is_some(),
            "and a request id: {v}"
        );
        let (health, _) = api.health().await.expect("still answering");
        assert_eq!(health, 200, "the process is up while the disk is full");

        // Phase B: nothing left at all; a new topic cannot be saved, so it is refused.
        let ballast_b = ballast(&fs.path().join("ballast-b"), u64::MAX);
        let (status, v) = api.create_topic("FullTopic", 1).await.unwrap();
        assert_eq!(status, 503, "a topic that cannot be saved is refused: {v}");
        let (status, v) = api.create_topic("FullTopic", 1).await.unwrap();
        assert_eq!(status, 503, "and refused again when retried: {v}");

        // Phase C: space returns; no restart needed.
        std::fs::remove_file(ballast_a).unwrap();
        std::fs::remove_file(ballast_b).unwrap();
        let first_after = acked.len() + 1_000;
        let resumed = resume(&api, first_after, &mut acked).await;
        assert!(resumed, "sends succeed again once space returns");
        let (status, v) = api.create_topic("FullTopicLater", 1).await.unwrap();
        assert_eq!(status, 201, "topics can be created again: {v}");
        let (status, v) = api.create_topic("FullTopic", 1).await.unwrap();
        assert!(
            status == 200 || status == 201,
            "the retried topic is saved now: {v}"
        );
    });
    sluice.stop();

    // Phase D: a clean restart brings back every acknowledged message, intact.
    let sluice = start_on(&data, ports.0, ports.1, ports.2, &env);
    let api = Api::new(sluice.http);
    rt.block_on(async {
        for t in ["FullTopicLater", "FullTopic"] {
            let (status, _) = api.topic(t).await.unwrap();
            assert_eq!(
                status, 200,
                "{t}, acknowledged once space returned, survived"
            );
        }
        read_back(&api, &acked).await;
    });
    sluice.stop();
}

/// Waits until the topic's queue 0 holds `n` messages (dispatched to its consume queue).
async fn dispatched(api: &Api, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok((200, v)) = api.topic(TOPIC).await {
            if v["queues"][0]["max_offset"].as_u64() >= Some(n) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{TOPIC} never showed {n} messages");
}

/// Waits until the file system's free space stops changing (five readings 100 ms apart),
/// so files the broker is still creating are counted before the ballast is sized.
async fn settled(p: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut last, mut same) = (available(p), 0);
    while same < 5 {
        assert!(
            Instant::now() < deadline,
            "the broker's files never stopped growing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = available(p);
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
}

/// Sends message `i`; `Err` with the answer when refused.
async fn send(api: &Api, i: usize, acked: &mut Vec<usize>) -> Result<(), (u16, Value)> {
    let key = format!("k{i}");
    match api.produce(TOPIC, &key, &body(i), None).await {
        Ok((201, _)) => {
            acked.push(i);
            Ok(())
        }
        Ok(answer) => Err(answer),
        Err(e) => panic!("no answer to a send while the disk is full: {e}"),
    }
}

async fn send_until_refused(
    api: &Api,
    from: usize,
    acked: &mut Vec<usize>,
) -> Option<(u16, Value)> {
    for i in from..from + MAX_SENDS {
        if let Err(answer) = send(api, i, acked).await {
            return Some(answer);
        }
    }
    None
}

/// Sends until one is accepted again (the store retries the roll on the next append).
async fn resume(api: &Api, from: usize, acked: &mut Vec<usize>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = from;
    while Instant::now() < deadline {
        if send(api, i, acked).await.is_ok() {
            for j in i + 1..i + 20 {
                send(api, j, acked)
                    .await
                    .unwrap_or_else(|a| panic!("send after resuming refused: {a:?}"));
            }
            return true;
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

async fn read_back(api: &Api, acked: &[usize]) {
    let want: BTreeSet<String> = acked.iter().map(|i| format!("k{i}")).collect();
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < want.len() && Instant::now() < deadline {
        let Ok((200, v)) = api.receive(GROUP, TOPIC, 500).await else {
            tokio::time::sleep(Duration::from_millis(100)).await; // not a busy loop
            continue;
        };
        let msgs = v["messages"].as_array().cloned().unwrap_or_default();
        let mut receipts = Vec::new();
        for m in &msgs {
            let key = m["keys"][0].as_str().unwrap_or_default().to_owned();
            let i: usize = key[1..].parse().expect("keys are k<i>");
            assert_eq!(
                str_field(m, "body"),
                Some(body(i).as_str()),
                "{key} came back changed"
            );
            assert!(want.contains(&key), "{key} was refused yet delivered");
            seen.insert(key);
            receipts.extend(str_field(m, "receipt").map(str::to_owned));
        }
        if !receipts.is_empty() {
            let _ = api.ack(GROUP, receipts).await;
        }
    }
    assert_eq!(seen, want, "every acknowledged message is back");
}
