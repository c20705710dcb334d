//! Python unit tests of untrusted (model-written) code, run in a [`crate::sandbox`]: own
//! user, mount, PID, network, IPC and UTS namespaces; a read-only view of `/usr` only (no
//! `/etc/passwd`, no home directories, no host `/tmp`); a private size-limited `/tmp`; no
//! network; CPU, address-space, file-size, process-count and open-file limits; a wall-clock
//! timeout; and every process the program started killed before [`run_tests`] returns.
//!
//! Threat model: see [`crate::sandbox`]. There is no weaker fallback: when the kernel refuses
//! namespaces, [`run_tests`] returns [`PyError::Sandbox`] with the remedy, and the reward is an
//! error rather than a silent 0. `python3` is optional at run time: without it the verifier
//! says so instead of scoring.

use crate::sandbox::{self, Plan, Rlimits, SandboxError};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Where `python3` is looked up (the ambient `PATH` is not trusted: it may point into a home
/// directory the sandbox hides).
const SEARCH_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

#[derive(Debug, Clone, Copy)]
pub struct PyLimits {
    pub cpu_seconds: u64,
    pub memory_bytes: u64,
    pub wall: Duration,
    pub max_output: usize,
    /// Processes and threads the program may have at once (`RLIMIT_NPROC` in its namespace).
    pub max_processes: u64,
    /// Largest file it may write (`RLIMIT_FSIZE`).
    pub file_bytes: u64,
    /// Size of its private `/tmp`.
    pub tmp_bytes: u64,
}

impl Default for PyLimits {
    fn default() -> Self {
        PyLimits {
            cpu_seconds: 5,
            memory_bytes: 512 << 20,
            wall: Duration::from_secs(10),
            max_output: 64 * 1024,
            max_processes: 64,
            file_bytes: 1 << 20,
            tmp_bytes: 16 << 20,
        }
    }
}

/// What happened to one run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PyOutcome {
    pub passed: bool,
    pub timed_out: bool,
    /// Exit code; 128 + N when signal N ended the program (as a shell reports it).
    pub exit_code: Option<i32>,
    pub stderr_tail: String,
}

/// Why a program could not be run at all (never a failing test).
#[derive(Debug, thiserror::Error)]
pub enum PyError {
    #[error("python3 is not installed in {SEARCH_PATH}: the python verifier cannot run")]
    NoPython,
    #[error("python3 resolves to {0:?}, outside the directories the sandbox exposes (/usr, /bin, /lib*)")]
    PythonOutsideSandbox(PathBuf),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("sandbox host side: {0}")]
    Io(#[from] std::io::Error),
}

/// The canonical path of the `python3` the sandbox will run.
fn find_python() -> Result<PathBuf, PyError> {
    let exe = SEARCH_PATH
        .split(':')
        .map(|d| Path::new(d).join("python3"))
        .find_map(|p| std::fs::canonicalize(p).ok().filter(|c| c.is_file()))
        .ok_or(PyError::NoPython)?;
    if sandbox::visible_inside(&exe) {
        Ok(exe)
    } else {
        Err(PyError::PythonOutsideSandbox(exe))
    }
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fresh descriptors, which we then own.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}

/// Everything currently readable from the (non-blocking) report pipe.
fn drain(fd: &OwnedFd, into: &mut Vec<u8>) {
    let mut buf = [0u8; 256];
    loop {
        // SAFETY: reads into a local buffer from a descriptor we own.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return;
        }
        into.extend_from_slice(&buf[..n as usize]);
    }
}

fn sandbox_command(python: &Path, script: &Path, stderr: std::fs::File) -> std::io::Result<Command> {
    let mut cmd = Command::new(python);
    cmd.args(["-I", "-B", Plan::PROGRAM])
        .env_clear()
        .env("PATH", SEARCH_PATH)
        .env("HOME", "/tmp")
        .env("TMPDIR", "/tmp")
        .env("LANG", "C.UTF-8")
        .env("PYTHONHASHSEED", "0")
        .env("OMP_NUM_THREADS", "1")
        .env("OPENBLAS_NUM_THREADS", "1")
        .env("MKL_NUM_THREADS", "1")
        // the sandbox's init copies the program from stdin into its private /tmp
        .stdin(std::fs::File::open(script)?)
        .stdout(Stdio::null())
        .stderr(stderr);
    Ok(cmd)
}

/// Wait for the supervisor; on timeout kill the sandbox's init (the kernel then kills the
/// whole PID namespace) and wait again, so nothing of the program outlives this call.
fn wait_or_kill(
    child: &mut Child,
    wall: Duration,
    report: &OwnedFd,
    got: &mut Vec<u8>,
) -> std::io::Result<(Option<ExitStatus>, bool)> {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok((Some(s), false));
        }
        if start.elapsed() >= wall {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    drain(report, got);
    if let (Some(init), _) = sandbox::decode_report(got) {
        // SAFETY: plain syscall; `init` is our grandchild, kept unreaped by its supervisor.
        unsafe { libc::kill(init, libc::SIGKILL) };
        let grace = Instant::now();
        while grace.elapsed() < Duration::from_secs(5) {
            if child.try_wait()?.is_some() {
                return Ok((None, true));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    // SAFETY: the supervisor leads its own process group.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.kill();
    child.wait()?;
    Ok((None, true))
}

fn stderr_tail(path: &Path, max: usize) -> String {
    let mut stderr = String::new();
    if let Ok(f) = std::fs::File::open(path) {
        let mut bytes = Vec::new();
        let _ = f.take(max as u64).read_to_end(&mut bytes);
        stderr = String::from_utf8_lossy(&bytes).into_owned();
    }
    stderr.chars().rev().take(400).collect::<Vec<_>>().into_iter().rev().collect()
}

/// Run `code` followed by `tests` (plain `assert` statements or a unittest body) in the
/// sandbox. `Err` is for "could not run at all" (no python3, no sandbox), never for a failing
/// test.
pub fn run_tests(code: &str, tests: &str, limits: &PyLimits) -> Result<PyOutcome, PyError> {
    let python = find_python()?;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("solution.py");
    std::fs::write(&script, format!("{code}\n\n{tests}\n"))?;
    let err_path = dir.path().join("stderr.txt");
    let (report_r, report_w) = pipe()?;
    let rl = Rlimits {
        cpu_seconds: limits.cpu_seconds,
        memory_bytes: limits.memory_bytes,
        file_bytes: limits.file_bytes,
        max_processes: limits.max_processes,
        open_files: 256,
    };
    let plan = Plan::new(rl, limits.tmp_bytes, report_w.as_raw_fd())?;
    let mut cmd = sandbox_command(&python, &script, std::fs::File::create(&err_path)?)?;
    // SAFETY: `sandbox::enter` uses only raw syscalls and no allocation between fork and exec.
    unsafe {
        cmd.pre_exec(move || sandbox::enter(&plan));
    }
    let spawned = cmd.spawn();
    drop(cmd); // the plan (and with it nothing that owns descriptors) goes with the command
    drop(report_w);
    let mut child = spawned?;
    let mut report = Vec::new();
    let (status, timed_out) = wait_or_kill(&mut child, limits.wall, &report_r, &mut report)?;
    drain(&report_r, &mut report);
    if let (_, Some(e)) = sandbox::decode_report(&report) {
        return Err(e.into());
    }
    Ok(PyOutcome {
        passed: status.is_some_and(|s| s.success()),
        timed_out,
        exit_code: status.and_then(|s| s.code()),
        stderr_tail: stderr_tail(&err_path, limits.max_output),
    })
}

/// Check once that the sandbox works on this machine (for a fail-fast start-up check).
pub fn sandbox_check() -> Result<(), PyError> {
    let out = run_tests("import sys", "", &PyLimits::default())?;
    if out.passed {
        Ok(())
    } else {
        Err(PyError::Sandbox(SandboxError::Host(format!(
            "a trivial program failed in the sandbox: {}",
            out.stderr_tail
        ))))
    }
}
