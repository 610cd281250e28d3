//! The operator's side, through the HTTP facade's admin endpoints: list a group's dead
//! letters (`GET /v1/groups/{group}/dlq`), start a selective, throttled replay
//! (`POST /v1/groups/{group}/dlq/replay`) and follow it (`GET /v1/replays/{id}`).

use std::time::Duration;

use anyhow::{bail, Context};
use example_support::enc;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

/// Every wait on a replay is bounded by this.
const REPLAY_WAIT: Duration = Duration::from_secs(60);

/// One dead letter (only the fields the flow shows).
#[derive(Debug, Clone, Deserialize)]
pub struct DeadLetter {
    /// Position in the dead-letter queue.
    pub dlq_offset: u64,
    /// Its keys (the payment id).
    pub keys: Vec<String>,
    /// Its tag (the currency).
    pub tag: Option<String>,
    /// Consumed again this many times before it was given up.
    pub reconsume_times: i32,
    /// Why its last delivery failed, when the consumer said.
    pub failure_reason: Option<String>,
}

impl DeadLetter {
    /// The payment id.
    pub fn payment(&self) -> &str {
        self.keys.first().map_or("?", String::as_str)
    }
}

#[derive(Deserialize)]
struct Page {
    messages: Vec<DeadLetter>,
}

/// A replay task's progress (only the fields the flow shows).
#[derive(Debug, Clone, Deserialize)]
pub struct Replay {
    /// Task id.
    pub id: String,
    /// `running`, `completed`, `cancelled` or `failed`.
    pub state: String,
    /// Dead letters that passed the filter.
    pub matched: u64,
    /// Copies written.
    pub replayed: u64,
    /// Replayed earlier, skipped.
    pub skipped: u64,
    /// Could not be written.
    pub failed: u64,
    /// Only counted.
    pub dry_run: bool,
    /// Messages per second.
    pub rate_per_sec: u32,
}

/// A client of the facade's DLQ endpoints.
#[derive(Clone)]
pub struct Operator {
    http: reqwest::Client,
    base: String,
}

impl Operator {
    /// A client of the facade at `base`, every call bounded.
    pub fn new(base: String) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("HTTP client")?;
        Ok(Self { http, base })
    }

    /// The dead letters of `group` still waiting (not replayed), oldest first (one page of
    /// up to 1 000 is plenty for the demo).
    pub async fn waiting(&self, group: &str) -> anyhow::Result<Vec<DeadLetter>> {
        let url = format!("{}/v1/groups/{}/dlq?limit=1000", self.base, enc(group));
        let page: Page = json_of(self.http.get(&url).send().await, &url).await?;
        Ok(page.messages)
    }

    /// Starts a replay of `group`'s dead letters selected by `selection` (the facade's
    /// request body: `tag`, `key`, `original_topic`, time range, `rate_per_sec`, `dry_run`).
    pub async fn replay(&self, group: &str, selection: Value) -> anyhow::Result<Replay> {
        let url = format!("{}/v1/groups/{}/dlq/replay", self.base, enc(group));
        let resp = self.http.post(&url).json(&selection).send().await;
        json_of(resp, &url).await
    }

    /// Polls a replay every 100 ms until it is no longer running (at most [`REPLAY_WAIT`]);
    /// calls `progress` with each status that changed.
    pub async fn wait(
        &self,
        id: &str,
        mut progress: impl FnMut(&Replay),
    ) -> anyhow::Result<Replay> {
        let url = format!("{}/v1/replays/{}", self.base, enc(id));
        let deadline = tokio::time::Instant::now() + REPLAY_WAIT;
        let mut last = None;
        while tokio::time::Instant::now() < deadline {
            let r: Replay = json_of(self.http.get(&url).send().await, &url).await?;
            if last != Some((r.replayed, r.skipped, r.failed)) {
                progress(&r);
                last = Some((r.replayed, r.skipped, r.failed));
            }
            if r.state != "running" {
                return Ok(r);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("replay {id} still running after {REPLAY_WAIT:?}")
    }
}

/// The JSON body of a 2xx answer; anything else is an error carrying the body (the facade's
/// error shape names the problem).
async fn json_of<T: DeserializeOwned>(
    resp: reqwest::Result<reqwest::Response>,
    url: &str,
) -> anyhow::Result<T> {
    let resp = resp.with_context(|| format!("{url}: request"))?;
    let status = resp.status();
    let text = resp.text().await.with_context(|| format!("{url}: body"))?;
    if !status.is_success() {
        bail!("{url}: {status}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("{url}: {status}: {text}"))
}
