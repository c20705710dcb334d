//! Authentication against a private password-protected `redis-server` on a free port:
//! a wrong or missing password is a fatal error at once (not retried as if the server
//! were down), and the password can come from a file instead of the URL.
//!
//! One test function: it sets process-wide environment variables.

use orchestrator::queue::{self, QueueConfig, QueueError};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "c0rrect-h0rse";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Killed on drop, so a failing assertion does not leave the server running.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis_with_password(port: u16) -> Server {
    let c = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--requirepass", PASSWORD])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (scripts/test.sh installs it)");
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "redis-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server(c)
}

/// The default reconnect deadline (300 s): an auth failure must not wait for it.
fn cfg() -> QueueConfig {
    QueueConfig::default()
}

fn open_fails_fast_with_auth_error(url: &str, what: &str) {
    let t = Instant::now();
    let e = queue::open(url, "auth", cfg()).err().unwrap_or_else(|| panic!("{what}: connected"));
    assert!(t.elapsed() < Duration::from_secs(3), "{what}: failed only after {:?}", t.elapsed());
    assert!(matches!(e, QueueError::Auth { .. }), "{what}: not an auth error: {e}");
    let msg = e.to_string();
    assert!(msg.contains("authentication failed"), "{what}: {msg}");
    assert!(!msg.contains("wr0ng") && !msg.contains(PASSWORD), "{what}: secret in {msg}");
}

#[test]
fn wrong_or_missing_passwords_fail_at_once_and_a_password_file_works() {
    let port = free_port();
    let _server = start_redis_with_password(port);
    let base = format!("redis://127.0.0.1:{port}");
    std::env::remove_var("V4POST_REDIS_PASSWORD");
    std::env::remove_var("V4POST_REDIS_PASSWORD_FILE");

    open_fails_fast_with_auth_error(&format!("redis://:wr0ng@127.0.0.1:{port}"), "wrong password in the URL");
    open_fails_fast_with_auth_error(&format!("redis://default:wr0ng@127.0.0.1:{port}"), "wrong user password");
    open_fails_fast_with_auth_error(&base, "no password (NOAUTH)");

    // the password in a file (as --redis-password-file / V4POST_REDIS_PASSWORD_FILE)
    let dir = std::env::temp_dir().join(format!("v4post-auth-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("redis.pw");
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    assert_eq!(queue::read_password_file(&file).unwrap(), PASSWORD);
    std::env::set_var("V4POST_REDIS_PASSWORD_FILE", &file);
    let q = queue::open(&base, "auth", cfg()).expect("password file");
    q.set("k", "v").unwrap();
    assert_eq!(q.get("k").unwrap().as_deref(), Some("v"));
    assert!(!q.describe().contains(PASSWORD));

    // a wrong password in the file is just as fatal
    std::fs::write(&file, "wr0ng\n").unwrap();
    open_fails_fast_with_auth_error(&base, "wrong password in the file");
    // an empty or missing file is a clear error
    std::fs::write(&file, "\n").unwrap();
    let e = queue::open(&base, "auth", cfg()).err().unwrap().to_string();
    assert!(e.contains("password file") && e.contains("empty"), "{e}");
    std::env::set_var("V4POST_REDIS_PASSWORD_FILE", dir.join("absent"));
    let e = queue::open(&base, "auth", cfg()).err().unwrap().to_string();
    assert!(e.contains("password file"), "{e}");
    std::env::remove_var("V4POST_REDIS_PASSWORD_FILE");

    // V4POST_REDIS_PASSWORD
    std::env::set_var("V4POST_REDIS_PASSWORD", PASSWORD);
    assert!(queue::open(&base, "auth", cfg()).is_ok(), "V4POST_REDIS_PASSWORD");
    std::env::set_var("V4POST_REDIS_PASSWORD", "wr0ng");
    open_fails_fast_with_auth_error(&base, "wrong V4POST_REDIS_PASSWORD");
    std::env::remove_var("V4POST_REDIS_PASSWORD");

    // a typo'd URL (no `://`) is echoed in the error without its password
    for typo in ["redis:/bob:hunter2@127.0.0.1:1", "bob:hunter2@127.0.0.1:1", "redis//h:1?password=hunter2"] {
        let e = queue::open(typo, "auth", cfg()).err().unwrap_or_else(|| panic!("{typo} accepted")).to_string();
        assert!(!e.contains("hunter2") && e.contains("***"), "{typo}: {e}");
    }

    // the binary: --redis-password-file is a global flag
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_v4post"))
        .args(["worker", "reward", "--queue", &format!("redis:/bob:hunter2@127.0.0.1:{port}"), "--name", "x"])
        .args(["--runs-dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !err.contains("hunter2"), "{err}");
    std::fs::create_dir_all(dir.join("pw-run")).unwrap();
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_v4post"))
        .args(["worker", "reward", "--queue", &base, "--name", "pw-run", "--max-jobs", "1"])
        .args(["--runs-dir", dir.to_str().unwrap(), "--redis-password-file", "/nonexistent/pw"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("password file"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&dir);
}
