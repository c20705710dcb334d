//! The Python verifier's sandbox against hostile programs: no secrets readable, nothing
//! writable outside its private /tmp, the verifier cannot be signalled, the process count is
//! limited, and no process it started survives `run_tests`.
//!
//! Every test needs python3; without it they return early (the no-python path is covered by
//! `robustness::python_sandbox_limits`).

use rewards::python::{run_tests, PyLimits, PyOutcome};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn have_python() -> bool {
    std::process::Command::new("/usr/bin/env").args(["python3", "-c", "pass"]).status().is_ok_and(|s| s.success())
}

fn limits() -> PyLimits {
    PyLimits { wall: Duration::from_secs(8), cpu_seconds: 4, ..Default::default() }
}

fn run(code: &str) -> PyOutcome {
    run_tests(code, "", &limits()).expect("the sandbox must be available on the test machine")
}

/// A string unique to this test run, to find its processes and files.
fn marker(tag: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("v4post-sbx-{tag}-{}-{nanos}", std::process::id())
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

/// Host processes whose command line or initial environment contains `marker`.
fn survivors(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return found };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        for leaf in ["cmdline", "environ"] {
            let bytes = std::fs::read(e.path().join(leaf)).unwrap_or_default();
            if String::from_utf8_lossy(&bytes).contains(marker) {
                found.push(format!("pid {name} ({leaf}): {}", String::from_utf8_lossy(&bytes).replace('\0', " ")));
                break;
            }
        }
    }
    found
}

#[test]
fn correct_program_still_passes_and_sees_a_private_tmp() {
    if !have_python() {
        return;
    }
    let out = run_tests(
        "import os\ndef f(x):\n    return 2 * x\nopen('/tmp/scratch.txt', 'w').write('ok')",
        "assert f(3) == 6\nassert open('/tmp/scratch.txt').read() == 'ok'\nassert os.getcwd() == '/tmp'",
        &limits(),
    )
    .unwrap();
    assert!(out.passed, "{out:?}");
}

#[test]
fn cannot_read_etc_passwd() {
    if !have_python() {
        return;
    }
    let out = run("print(open('/etc/passwd').read())");
    assert!(!out.passed, "/etc/passwd must be unreadable: {out:?}");
    assert!(out.stderr_tail.contains("FileNotFoundError") || out.stderr_tail.contains("PermissionError"), "{out:?}");
}

#[test]
fn cannot_read_the_home_directory() {
    if !have_python() {
        return;
    }
    let home = home();
    for code in [
        format!("import os\nprint(os.listdir({:?}))", home.to_string_lossy()),
        "import os\nprint(os.listdir('/home'))".into(),
    ] {
        let out = run(&code);
        assert!(!out.passed, "home must be invisible ({code}): {out:?}");
    }
}

#[test]
fn cannot_write_outside_its_tmp() {
    if !have_python() {
        return;
    }
    let m = marker("write");
    let targets = [home().join(&m), std::env::temp_dir().join(&m), PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(&m)];
    let list: Vec<String> = targets.iter().map(|p| format!("{:?}", p.to_string_lossy())).collect();
    let code = format!(
        "import os\nfor p in [{}, '/usr/{m}', '/{m}']:\n    try:\n        open(p, 'w').write('pwned')\n    except OSError:\n        pass\n\
         open('/tmp/{m}', 'w').write('fine')",
        list.join(", ")
    );
    let out = run(&code);
    let leaked: Vec<_> = targets
        .iter()
        .chain([PathBuf::from(format!("/usr/{m}")), PathBuf::from(format!("/{m}"))].iter())
        .filter(|p| p.exists())
        .cloned()
        .collect();
    for p in &leaked {
        let _ = std::fs::remove_file(p);
    }
    assert!(leaked.is_empty(), "the sandbox wrote to the host: {leaked:?}");
    assert!(out.passed, "writing its own /tmp must work: {out:?}");
}

/// Run as a separate process by `cannot_signal_the_verifier` (the program tries to kill its
/// parent; with a broken sandbox that is this process).
#[test]
#[ignore = "helper: run by cannot_signal_the_verifier in a child process"]
fn kill_parent_helper() {
    let code = "import os, signal, time\n\
                os.kill(os.getppid(), signal.SIGKILL)\n\
                try:\n    os.killpg(os.getpgid(os.getppid()), signal.SIGKILL)\nexcept OSError:\n    pass\n\
                time.sleep(0.3)";
    let out = run(code);
    println!("sandboxed program finished: {out:?}");
}

#[test]
fn cannot_signal_the_verifier() {
    if !have_python() {
        return;
    }
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args(["--exact", "kill_parent_helper", "--ignored", "--nocapture", "--test-threads=1"])
        .process_group(0)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("sandboxed program finished"),
        "the verifier died: {:?}\n{text}",
        out.status
    );
}

#[test]
fn forked_children_do_not_survive() {
    if !have_python() {
        return;
    }
    let m = marker("fork");
    let code = format!(
        "import os, sys, time\n\
         for i in range(50):\n    try:\n        pid = os.fork()\n    except OSError:\n        continue\n    if pid == 0:\n        \
         try:\n            os.execve(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', '{m}'], {{'V4POST_MARK': '{m}'}})\n        \
         finally:\n            os._exit(1)\n\
         time.sleep(1.0)"
    );
    let start = Instant::now();
    let out = run(&code);
    let left = survivors(&m);
    assert!(left.is_empty(), "{} processes survived: {left:#?}", left.len());
    assert!(start.elapsed() < Duration::from_secs(8), "{out:?} took {:?}", start.elapsed());
}

#[test]
fn setsid_daemon_does_not_survive() {
    if !have_python() {
        return;
    }
    let m = marker("daemon");
    let code = format!(
        "import os, sys, time\n\
         pid = os.fork()\n\
         if pid == 0:\n    os.setsid()\n    if os.fork() == 0:\n        \
         os.execve(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', '{m}'], {{'V4POST_MARK': '{m}'}})\n    \
         os._exit(0)\n\
         os.waitpid(pid, 0)\n\
         time.sleep(1.0)"
    );
    let out = run(&code);
    assert!(out.passed, "{out:?}");
    let left = survivors(&m);
    assert!(left.is_empty(), "the daemon survived: {left:#?}");
}

#[test]
fn timed_out_program_leaves_nothing_behind() {
    if !have_python() {
        return;
    }
    let m = marker("timeout");
    let code = format!(
        "import os, sys, time\n\
         if os.fork() == 0:\n    os.setsid()\n    \
         os.execve(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', '{m}'], {{'V4POST_MARK': '{m}'}})\n\
         time.sleep(60)"
    );
    let lim = PyLimits { wall: Duration::from_secs(2), ..limits() };
    let out = run_tests(&code, "", &lim).unwrap();
    assert!(out.timed_out, "{out:?}");
    let left = survivors(&m);
    assert!(left.is_empty(), "processes survived the timeout: {left:#?}");
}

#[test]
fn process_count_is_limited() {
    if !have_python() {
        return;
    }
    let lim = PyLimits { max_processes: 32, ..limits() };
    let code = "import os, time\n\
                n = 0\n\
                for i in range(200):\n    try:\n        pid = os.fork()\n    except OSError:\n        break\n    \
                if pid == 0:\n        time.sleep(5)\n        os._exit(0)\n    n += 1\n\
                assert n < 40, f'forked {n} children'";
    let out = run_tests(code, "", &lim).unwrap();
    assert!(out.passed, "RLIMIT_NPROC must stop the fork loop: {out:?}");
}

#[test]
fn sees_no_host_processes_and_no_network() {
    if !have_python() {
        return;
    }
    let code = "import os, socket\n\
                assert os.getpid() == 2, os.getpid()\n\
                pids = [p for p in os.listdir('/proc') if p.isdigit()] if os.path.isdir('/proc/1') else []\n\
                assert len(pids) <= 2, pids\n\
                assert os.getuid() != 0\n\
                try:\n    socket.create_connection(('1.1.1.1', 53), timeout=1)\n    raise SystemExit('network reachable')\nexcept OSError:\n    pass";
    let out = run(code);
    assert!(out.passed, "{out:?}");
}
