//! Work queues with at-least-once delivery: an in-process backend (the default on one
//! machine) and Redis Streams with consumer groups (a cluster). Both implement [`Queue`]
//! with the same semantics, checked by one conformance suite:
//!
//! * `push` appends a message to a topic; `pop` hands it to one consumer; `ack` removes it.
//! * A message popped but not acked within `visibility_timeout` (its consumer died or
//!   hangs) is handed out again; `fail` records an error and makes it available at once.
//! * A message delivered more than `max_deliveries` times goes to the topic's dead-letter
//!   list with its last error instead of being handed out again.
//! * `set`/`get` hold small shared values (the published policy version).
//!
//! Results are idempotent by `traj_id` in the stores, so a redelivered job never
//! duplicates a trajectory.

pub mod embedded;
pub mod redis_backend;

use std::sync::Arc;
use std::time::Duration;

/// Queue errors; messages never contain credentials.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue {backend}: {msg}")]
    Backend { backend: String, msg: String },
    #[error("queue {backend}: unreachable for {secs:.0}s, giving up: {msg}")]
    Unreachable { backend: String, secs: f64, msg: String },
    #[error("queue URL: {0}")]
    Url(String),
}

pub type Result<T> = std::result::Result<T, QueueError>;

/// Delivery settings shared by the backends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueConfig {
    /// A popped message not acked for this long is handed out again.
    pub visibility_timeout: Duration,
    /// Deliveries after which a message goes to the dead-letter list.
    pub max_deliveries: u32,
    /// How long to keep reconnecting to an unreachable server before failing.
    pub reconnect_deadline: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            visibility_timeout: Duration::from_secs(60),
            max_deliveries: 4,
            reconnect_deadline: Duration::from_secs(300),
        }
    }
}

/// A message handed to a consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub topic: String,
    pub id: String,
    pub payload: String,
    /// 1 on first delivery.
    pub deliveries: u32,
}

/// A message that was given up on.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeadLetter {
    pub id: String,
    pub payload: String,
    pub error: String,
    pub deliveries: u32,
}

pub trait Queue: Send + Sync {
    /// Append a message; returns its id.
    fn push(&self, topic: &str, payload: &str) -> Result<String>;
    /// Hand the next available message to `consumer`, waiting up to `wait`.
    fn pop(&self, topic: &str, consumer: &str, wait: Duration) -> Result<Option<Delivery>>;
    /// The message is done; it is never handed out again.
    fn ack(&self, d: &Delivery) -> Result<()>;
    /// The message failed with `error`; hand it out again now (or dead-letter it).
    fn fail(&self, d: &Delivery, error: &str) -> Result<()>;
    /// Messages waiting or in flight.
    fn depth(&self, topic: &str) -> Result<usize>;
    fn dead_letters(&self, topic: &str) -> Result<Vec<DeadLetter>>;
    fn set(&self, key: &str, value: &str) -> Result<()>;
    fn get(&self, key: &str) -> Result<Option<String>>;
    /// Backend and address, without credentials.
    fn describe(&self) -> String;
}

/// Open a queue: `embedded` (in-process; shared by the threads of this process) or a
/// `redis://` / `rediss://` URL. `run` namespaces the keys (`v4post:{run}:`).
pub fn open(spec: &str, run: &str, cfg: QueueConfig) -> Result<Arc<dyn Queue>> {
    if spec == "embedded" {
        return Ok(Arc::new(embedded::EmbeddedQueue::new(cfg)));
    }
    if spec.starts_with("redis://") || spec.starts_with("rediss://") || spec.starts_with("unix://") {
        return Ok(Arc::new(redis_backend::RedisQueue::connect(spec, run, cfg)?));
    }
    Err(QueueError::Url(format!(
        "`{}`: use `embedded`, redis://[user:password@]host:port or rediss://... for TLS",
        redact_url(spec)
    )))
}

/// The URL with any password replaced by `***` (for logs, errors and run directories).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let (auth, host) = match rest.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, rest),
    };
    match auth {
        None => url.to_string(),
        Some(a) => match a.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => format!("{scheme}://***@{host}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn credentials_are_redacted() {
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact_url("redis://alice:s3cret@h:1/0"), "redis://alice:***@h:1/0");
        assert_eq!(redact_url("rediss://:s3cret@h:1"), "rediss://:***@h:1");
        assert_eq!(redact_url("redis://tok3n@h:1"), "redis://***@h:1");
        assert!(!redact_url("redis://u:p@ss@h:1").contains("p@ss"));
    }
}
