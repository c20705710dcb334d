//! Redis Streams backend. One stream per topic with one consumer group:
//! `XADD` to push; `XAUTOCLAIM` (messages idle longer than the visibility timeout, i.e. of
//! a dead consumer) then `XREADGROUP ... >` to pop; `XACK` + `XDEL` to ack; the delivery
//! counter of the pending-entries list decides when a message goes to the dead-letter
//! stream. Connection losses (server restart, network) are retried with exponential backoff
//! up to `reconnect_deadline`. Keys: `v4post:{run}:q:{topic}` (+ `:dead`, `:errors`) and
//! `v4post:{run}:kv:{key}`.

use super::{redact_url, DeadLetter, Delivery, Queue, QueueConfig, QueueError, Result};
use redis::{Client, Connection, RedisError, Value};
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const GROUP: &str = "workers";

pub struct RedisQueue {
    client: Client,
    /// Only to scrub it from error texts.
    secret: Option<String>,
    url: String,
    prefix: String,
    cfg: QueueConfig,
    conn: Mutex<Option<Connection>>,
    groups: Mutex<HashSet<String>>,
    /// Last reclaim scan (XAUTOCLAIM runs at most every `CLAIM_EVERY`, not on every pop).
    last_claim: Mutex<Option<Instant>>,
}

const CLAIM_EVERY: Duration = Duration::from_millis(200);

/// Wrong or missing credentials (`WRONGPASS`, `NOAUTH`, a failed `AUTH`): retrying
/// cannot help, so it is fatal at once rather than treated as an unreachable server.
fn auth_failure(e: &RedisError) -> bool {
    let code = e.code().unwrap_or("");
    let text = e.to_string();
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(code, "WRONGPASS" | "NOAUTH")
        || text.contains("WRONGPASS")
        || text.contains("NOAUTH")
}

fn retryable(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

impl RedisQueue {
    /// Connect (and check the server answers) — credentials come from the URL
    /// (`redis://user:password@host:port`, warned about), or from [`super::password_from_env`]
    /// (`V4POST_REDIS_PASSWORD`, `--redis-password-file`, `V4POST_REDIS_PASSWORD_FILE`).
    pub fn connect(url: &str, run: &str, cfg: QueueConfig) -> Result<Self> {
        let shown = redact_url(url);
        let mut info: redis::ConnectionInfo = redis::IntoConnectionInfo::into_connection_info(url)
            .map_err(|e| QueueError::Url(format!("{shown}: {:?}", e.kind())))?;
        if let Some(pw) = super::password_from_env()? {
            let r = info.redis_settings().clone().set_password(pw);
            info = info.set_redis_settings(r);
        }
        let secret = info.redis_settings().password().map(str::to_string);
        let client = Client::open(info).map_err(|e| QueueError::Url(format!("{shown}: {:?}", e.kind())))?;
        let q = RedisQueue {
            client,
            secret,
            url: shown,
            prefix: format!("v4post:{run}:"),
            cfg,
            conn: Mutex::new(None),
            groups: Mutex::new(HashSet::new()),
            last_claim: Mutex::new(None),
        };
        q.with_conn(None, |c| redis::cmd("PING").query::<String>(c))?;
        Ok(q)
    }

    fn stream(&self, topic: &str) -> String {
        format!("{}q:{topic}", self.prefix)
    }

    fn err(&self, e: &RedisError) -> QueueError {
        // RedisError's Display never includes the connection URL; keep only kind + detail.
        if auth_failure(e) {
            return QueueError::Auth { backend: self.url.clone(), msg: self.scrub(e) };
        }
        QueueError::Backend { backend: self.url.clone(), msg: self.scrub(e) }
    }

    /// The error's text with the password (if it ever appeared) removed.
    fn scrub(&self, e: &RedisError) -> String {
        let mut s = e.to_string();
        if let Some(pw) = self.secret.as_deref().filter(|p| !p.is_empty()) {
            s = s.replace(pw, "***");
        }
        s
    }

    /// Run `f` on a live connection, reconnecting with backoff on connection errors and
    /// creating the consumer group of `topic` when the server reports it missing (a fresh
    /// or restarted server).
    fn with_conn<T>(
        &self,
        topic: Option<&str>,
        mut f: impl FnMut(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T> {
        let start = Instant::now();
        let mut backoff = Duration::from_millis(50);
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if guard.is_none() {
                match self.client.get_connection_with_timeout(Duration::from_secs(2)) {
                    Ok(c) => *guard = Some(c),
                    Err(e) if auth_failure(&e) => return Err(self.err(&e)),
                    Err(e) => {
                        if start.elapsed() > self.cfg.reconnect_deadline {
                            return Err(QueueError::Unreachable {
                                backend: self.url.clone(),
                                secs: start.elapsed().as_secs_f64(),
                                msg: self.scrub(&e),
                            });
                        }
                        tracing::warn!(queue = %self.url, "queue unreachable ({}), retrying in {:?}", self.scrub(&e), backoff);
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        continue;
                    }
                }
            }
            let Some(conn) = guard.as_mut() else { continue };
            if let Some(t) = topic {
                let key = self.stream(t);
                let known = self.groups.lock().map(|g| g.contains(&key)).unwrap_or(false);
                if !known {
                    let r = redis::cmd("XGROUP")
                        .arg("CREATE")
                        .arg(&key)
                        .arg(GROUP)
                        .arg("0")
                        .arg("MKSTREAM")
                        .query::<Value>(conn);
                    match r {
                        Ok(_) => {}
                        Err(e) if e.code() == Some("BUSYGROUP") => {}
                        Err(e) if retryable(&e) => {
                            *guard = None;
                            continue;
                        }
                        Err(e) => return Err(self.err(&e)),
                    }
                    if let Ok(mut g) = self.groups.lock() {
                        g.insert(key);
                    }
                }
            }
            match f(conn) {
                Ok(v) => return Ok(v),
                Err(e) if e.code() == Some("NOGROUP") => {
                    // the server lost its data (restart without persistence): recreate
                    if let Ok(mut g) = self.groups.lock() {
                        g.clear();
                    }
                }
                Err(e) if retryable(&e) => {
                    *guard = None;
                    if start.elapsed() > self.cfg.reconnect_deadline {
                        return Err(QueueError::Unreachable {
                            backend: self.url.clone(),
                            secs: start.elapsed().as_secs_f64(),
                            msg: self.scrub(&e),
                        });
                    }
                    tracing::warn!(queue = %self.url, "queue connection lost ({}), reconnecting", self.scrub(&e));
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(self.err(&e)),
            }
        }
    }

    /// Delivery count of a pending message.
    fn delivery_count(&self, topic: &str, id: &str) -> Result<u32> {
        let key = self.stream(topic);
        let rows: Vec<(String, String, u64, u64)> = self
            .with_conn(Some(topic), |c| redis::cmd("XPENDING").arg(&key).arg(GROUP).arg(id).arg(id).arg(1).query(c))?;
        Ok(rows.first().map_or(1, |r| r.3 as u32))
    }

    fn dead_letter(&self, topic: &str, id: &str, payload: &str, deliveries: u32) -> Result<()> {
        let key = self.stream(topic);
        let errors = format!("{key}:errors");
        let error: Option<String> =
            self.with_conn(Some(topic), |c| redis::cmd("HGET").arg(&errors).arg(id).query(c))?;
        let error = error.unwrap_or_else(|| format!("not acknowledged after {deliveries} deliveries"));
        self.with_conn(Some(topic), |c| {
            redis::pipe()
                .atomic()
                .cmd("XADD")
                .arg(format!("{key}:dead"))
                .arg("*")
                .arg("id")
                .arg(id)
                .arg("payload")
                .arg(payload)
                .arg("error")
                .arg(&error)
                .arg("deliveries")
                .arg(deliveries)
                .cmd("XACK")
                .arg(&key)
                .arg(GROUP)
                .arg(id)
                .cmd("XDEL")
                .arg(&key)
                .arg(id)
                .cmd("HDEL")
                .arg(&errors)
                .arg(id)
                .query::<Value>(c)
        })?;
        tracing::warn!(topic, id, deliveries, "message moved to the dead-letter stream: {error}");
        Ok(())
    }
}

/// `[id, [field, value, ...]]` → (id, payload).
fn entry(v: &Value) -> Option<(String, String)> {
    let Value::Array(parts) = v else { return None };
    let id = redis::from_redis_value_ref::<String>(parts.first()?).ok()?;
    let fields: Vec<String> = redis::from_redis_value_ref(parts.get(1)?).ok()?;
    let payload = fields.chunks(2).find(|kv| kv[0] == "payload").and_then(|kv| kv.get(1).cloned())?;
    Some((id, payload))
}

impl Queue for RedisQueue {
    fn push(&self, topic: &str, payload: &str) -> Result<String> {
        let key = self.stream(topic);
        self.with_conn(Some(topic), |c| redis::cmd("XADD").arg(&key).arg("*").arg("payload").arg(payload).query(c))
    }

    fn pop(&self, topic: &str, consumer: &str, wait: Duration) -> Result<Option<Delivery>> {
        let key = self.stream(topic);
        let idle_ms = self.cfg.visibility_timeout.as_millis() as u64;
        let deadline = Instant::now() + wait;
        loop {
            // 1. messages of dead or stuck consumers (and failed ones), scanned periodically
            let due = {
                let mut last = self.last_claim.lock().unwrap_or_else(|p| p.into_inner());
                let due = last.is_none_or(|t| t.elapsed() >= CLAIM_EVERY);
                if due {
                    *last = Some(Instant::now());
                }
                due
            };
            let claimed: Value = if due {
                self.with_conn(Some(topic), |c| {
                    redis::cmd("XAUTOCLAIM")
                        .arg(&key)
                        .arg(GROUP)
                        .arg(consumer)
                        .arg(idle_ms)
                        .arg("0-0")
                        .arg("COUNT")
                        .arg(1)
                        .query(c)
                })?
            } else {
                Value::Nil
            };
            if let Value::Array(parts) = &claimed {
                if let Some(Value::Array(entries)) = parts.get(1) {
                    if let Some((id, payload)) = entries.first().and_then(entry) {
                        let n = self.delivery_count(topic, &id)?;
                        if n > self.cfg.max_deliveries {
                            self.dead_letter(topic, &id, &payload, n - 1)?;
                            continue;
                        }
                        if let Ok(mut last) = self.last_claim.lock() {
                            *last = None; // there may be more to reclaim
                        }
                        return Ok(Some(Delivery { topic: topic.into(), id, payload, deliveries: n }));
                    }
                }
            }
            // 2. new messages, blocking (in slices, so reclaimable messages are seen too)
            let left = deadline.saturating_duration_since(Instant::now());
            let block = left.min(CLAIM_EVERY).max(Duration::from_millis(1));
            let read: Value = self.with_conn(Some(topic), |c| {
                c.set_read_timeout(Some(block + Duration::from_secs(5)))?;
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(GROUP)
                    .arg(consumer)
                    .arg("COUNT")
                    .arg(1)
                    .arg("BLOCK")
                    .arg(block.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(">")
                    .query(c)
            })?;
            if let Value::Array(streams) = &read {
                let first = streams.first().and_then(|s| match s {
                    Value::Array(kv) => match kv.get(1) {
                        Some(Value::Array(es)) => es.first().and_then(entry),
                        _ => None,
                    },
                    _ => None,
                });
                if let Some((id, payload)) = first {
                    return Ok(Some(Delivery { topic: topic.into(), id, payload, deliveries: 1 }));
                }
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    fn ack(&self, d: &Delivery) -> Result<()> {
        let key = self.stream(&d.topic);
        self.with_conn(Some(&d.topic), |c| {
            redis::pipe()
                .atomic()
                .cmd("XACK")
                .arg(&key)
                .arg(GROUP)
                .arg(&d.id)
                .cmd("XDEL")
                .arg(&key)
                .arg(&d.id)
                .cmd("HDEL")
                .arg(format!("{key}:errors"))
                .arg(&d.id)
                .query::<Value>(c)
        })?;
        Ok(())
    }

    fn fail(&self, d: &Delivery, error: &str) -> Result<()> {
        let key = self.stream(&d.topic);
        // remember the error, and mark the message idle for a day so the next pop reclaims it
        self.with_conn(Some(&d.topic), |c| {
            redis::pipe()
                .cmd("HSET")
                .arg(format!("{key}:errors"))
                .arg(&d.id)
                .arg(error)
                .cmd("XCLAIM")
                .arg(&key)
                .arg(GROUP)
                .arg("failed")
                .arg(0)
                .arg(&d.id)
                .arg("IDLE")
                .arg(86_400_000u64)
                .arg("JUSTID")
                .query::<Value>(c)
        })?;
        Ok(())
    }

    fn depth(&self, topic: &str) -> Result<usize> {
        let key = self.stream(topic);
        self.with_conn(Some(topic), |c| redis::cmd("XLEN").arg(&key).query(c))
    }

    fn dead_letters(&self, topic: &str) -> Result<Vec<DeadLetter>> {
        let key = format!("{}:dead", self.stream(topic));
        let rows: Value = self.with_conn(None, |c| redis::cmd("XRANGE").arg(&key).arg("-").arg("+").query(c))?;
        let mut out = Vec::new();
        if let Value::Array(es) = rows {
            for e in es {
                let Value::Array(parts) = e else { continue };
                let Some(fv) = parts.get(1) else { continue };
                let fields: Vec<String> = redis::from_redis_value_ref(fv).unwrap_or_default();
                let get = |k: &str| {
                    fields.chunks(2).find(|kv| kv[0] == k).and_then(|kv| kv.get(1).cloned()).unwrap_or_default()
                };
                out.push(DeadLetter {
                    id: get("id"),
                    payload: get("payload"),
                    error: get("error"),
                    deliveries: get("deliveries").parse().unwrap_or(0),
                });
            }
        }
        Ok(out)
    }

    fn set(&self, key: &str, value: &str) -> Result<()> {
        let k = format!("{}kv:{key}", self.prefix);
        self.with_conn(None, |c| redis::cmd("SET").arg(&k).arg(value).query::<Value>(c))?;
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<String>> {
        let k = format!("{}kv:{key}", self.prefix);
        self.with_conn(None, |c| redis::cmd("GET").arg(&k).query(c))
    }

    fn describe(&self) -> String {
        format!("redis {}", self.url)
    }

    /// `XCLAIM ... 0 id JUSTID` by the holder: resets the entry's idle time (so XAUTOCLAIM
    /// leaves it alone for another visibility timeout) without counting a delivery. An id
    /// no longer pending (acked, dead-lettered) is not claimed.
    fn extend(&self, d: &Delivery, consumer: &str) -> Result<()> {
        let key = self.stream(&d.topic);
        self.with_conn(Some(&d.topic), |c| {
            redis::cmd("XCLAIM").arg(&key).arg(GROUP).arg(consumer).arg(0).arg(&d.id).arg("JUSTID").query::<Value>(c)
        })?;
        Ok(())
    }

    fn visibility_timeout(&self) -> Duration {
        self.cfg.visibility_timeout
    }
}
