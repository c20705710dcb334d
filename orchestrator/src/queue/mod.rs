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
    /// Wrong or missing credentials: fatal at once (retrying cannot fix a password).
    #[error("queue {backend}: authentication failed (check the password: V4POST_REDIS_PASSWORD, --redis-password-file or V4POST_REDIS_PASSWORD_FILE): {msg}")]
    Auth { backend: String, msg: String },
    #[error("queue password file {path}: {msg}")]
    PasswordFile { path: String, msg: String },
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
    /// Renew the lease of an in-flight message held by `consumer` (its worker is alive and
    /// still on it): it is not handed out again for another visibility timeout. A message
    /// already acked, failed or dead-lettered is left alone.
    fn extend(&self, d: &Delivery, consumer: &str) -> Result<()>;
    /// How long a popped message stays invisible without a lease renewal.
    fn visibility_timeout(&self) -> Duration;
}

/// A lease heartbeat: while it lives, a thread renews the lease of one delivery every
/// third of the visibility timeout, so a job longer than the timeout is not handed to a
/// second worker while its own worker is alive. Dropping it (the job finished, or the
/// worker's thread unwound) stops the renewals; a killed process stops them with it, and
/// the message is redelivered one visibility timeout after the last renewal.
pub struct Lease {
    stop: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Lease {
    pub fn start(queue: Arc<dyn Queue>, d: &Delivery, consumer: &str) -> Lease {
        let stop = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let every = (queue.visibility_timeout() / 3).max(Duration::from_millis(10));
        let (d, consumer, flag) = (d.clone(), consumer.to_string(), stop.clone());
        let handle = std::thread::spawn(move || renew_until_stopped(&*queue, &d, &consumer, every, &flag));
        Lease { stop, handle: Some(handle) }
    }
}

fn renew_until_stopped(
    queue: &dyn Queue,
    d: &Delivery,
    consumer: &str,
    every: Duration,
    flag: &(std::sync::Mutex<bool>, std::sync::Condvar),
) {
    let (lock, cv) = flag;
    let mut stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let (g, _) = cv.wait_timeout_while(stopped, every, |s| !*s).unwrap_or_else(|p| p.into_inner());
        stopped = g;
        if *stopped {
            return;
        }
        if let Err(e) = queue.extend(d, consumer) {
            tracing::warn!(job = %d.id, "could not renew the job's lease: {e}");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

static PASSWORD_FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// `--redis-password-file`: read the Redis password from this file (set once, at start).
pub fn set_password_file(path: std::path::PathBuf) {
    let _ = PASSWORD_FILE.set(path);
}

/// The Redis password from outside the URL (which would show it in /proc/PID/cmdline):
/// `V4POST_REDIS_PASSWORD`, else the file of `--redis-password-file`, else the file named
/// by `V4POST_REDIS_PASSWORD_FILE`. A file's trailing newline is not part of the password.
pub fn password_from_env() -> Result<Option<String>> {
    if let Some(pw) = std::env::var("V4POST_REDIS_PASSWORD").ok().filter(|p| !p.is_empty()) {
        return Ok(Some(pw));
    }
    let file = PASSWORD_FILE
        .get()
        .cloned()
        .or_else(|| std::env::var_os("V4POST_REDIS_PASSWORD_FILE").filter(|p| !p.is_empty()).map(Into::into));
    let Some(path) = file else { return Ok(None) };
    read_password_file(&path).map(Some)
}

/// The first line of `path`, without its line ending; an empty password is an error.
pub fn read_password_file(path: &std::path::Path) -> Result<String> {
    let err = |msg: String| QueueError::PasswordFile { path: path.display().to_string(), msg };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let pw = text.lines().next().unwrap_or("").to_string();
    if pw.is_empty() {
        return Err(err("empty".into()));
    }
    Ok(pw)
}

/// Whether `spec` carries a password (`user:password@` or a `password=` parameter).
pub fn has_inline_password(spec: &str) -> bool {
    redact_url(spec) != spec
}

/// Open a queue: `embedded` (in-process; shared by the threads of this process) or a
/// `redis://` / `rediss://` URL. `run` namespaces the keys (`v4post:{run}:`).
pub fn open(spec: &str, run: &str, cfg: QueueConfig) -> Result<Arc<dyn Queue>> {
    if spec == "embedded" {
        return Ok(Arc::new(embedded::EmbeddedQueue::new(cfg)));
    }
    if spec.starts_with("redis://") || spec.starts_with("rediss://") || spec.starts_with("unix://") {
        if has_inline_password(spec) {
            tracing::warn!(
                queue = %redact_url(spec),
                "the queue URL carries a password, visible to other users in the process list \
                 (/proc/PID/cmdline): use V4POST_REDIS_PASSWORD or --redis-password-file instead"
            );
        }
        return Ok(Arc::new(redis_backend::RedisQueue::connect(spec, run, cfg)?));
    }
    Err(QueueError::Url(format!(
        "`{}`: use `embedded`, redis://[user:password@]host:port or rediss://... for TLS",
        redact_url(spec)
    )))
}

/// The text with every password replaced by `***` (for logs, errors and run
/// directories). Does not rely on a well-formed URL (a typo such as `redis:/u:p@h` or
/// `u:p@h:1` must not leak): in each whitespace-separated word, the user-info before the
/// last `@` of the authority keeps only its user name, and the value of any `password=`,
/// `pass=`, `pwd=` or `secret=` parameter is hidden.
pub fn redact_url(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while !rest.is_empty() {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        out.push_str(&redact_word(&rest[..end]));
        let ws_end = rest[end..].find(|c: char| !c.is_whitespace()).map_or(rest.len(), |k| end + k);
        out.push_str(&rest[end..ws_end]);
        rest = &rest[ws_end..];
    }
    out
}

/// One URL-ish word: user-info, then query parameters.
fn redact_word(w: &str) -> String {
    let (head, query) = match w.find(['?', '#']) {
        Some(i) => w.split_at(i),
        None => (w, ""),
    };
    format!("{}{}", redact_userinfo(head), redact_params(query))
}

/// `[scheme:][//]user:password@host...` → `...user:***@host...`; `token@host` → `***@host`.
fn redact_userinfo(head: &str) -> String {
    let Some(at) = head.rfind('@') else { return head.to_string() };
    // the user-info starts after the scheme's separator, whatever shape it has
    let start = head[..at].rfind("//").map(|i| i + 2).or_else(|| scheme_end(&head[..at])).unwrap_or(0);
    let (prefix, auth, host) = (&head[..start], &head[start..at], &head[at..]);
    match auth.split_once(':') {
        Some((user, _)) => format!("{prefix}{user}:***{host}"),
        None => format!("{prefix}***{host}"),
    }
}

/// End of a `scheme:` prefix (`redis:` in `redis:u:p@h`), when the word starts with one.
fn scheme_end(s: &str) -> Option<usize> {
    let i = s.find(':')?;
    let scheme = &s[..i];
    let known = ["redis", "rediss", "unix", "redis+unix", "http", "https", "tcp"];
    known.contains(&scheme.to_ascii_lowercase().as_str()).then_some(i + 1)
}

/// `?a=1&password=x` → `?a=1&password=***`.
fn redact_params(query: &str) -> String {
    const SECRET: [&str; 5] = ["password", "pass", "passwd", "pwd", "secret"];
    let mut out = String::with_capacity(query.len());
    for (i, part) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        let lead = part.len() - part.trim_start_matches(['?', '#']).len();
        let (sep, kv) = part.split_at(lead);
        match kv.split_once('=') {
            Some((k, _)) if SECRET.contains(&k.to_ascii_lowercase().as_str()) => out.push_str(&format!("{sep}{k}=***")),
            _ => out.push_str(part),
        }
    }
    out
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

    /// Redaction must not depend on a well-formed `scheme://` (typos are echoed in errors).
    #[test]
    fn redaction_table() {
        let table = [
            ("embedded", "embedded"),
            ("redis://h:6379", "redis://h:6379"),
            ("redis://h:6379/0", "redis://h:6379/0"),
            ("redis:/alice:s3cret@h:6379", "redis:/alice:***@h:6379"),
            ("redis:alice:s3cret@h:6379", "redis:alice:***@h:6379"),
            ("redis//alice:s3cret@h:6379", "redis//alice:***@h:6379"),
            ("alice:s3cret@h:6379", "alice:***@h:6379"),
            (":s3cret@h:6379", ":***@h:6379"),
            ("s3cret@h:6379", "***@h:6379"),
            ("redis:/:s3cret@h", "redis:/:***@h"),
            ("rediss//u:p@ss:w0rd@h:1", "rediss//u:***@h:1"),
            ("redis://h:1/0?password=s3cret", "redis://h:1/0?password=***"),
            ("redis://h:1?db=2&PASSWORD=s3cret&x=1", "redis://h:1?db=2&PASSWORD=***&x=1"),
            ("redis:/h:1?pass=s3cret", "redis:/h:1?pass=***"),
            ("h:1?password=s3cret", "h:1?password=***"),
            ("unix:///tmp/r.sock?pass=s3cret", "unix:///tmp/r.sock?pass=***"),
            ("--queue alice:s3cret@h:1 next", "--queue alice:***@h:1 next"),
        ];
        for (input, want) in table {
            let got = redact_url(input);
            assert_eq!(got, want, "redact_url({input:?})");
            assert!(!got.contains("s3cret") && !got.contains("w0rd"), "{input:?} -> {got:?}");
        }
    }
}
