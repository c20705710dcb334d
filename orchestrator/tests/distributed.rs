//! A GRPO stage and an OPD stage across separate processes through Redis: a trainer, two
//! rollout workers and a teacher worker on loopback. One rollout worker is killed with
//! SIGKILL in the middle of a job, a poison message ends in the dead-letter stream, and the
//! Redis server is restarted during the run. The run completes and every trajectory is
//! stored exactly once.
//!
//! Uses a private `redis-server` (installed by the test command) on a free port, so it can be
//! restarted without touching the machine's server.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_redis(port: u16) -> Child {
    let c = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (scripts/test.sh installs it)");
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "redis-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    c
}

fn v4post(dir: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_v4post"))
        .current_dir(dir)
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn v4post")
}

/// Forward a child's stderr lines to a channel (and keep them for failure messages).
fn lines(child: &mut Child, tag: &'static str) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(format!("[{tag}] {l}"));
        }
    });
    rx
}

fn drain(rx: &mpsc::Receiver<String>, log: &mut Vec<String>) {
    while let Ok(l) = rx.try_recv() {
        log.push(l);
    }
}

#[test]
fn trainer_and_workers_survive_a_killed_worker_a_poison_message_and_a_redis_restart() {
    let port = free_port();
    let mut redis = start_redis(port);
    let url = format!("redis://127.0.0.1:{port}");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pipeline = format!(
        r#"
[run]
name = "dist"
seed = 2
queue = "{url}"
[model]
base = "preset:tiny"
[workers]
job_prompts = 1
visibility_timeout_s = 2.0
resend_after_s = 8.0
[[stage]]
kind = "grpo"
experts = ["math.add", "if.upper"]
steps = 3
prompts = 4
group = 4
[[stage]]
kind = "opd"
steps = 3
prompts = 6
[[stage]]
kind = "eval"
n = 2
harder = "math.add"
"#
    );
    std::fs::write(dir.join("pipeline.toml"), pipeline).unwrap();
    let mut log = Vec::new();
    let mut trainer = v4post(dir, &["run", "pipeline.toml", "--json"]);
    let t_rx = lines(&mut trainer, "trainer");
    let t0 = Instant::now();
    while !dir.join("runs/dist/pipeline.toml").exists() {
        assert!(t0.elapsed() < Duration::from_secs(60), "trainer did not create its run directory");
        std::thread::sleep(Duration::from_millis(50));
    }
    let worker = |kind: &str| {
        v4post(
            dir,
            &["worker", kind, "--queue", &url, "--name", "dist", "--runs-dir", "runs", "--visibility-timeout", "2"],
        )
    };
    let mut victim = worker("rollout");
    let v_rx = lines(&mut victim, "victim");
    let mut survivor = worker("rollout");
    let s_rx = lines(&mut survivor, "survivor");
    let mut teacher = worker("teacher");
    let th_rx = lines(&mut teacher, "teacher");

    // a poison message: workers fail it until it is dead-lettered with its error
    let q = orchestrator::queue::open(&url, "dist", Default::default()).unwrap();
    q.push("rollout", "{not a job").unwrap();

    // SIGKILL the victim in the middle of a job
    let mut killed = false;
    let mut restarted = false;
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        assert!(Instant::now() < deadline, "run did not finish:\n{}", log.join("\n"));
        for rx in [&t_rx, &s_rx, &th_rx] {
            drain(rx, &mut log);
        }
        while let Ok(l) = v_rx.try_recv() {
            let started = l.contains("job started") && !l.contains("deliveries=4");
            log.push(l);
            if started
                && !killed
                && log.iter().filter(|l| l.contains("[victim]") && l.contains("job done")).count() >= 1
            {
                victim.kill().unwrap(); // SIGKILL
                killed = true;
                log.push("[test] victim killed mid-job".into());
            }
        }
        // once the poison is dead-lettered and the victim is gone, restart Redis
        if killed && !restarted && log.iter().any(|l| l.contains("[trainer]") && l.contains("grpo-if.upper")) {
            let dead = q.dead_letters("rollout").unwrap();
            if !dead.is_empty() {
                assert_eq!(dead[0].payload, "{not a job");
                assert!(dead[0].error.contains("malformed rollout job"), "{:?}", dead[0]);
                redis.kill().unwrap();
                redis.wait().unwrap();
                log.push("[test] redis stopped".into());
                std::thread::sleep(Duration::from_millis(1500));
                redis = start_redis(port);
                log.push("[test] redis restarted".into());
                restarted = true;
            }
        }
        if let Some(s) = trainer.try_wait().unwrap() {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    for rx in [&t_rx, &s_rx, &th_rx, &v_rx] {
        drain(rx, &mut log);
    }
    assert!(status.success(), "trainer failed:\n{}", log.join("\n"));
    assert!(killed, "the victim never started a second job:\n{}", log.join("\n"));
    assert!(restarted, "redis was not restarted:\n{}", log.join("\n"));
    // workers leave when the run is finished
    for (name, w) in [("survivor", &mut survivor), ("teacher", &mut teacher)] {
        let t = Instant::now();
        while w.try_wait().unwrap().is_none() {
            if t.elapsed() > Duration::from_secs(20) {
                w.kill().ok();
                panic!("{name} worker did not exit after the run finished");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let _ = victim.wait();
    redis.kill().ok();
    let _ = redis.wait();

    // every trajectory exactly once, physically, and all of them there
    let run = dir.join("runs/dist");
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_stage: BTreeMap<String, usize> = BTreeMap::new();
    for stage in std::fs::read_dir(run.join("trajectories")).unwrap() {
        let d = stage.unwrap().path();
        for shard in datasets::store::list_shards(&d).unwrap() {
            for id in datasets::store::read_ids(&shard).unwrap() {
                *by_stage.entry(d.file_name().unwrap().to_string_lossy().into_owned()).or_default() += 1;
                *ids.entry(id).or_default() += 1;
            }
        }
    }
    let dup: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dup.is_empty(), "stored twice: {dup:?}");
    // GRPO: 3 steps × 4 prompts × 4 samples, plus dynamic-sampling refills in whole groups
    for s in ["grpo-math.add", "grpo-if.upper"] {
        let n = by_stage.get(s).copied().unwrap_or(0);
        assert!(n >= 3 * 4 * 4 && n % 4 == 0, "{s}: {n} trajectories ({by_stage:?})");
    }
    assert_eq!(by_stage.get("opd"), Some(&(3 * 6)), "{by_stage:?}");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["domains"].as_array().map(Vec::len), Some(13));
    let text = log.join("\n");
    // the killed worker's job was reclaimed and redone by the survivor
    assert!(
        log.iter().any(|l| l.starts_with("[survivor]") && l.contains("job started") && !l.contains("deliveries=1")),
        "no redelivered job:\n{text}"
    );
    // the restart was noticed and survived
    assert!(text.contains("reconnecting") || text.contains("unreachable"), "no reconnect seen:\n{text}");
    assert!(text.contains("[survivor]") && text.contains("job done"));
    assert!(text.contains("[teacher]") && text.contains("job done"), "the teacher worker did no work");
}
