//! The CancelIfUnpaid timer: scheduled with the Rust client (an arbitrary deliver time, keyed
//! by order id) and cancelled by key through the HTTP facade, whose answer is definite: the
//! timer is either cancelled (it will never be delivered) or was already delivered (the
//! consumer will see, or saw, the message), never "maybe".

use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use example_support::enc;
use serde::Deserialize;
use sluice_client::{Message, Producer};

/// Tag of the time-out messages (the consumer subscribes to it).
pub const TAG: &str = "CancelIfUnpaid";

/// What `DELETE /v1/topics/{topic}/scheduled/{key}` answered.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CancelAnswer {
    /// `cancelled`, `already_delivered`, `already_cancelled` (by an earlier call),
    /// `already_dropped` (the broker gave the timer up as undeliverable) or `not_found`.
    pub result: String,
    /// Messages with that result (`matched` in the answer counts every message of the key).
    pub count: u64,
}

impl CancelAnswer {
    /// The timer will never fire (cancelled by this call or an earlier one, or dropped by the
    /// broker as undeliverable).
    pub fn cancelled(&self) -> bool {
        matches!(
            self.result.as_str(),
            "cancelled" | "already_cancelled" | "already_dropped"
        )
    }

    /// The message is already in the topic: the consumer decides.
    pub fn already_delivered(&self) -> bool {
        self.result == "already_delivered"
    }
}

/// Schedules CancelIfUnpaid for `order_id`, due `after` from now. Returns the message id.
pub async fn schedule(
    producer: &Producer,
    topic: &str,
    order_id: &str,
    after: Duration,
) -> anyhow::Result<String> {
    let msg = Message::new(topic.to_owned(), order_id.to_owned())
        .with_tags(TAG)
        .with_keys([order_id.to_owned()])
        .with_deliver_at(SystemTime::now() + after);
    let sent = producer
        .send(msg)
        .await
        .with_context(|| format!("schedule CancelIfUnpaid for {order_id}"))?;
    Ok(sent.msg_id)
}

/// Calls the facade's cancel-by-key endpoint.
#[derive(Clone)]
pub struct TimerApi {
    http: reqwest::Client,
    base: String,
}

impl TimerApi {
    /// A client of the facade at `base` (`http://127.0.0.1:port`), every call bounded.
    pub fn new(base: String) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("HTTP client")?;
        Ok(Self { http, base })
    }

    /// Cancels every pending timer of `topic` keyed `key`.
    pub async fn cancel(&self, topic: &str, key: &str) -> anyhow::Result<CancelAnswer> {
        let url = format!(
            "{}/v1/topics/{}/scheduled/{}",
            self.base,
            enc(topic),
            enc(key)
        );
        let resp = self
            .http
            .delete(&url)
            .send()
            .await
            .with_context(|| format!("DELETE {url}"))?;
        json_of(resp, &url).await
    }

    /// The state of every timer of `topic` keyed `key` (`pending`, `cancelled`,
    /// `delivered`), as the broker's listing reports it.
    pub async fn states(&self, topic: &str, key: &str) -> anyhow::Result<Vec<String>> {
        let url = format!(
            "{}/v1/topics/{}/scheduled?key={}",
            self.base,
            enc(topic),
            enc(key)
        );
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let listed: Listing = json_of(resp, &url).await?;
        Ok(listed.messages.into_iter().map(|m| m.state).collect())
    }
}

/// `GET /v1/topics/{topic}/scheduled?key=` (only what the flow reads).
#[derive(Deserialize)]
struct Listing {
    messages: Vec<Listed>,
}

#[derive(Deserialize)]
struct Listed {
    state: String,
}

/// The JSON body of a 2xx answer; anything else is an error carrying the body (the facade's
/// error shape names the problem).
async fn json_of<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
    url: &str,
) -> anyhow::Result<T> {
    let status = resp.status();
    let text = resp.text().await.with_context(|| format!("{url}: body"))?;
    if !status.is_success() {
        bail!("{url}: {status}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("{url}: {status}: {text}"))
}
