//! The few HTTP facade calls the driver makes, over reqwest to 127.0.0.1. Each returns the
//! status and JSON answer, or an error when there was no answer (the broker was killed):
//! callers decide what an answer means, so the history records it as given.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};

/// No answer: connection refused or reset, or a timeout.
pub type NoAnswer = reqwest::Error;

/// An HTTP facade at one address.
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    /// A client with its own connection pool (a new one per broker run, so no request reuses a
    /// connection to a killed process).
    pub fn new(addr: SocketAddr) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .no_proxy()
            .build()
            .expect("http client");
        Self {
            client,
            base: format!("http://{addr}"),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<(u16, Value), NoAnswer> {
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    async fn post(&self, path: &str, body: Value) -> Result<(u16, Value), NoAnswer> {
        let url = format!("{}{path}", self.base);
        self.send(self.client.post(url).json(&body)).await
    }

    async fn get(&self, path: &str) -> Result<(u16, Value), NoAnswer> {
        self.send(self.client.get(format!("{}{path}", self.base)))
            .await
    }

    /// `POST /v1/topics`.
    pub async fn create_topic(&self, name: &str, queues: u32) -> Result<(u16, Value), NoAnswer> {
        self.post("/v1/topics", json!({"name": name, "queues": queues}))
            .await
    }

    /// `POST /v1/topics/{topic}/messages`; `delay_ms` schedules it.
    pub async fn produce(
        &self,
        topic: &str,
        key: &str,
        body: &str,
        delay_ms: Option<u64>,
    ) -> Result<(u16, Value), NoAnswer> {
        let mut m = json!({"body": body, "keys": [key], "tag": "loop"});
        if let Some(d) = delay_ms {
            m["delay_ms"] = json!(d);
        }
        self.post(&format!("/v1/topics/{topic}/messages"), m).await
    }

    /// `POST /v1/topics/{topic}/transactions`: a half message.
    pub async fn half(
        &self,
        topic: &str,
        group: &str,
        key: &str,
        body: &str,
    ) -> Result<(u16, Value), NoAnswer> {
        let m = json!({"body": body, "keys": [key], "tag": "loop", "producer_group": group});
        self.post(&format!("/v1/topics/{topic}/transactions"), m)
            .await
    }

    /// `POST /v1/transactions/{id}/commit` or `/rollback`.
    pub async fn decide(&self, txn_id: &str, commit: bool) -> Result<(u16, Value), NoAnswer> {
        let what = if commit { "commit" } else { "rollback" };
        self.post(&format!("/v1/transactions/{txn_id}/{what}"), json!({}))
            .await
    }

    /// `GET /v1/producer-groups/{group}/checks`: pending check-backs.
    pub async fn checks(&self, group: &str, wait_ms: u64) -> Result<(u16, Value), NoAnswer> {
        self.get(&format!(
            "/v1/producer-groups/{group}/checks?wait_ms={wait_ms}&max=32"
        ))
        .await
    }

    /// `DELETE /v1/topics/{topic}/scheduled/{key}`.
    pub async fn cancel(&self, topic: &str, key: &str) -> Result<(u16, Value), NoAnswer> {
        let url = format!("{}/v1/topics/{topic}/scheduled/{key}", self.base);
        self.send(self.client.delete(url)).await
    }

    /// `POST /v1/groups/{group}/topics/{topic}/receive`.
    pub async fn receive(
        &self,
        group: &str,
        topic: &str,
        wait_ms: u64,
    ) -> Result<(u16, Value), NoAnswer> {
        let body = json!({"max": 32, "wait_ms": wait_ms, "visibility_ms": 60_000});
        self.post(&format!("/v1/groups/{group}/topics/{topic}/receive"), body)
            .await
    }

    /// `POST /v1/groups/{group}/ack`.
    pub async fn ack(&self, group: &str, receipts: Vec<String>) -> Result<(u16, Value), NoAnswer> {
        self.post(
            &format!("/v1/groups/{group}/ack"),
            json!({"receipts": receipts}),
        )
        .await
    }

    /// `GET /healthz`.
    pub async fn health(&self) -> Result<(u16, Value), NoAnswer> {
        self.get("/healthz").await
    }

    /// `GET /v1/topics/{topic}`.
    pub async fn topic(&self, name: &str) -> Result<(u16, Value), NoAnswer> {
        self.get(&format!("/v1/topics/{name}")).await
    }

    /// `GET /v1/groups/{group}?topic=`: committed offsets per queue (404: none yet).
    pub async fn group(&self, group: &str, topic: &str) -> Result<(u16, Value), NoAnswer> {
        self.get(&format!("/v1/groups/{group}?topic={topic}")).await
    }
}

/// A string field of a JSON answer.
pub fn str_field<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    v.get(name).and_then(Value::as_str)
}
