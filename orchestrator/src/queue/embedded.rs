//! The in-process queue: one mutex-protected table per process, a condition variable for
//! blocking pops, and the same redelivery and dead-letter rules as the Redis backend.

use super::{DeadLetter, Delivery, Queue, QueueConfig, Result};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

struct Msg {
    id: String,
    payload: String,
    deliveries: u32,
    last_error: Option<String>,
}

struct InFlight {
    msg: Msg,
    since: Instant,
}

#[derive(Default)]
struct Topic {
    ready: VecDeque<Msg>,
    in_flight: BTreeMap<String, InFlight>,
    dead: Vec<DeadLetter>,
}

#[derive(Default)]
struct State {
    topics: HashMap<String, Topic>,
    kv: HashMap<String, String>,
    next_id: u64,
}

pub struct EmbeddedQueue {
    cfg: QueueConfig,
    state: Mutex<State>,
    signal: Condvar,
}

impl EmbeddedQueue {
    pub fn new(cfg: QueueConfig) -> Self {
        EmbeddedQueue { cfg, state: Mutex::new(State::default()), signal: Condvar::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the table half-updated (every update
        // is a single insert/remove), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Move timed-out in-flight messages back to ready (or to the dead letters).
    fn reclaim(&self, t: &mut Topic) {
        let now = Instant::now();
        let expired: Vec<String> = t
            .in_flight
            .iter()
            .filter(|(_, f)| now.duration_since(f.since) >= self.cfg.visibility_timeout)
            .map(|(k, _)| k.clone())
            .collect();
        for id in expired {
            if let Some(f) = t.in_flight.remove(&id) {
                self.requeue(t, f.msg);
            }
        }
    }

    fn requeue(&self, t: &mut Topic, m: Msg) {
        if m.deliveries >= self.cfg.max_deliveries {
            t.dead.push(DeadLetter {
                id: m.id,
                payload: m.payload,
                error: m.last_error.unwrap_or_else(|| format!("not acknowledged after {} deliveries", m.deliveries)),
                deliveries: m.deliveries,
            });
        } else {
            t.ready.push_front(m);
        }
    }
}

impl Queue for EmbeddedQueue {
    fn push(&self, topic: &str, payload: &str) -> Result<String> {
        let mut s = self.lock();
        s.next_id += 1;
        let id = format!("{}-0", s.next_id);
        s.topics.entry(topic.to_string()).or_default().ready.push_back(Msg {
            id: id.clone(),
            payload: payload.to_string(),
            deliveries: 0,
            last_error: None,
        });
        drop(s);
        self.signal.notify_all();
        Ok(id)
    }

    fn pop(&self, topic: &str, _consumer: &str, wait: Duration) -> Result<Option<Delivery>> {
        let deadline = Instant::now() + wait;
        let mut s = self.lock();
        loop {
            let t = s.topics.entry(topic.to_string()).or_default();
            self.reclaim(t);
            if let Some(mut m) = t.ready.pop_front() {
                m.deliveries += 1;
                let d = Delivery {
                    topic: topic.to_string(),
                    id: m.id.clone(),
                    payload: m.payload.clone(),
                    deliveries: m.deliveries,
                };
                t.in_flight.insert(m.id.clone(), InFlight { msg: m, since: Instant::now() });
                return Ok(Some(d));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            // wake for pushes, or when the oldest in-flight message may have timed out
            let until_reclaim = t
                .in_flight
                .values()
                .map(|f| (f.since + self.cfg.visibility_timeout).saturating_duration_since(now))
                .min()
                .unwrap_or(Duration::MAX);
            let nap = (deadline - now).min(until_reclaim).max(Duration::from_millis(1));
            s = self.signal.wait_timeout(s, nap).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    fn ack(&self, d: &Delivery) -> Result<()> {
        let mut s = self.lock();
        if let Some(t) = s.topics.get_mut(&d.topic) {
            t.in_flight.remove(&d.id);
        }
        Ok(())
    }

    fn fail(&self, d: &Delivery, error: &str) -> Result<()> {
        let mut s = self.lock();
        if let Some(t) = s.topics.get_mut(&d.topic) {
            if let Some(mut f) = t.in_flight.remove(&d.id) {
                f.msg.last_error = Some(error.to_string());
                self.requeue(t, f.msg);
            }
        }
        drop(s);
        self.signal.notify_all();
        Ok(())
    }

    fn depth(&self, topic: &str) -> Result<usize> {
        let s = self.lock();
        Ok(s.topics.get(topic).map_or(0, |t| t.ready.len() + t.in_flight.len()))
    }

    fn dead_letters(&self, topic: &str) -> Result<Vec<DeadLetter>> {
        Ok(self.lock().topics.get(topic).map(|t| t.dead.clone()).unwrap_or_default())
    }

    fn set(&self, key: &str, value: &str) -> Result<()> {
        self.lock().kv.insert(key.to_string(), value.to_string());
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<String>> {
        Ok(self.lock().kv.get(key).cloned())
    }

    fn describe(&self) -> String {
        "embedded (in-process)".into()
    }

    fn extend(&self, d: &Delivery, _consumer: &str) -> Result<()> {
        let mut s = self.lock();
        if let Some(f) = s.topics.get_mut(&d.topic).and_then(|t| t.in_flight.get_mut(&d.id)) {
            f.since = Instant::now();
        }
        Ok(())
    }

    fn visibility_timeout(&self) -> Duration {
        self.cfg.visibility_timeout
    }
}
