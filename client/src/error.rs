//! [`ClientError`]: every way a client call can fail, typed so callers can tell "try again"
//! from "fix your input" without parsing text.

use sluice_protocol::response_code as code;
use sluice_remoting::RemotingError;

/// Why a client call failed.
///
/// ```
/// use sluice_client::ClientError;
///
/// let err = ClientError::Broker { addr: "127.0.0.1:10911".into(), code: 17, remark: "no topic".into() };
/// assert_eq!(err.response_code(), Some(17));
/// assert!(err.to_string().contains("TOPIC_NOT_EXIST"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A builder was given settings that cannot work together.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The message breaks a protocol limit (topic name, body size, property characters).
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// No name server gave a route for the topic.
    #[error("no route for topic {topic}: {reason}")]
    NoRoute {
        /// The topic.
        topic: String,
        /// What the name servers said, or why they could not be asked.
        reason: String,
    },
    /// The name servers know no such topic (response 17).
    #[error("topic {0} does not exist")]
    TopicNotFound(String),
    /// A broker name from a route has no master address.
    #[error("broker {0} has no master address in the route")]
    BrokerNotFound(String),
    /// An address could not be resolved.
    #[error("cannot resolve {addr}: {reason}")]
    Resolve {
        /// The `host:port` text.
        addr: String,
        /// The resolver's answer.
        reason: String,
    },
    /// The connection failed, closed, or the request timed out. A timed-out send may still
    /// have been stored.
    #[error("remoting with {addr}: {source}")]
    Remoting {
        /// The peer.
        addr: String,
        /// What went wrong.
        #[source]
        source: RemotingError,
    },
    /// The server answered with a failure code.
    #[error("{addr} answered {} ({code}): {remark}", code_name(*.code))]
    Broker {
        /// The peer.
        addr: String,
        /// The response code.
        code: i32,
        /// The server's remark.
        remark: String,
    },
    /// The server answered something this client cannot read.
    #[error("unreadable response from {addr}: {reason}")]
    Protocol {
        /// The peer.
        addr: String,
        /// What was wrong with it.
        reason: String,
    },
    /// Every attempt of a send failed; `last` is the final failure.
    #[error("send to {topic} failed after {attempts} attempt(s): {last}")]
    SendFailed {
        /// The topic.
        topic: String,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        #[source]
        last: Box<ClientError>,
    },
    /// A send's `send_timeout` ran out (route lookups and connecting count toward it) before
    /// an answer came. When an attempt was on its way, the message may still have been stored.
    #[error("send to {topic} timed out after {timeout:?} ({attempts} attempt(s) started)")]
    SendTimeout {
        /// The topic.
        topic: String,
        /// The budget that ran out.
        timeout: std::time::Duration,
        /// Attempts that went out, the last one perhaps cut short.
        attempts: u32,
    },
    /// The client was shut down.
    #[error("the client is shut down")]
    Shutdown,
    /// A database call of the idempotency helper failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Running the processed-messages migration failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

fn code_name(c: i32) -> &'static str {
    code::name(c).unwrap_or("UNKNOWN")
}

impl ClientError {
    /// The broker's response code, when the failure is one.
    pub fn response_code(&self) -> Option<i32> {
        match self {
            Self::Broker { code, .. } => Some(*code),
            Self::SendFailed { last, .. } => last.response_code(),
            _ => None,
        }
    }

    /// True for failures where another attempt (possibly on another broker) may succeed:
    /// network trouble and the codes RocketMQ producers retry (§2.2: 1, 2, 14, 16, 17, 204,
    /// 205, 1500).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Remoting { .. } | Self::Resolve { .. } | Self::BrokerNotFound(_) => true,
            Self::Broker { code: c, .. } => matches!(
                *c,
                code::SYSTEM_ERROR
                    | code::SYSTEM_BUSY
                    | code::SERVICE_NOT_AVAILABLE
                    | code::NO_PERMISSION
                    | code::TOPIC_NOT_EXIST
                    | code::NO_BUYER_ID
                    | code::NOT_IN_CURRENT_UNIT
                    | code::GO_AWAY
            ),
            _ => false,
        }
    }

    pub(crate) fn remoting(addr: impl Into<String>, source: RemotingError) -> Self {
        Self::Remoting {
            addr: addr.into(),
            source,
        }
    }

    pub(crate) fn protocol(addr: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Protocol {
            addr: addr.into(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_codes_follow_rocketmq_producers() {
        let broker = |code| ClientError::Broker {
            addr: "a".into(),
            code,
            remark: String::new(),
        };
        assert!(broker(17).is_retryable());
        assert!(broker(2).is_retryable());
        assert!(
            !broker(13).is_retryable(),
            "MESSAGE_ILLEGAL will not get better"
        );
        assert!(!ClientError::InvalidMessage("x".into()).is_retryable());
        let failed = ClientError::SendFailed {
            topic: "T".into(),
            attempts: 3,
            last: Box::new(broker(14)),
        };
        assert_eq!(failed.response_code(), Some(14));
    }
}
