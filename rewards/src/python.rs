//! Python unit tests in a child process: CPU-time, address-space and file-size limits,
//! its own process group (killed as a whole on wall-clock timeout), an empty environment,
//! a private working directory and no network (a fresh network namespace via `unshare -rn`).
//! `python3` is optional at run time: without it the verifier says so instead of scoring.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct PyLimits {
    pub cpu_seconds: u64,
    pub memory_bytes: u64,
    pub wall: Duration,
    pub max_output: usize,
}

impl Default for PyLimits {
    fn default() -> Self {
        PyLimits { cpu_seconds: 5, memory_bytes: 512 << 20, wall: Duration::from_secs(10), max_output: 64 * 1024 }
    }
}

/// What happened to one run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PyOutcome {
    pub passed: bool,
    pub timed_out: bool,
    pub exit_code: Option<i32>,
    pub stderr_tail: String,
}

fn have(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn python_available() -> bool {
    static P: OnceLock<bool> = OnceLock::new();
    *P.get_or_init(|| have("python3", &["-c", "pass"]))
}

fn netns_available() -> bool {
    static N: OnceLock<bool> = OnceLock::new();
    *N.get_or_init(|| have("unshare", &["-rn", "true"]))
}

/// Run `code` followed by `tests` (plain `assert` statements or a unittest body).
/// `Err` is for "could not run at all" (no python3, no isolation), never for a failing test.
pub fn run_tests(code: &str, tests: &str, limits: &PyLimits) -> Result<PyOutcome, String> {
    if !python_available() {
        return Err("python3 is not installed: the python verifier cannot run".into());
    }
    let isolate = netns_available();
    if !isolate && std::env::var("V4POST_SANDBOX_ALLOW_NETWORK").is_err() {
        return Err("cannot isolate the network (`unshare -rn` failed); set V4POST_SANDBOX_ALLOW_NETWORK=1 to run without isolation".into());
    }
    let dir = tempfile::tempdir().map_err(|e| format!("sandbox dir: {e}"))?;
    let script = dir.path().join("solution.py");
    std::fs::write(&script, format!("{code}\n\n{tests}\n")).map_err(|e| format!("sandbox write: {e}"))?;
    let out_path = dir.path().join("stderr.txt");
    let err_file = std::fs::File::create(&out_path).map_err(|e| format!("sandbox: {e}"))?;
    let mut cmd = if isolate {
        let mut c = Command::new("unshare");
        c.args(["-rn", "python3"]);
        c
    } else {
        Command::new("python3")
    };
    cmd.args(["-I", "-B"])
        .arg(&script)
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err_file);
    let lim = *limits;
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            libc::setsid();
            let set = |res, v: u64| {
                let r = libc::rlimit { rlim_cur: v as libc::rlim_t, rlim_max: v as libc::rlim_t };
                libc::setrlimit(res, &r);
            };
            set(libc::RLIMIT_CPU, lim.cpu_seconds);
            set(libc::RLIMIT_AS, lim.memory_bytes);
            set(libc::RLIMIT_FSIZE, 1 << 20);
            set(libc::RLIMIT_CORE, 0);
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| format!("could not start python3: {e}"))?;
    let pid = child.id() as i32;
    let start = Instant::now();
    let (status, timed_out) = loop {
        match child.try_wait() {
            Ok(Some(s)) => break (Some(s), false),
            Ok(None) if start.elapsed() >= limits.wall => {
                // SAFETY: plain syscall; the child leads its own process group.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
                let _ = child.kill();
                let _ = child.wait();
                break (None, true);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("waiting for python3: {e}")),
        }
    };
    let mut stderr = String::new();
    if let Ok(f) = std::fs::File::open(&out_path) {
        let _ = f.take(limits.max_output as u64).read_to_string(&mut stderr);
    }
    let tail: String = stderr.chars().rev().take(400).collect::<Vec<_>>().into_iter().rev().collect();
    Ok(PyOutcome {
        passed: status.is_some_and(|s| s.success()),
        timed_out,
        exit_code: status.and_then(|s| s.code()),
        stderr_tail: tail,
    })
}
