//! One conformance suite, run against both queue backends: the embedded queue and Redis
//! Streams on a real server (`V4POST_TEST_REDIS`, default redis://127.0.0.1:6379; the test
//! command starts one when absent).

use orchestrator::queue::{self, Queue, QueueConfig};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn cfg() -> QueueConfig {
    QueueConfig {
        visibility_timeout: Duration::from_millis(400),
        max_deliveries: 3,
        reconnect_deadline: Duration::from_secs(3),
    }
}

fn redis_url() -> String {
    std::env::var("V4POST_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("test-{name}-{}-{nanos}", std::process::id())
}

/// (backend name, queue, a function opening another handle on the same queue — for Redis a
/// new connection, as a separate worker process would have).
type Backend = (&'static str, Arc<dyn Queue>, Box<dyn Fn() -> Arc<dyn Queue>>);

fn backends(name: &str) -> Vec<Backend> {
    let run = unique(name);
    let redis = queue::open(&redis_url(), &run, cfg())
        .unwrap_or_else(|e| panic!("Redis must be running for the queue tests ({e}); `scripts/test.sh` starts it"));
    let embedded = queue::open("embedded", name, cfg()).unwrap();
    let e2 = embedded.clone();
    vec![
        ("embedded", embedded, Box::new(move || e2.clone())),
        ("redis", redis, Box::new(move || queue::open(&redis_url(), &run, cfg()).unwrap())),
    ]
}

const W: Duration = Duration::from_millis(50);

#[test]
fn fifo_ack_and_depth() {
    for (b, q, _) in backends("fifo") {
        for i in 0..5 {
            q.push("jobs", &format!("m{i}")).unwrap();
        }
        assert_eq!(q.depth("jobs").unwrap(), 5, "{b}");
        for i in 0..5 {
            let d = q.pop("jobs", "c1", W).unwrap().unwrap_or_else(|| panic!("{b}: message {i}"));
            assert_eq!(d.payload, format!("m{i}"), "{b}");
            assert_eq!(d.deliveries, 1, "{b}");
            q.ack(&d).unwrap();
        }
        assert_eq!(q.depth("jobs").unwrap(), 0, "{b}");
        let t = Instant::now();
        assert!(q.pop("jobs", "c1", Duration::from_millis(200)).unwrap().is_none(), "{b}");
        assert!(t.elapsed() >= Duration::from_millis(150), "{b}: pop waited {:?}", t.elapsed());
        // acked messages never come back, even after the visibility timeout
        std::thread::sleep(Duration::from_millis(500));
        assert!(q.pop("jobs", "c2", W).unwrap().is_none(), "{b}");
        // topics are independent
        q.push("other", "x").unwrap();
        assert!(q.pop("jobs", "c1", W).unwrap().is_none(), "{b}");
        assert_eq!(q.pop("other", "c1", W).unwrap().unwrap().payload, "x", "{b}");
    }
}

#[test]
fn a_dead_consumers_message_is_redelivered() {
    for (b, q, _) in backends("redeliver") {
        q.push("jobs", "work").unwrap();
        let first = q.pop("jobs", "dies", W).unwrap().unwrap();
        // not visible to others while in flight
        assert!(q.pop("jobs", "alive", Duration::from_millis(100)).unwrap().is_none(), "{b}");
        assert_eq!(q.depth("jobs").unwrap(), 1, "{b}: in flight still counts");
        // the consumer never acks: after the visibility timeout another one gets it
        let again =
            q.pop("jobs", "alive", Duration::from_secs(3)).unwrap().unwrap_or_else(|| panic!("{b}: not redelivered"));
        assert_eq!(again.payload, "work", "{b}");
        assert_eq!(again.deliveries, 2, "{b}");
        assert_eq!(again.id, first.id, "{b}");
        q.ack(&again).unwrap();
        assert_eq!(q.depth("jobs").unwrap(), 0, "{b}");
    }
}

#[test]
fn a_poison_message_ends_in_the_dead_letters_with_its_error() {
    for (b, q, _) in backends("poison") {
        q.push("jobs", "poison").unwrap();
        q.push("jobs", "fine").unwrap();
        let mut seen_poison = 0;
        let mut fine = 0;
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            let Some(d) = q.pop("jobs", "w", Duration::from_millis(100)).unwrap() else {
                if fine == 1 && seen_poison == 3 {
                    break;
                }
                continue;
            };
            if d.payload == "poison" {
                seen_poison += 1;
                assert_eq!(d.deliveries, seen_poison, "{b}");
                q.fail(&d, &format!("bad job (attempt {seen_poison})")).unwrap();
            } else {
                fine += 1;
                q.ack(&d).unwrap();
            }
        }
        assert_eq!((seen_poison, fine), (3, 1), "{b}");
        let dead = q.dead_letters("jobs").unwrap();
        assert_eq!(dead.len(), 1, "{b}: {dead:?}");
        assert_eq!(dead[0].payload, "poison", "{b}");
        assert_eq!(dead[0].error, "bad job (attempt 3)", "{b}");
        assert_eq!(dead[0].deliveries, 3, "{b}");
        assert_eq!(q.depth("jobs").unwrap(), 0, "{b}");
    }
}

#[test]
fn concurrent_consumers_get_each_message_once() {
    for (b, q, reopen) in backends("concurrent") {
        let n = 60;
        for i in 0..n {
            q.push("jobs", &i.to_string()).unwrap();
        }
        let mut handles = Vec::new();
        for c in 0..3 {
            // Redis: one connection per consumer, as separate workers would have
            let qc = reopen();
            handles.push(std::thread::spawn(move || {
                let mut got = Vec::new();
                while let Some(d) = qc.pop("jobs", &format!("c{c}"), Duration::from_millis(300)).unwrap() {
                    got.push(d.payload.clone());
                    qc.ack(&d).unwrap();
                }
                got
            }));
        }
        let all: Vec<String> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        let uniq: HashSet<&String> = all.iter().collect();
        assert_eq!(all.len(), n, "{b}: {} deliveries", all.len());
        assert_eq!(uniq.len(), n, "{b}");
    }
}

#[test]
fn shared_values() {
    for (b, q, _) in backends("kv") {
        assert_eq!(q.get("policy").unwrap(), None, "{b}");
        q.set("policy", r#"{"version":3}"#).unwrap();
        assert_eq!(q.get("policy").unwrap().as_deref(), Some(r#"{"version":3}"#), "{b}");
    }
}

#[test]
fn bad_urls_and_unreachable_servers_are_clear_errors_without_secrets() {
    let e = queue::open("kafka://x", "r", cfg()).err().unwrap().to_string();
    assert!(e.contains("redis://"), "{e}");
    let c = QueueConfig { reconnect_deadline: Duration::from_millis(300), ..cfg() };
    let e = queue::open("redis://bob:hunter2@127.0.0.1:1", "r", c).err().unwrap().to_string();
    assert!(!e.contains("hunter2"), "{e}");
    assert!(e.contains("unreachable"), "{e}");
}

/// A job longer than the visibility timeout keeps its lease while its worker lives (a
/// heartbeat renews it), and is redelivered once the heartbeat stops (the worker died).
#[test]
fn a_live_workers_long_job_is_not_redelivered_until_it_dies() {
    for (b, q, reopen) in backends("lease") {
        q.push("jobs", "long").unwrap();
        let d = q.pop("jobs", "worker", W).unwrap().unwrap();
        let lease = queue::Lease::start(q.clone(), &d, "worker");
        // three visibility timeouts (400 ms) pass while the worker is alive and on the job
        let other = reopen();
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(1200) {
            let got = other.pop("jobs", "thief", Duration::from_millis(100)).unwrap();
            assert!(got.is_none(), "{b}: a live worker's job was redelivered after {:?}", t.elapsed());
        }
        // the worker dies: its heartbeat stops with it
        drop(lease);
        let t = Instant::now();
        let again = other.pop("jobs", "survivor", Duration::from_secs(3)).unwrap();
        let again = again.unwrap_or_else(|| panic!("{b}: a dead worker's job was never redelivered"));
        assert_eq!((again.id.as_str(), again.deliveries), (d.id.as_str(), 2), "{b}");
        assert!(t.elapsed() < Duration::from_secs(2), "{b}: redelivered after {:?}", t.elapsed());
        other.ack(&again).unwrap();
        // renewing an acked message is harmless and does not resurrect it
        q.extend(&d, "worker").unwrap();
        assert!(other.pop("jobs", "survivor", Duration::from_millis(600)).unwrap().is_none(), "{b}");
    }
}
