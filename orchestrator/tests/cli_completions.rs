//! `v4post completions SHELL` and the typed (`clap::ValueEnum`) choices of the CLI, through
//! the binary: completion scripts name the real verbs (bash's parses under `bash -n`), an
//! unknown shell or choice is refused by clap with the list of values, `--help` lists them.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn v4post(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_v4post")).args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn each_shell_gets_a_script_naming_the_verbs() {
    for shell in ["bash", "zsh", "fish"] {
        let o = v4post(&["completions", shell]);
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        let script = stdout(&o);
        assert!(script.len() > 1000, "{shell}: {} bytes", script.len());
        for verb in ["run", "sft", "grpo", "model", "quantize", "completions"] {
            assert!(script.contains(verb), "{shell} script does not mention `{verb}`");
        }
        // the typed choices are offered too
        for value in ["dr-grpo", "think_max", "act-fp8"] {
            assert!(script.contains(value), "{shell} script does not offer `{value}`");
        }
    }
}

#[test]
fn the_bash_script_parses() {
    let script = stdout(&v4post(&["completions", "bash"]));
    let mut child = Command::new("bash")
        .arg("-n")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash is needed for this test");
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "bash -n: {}", stderr(&o));
}

#[test]
fn an_unknown_shell_is_refused() {
    let o = v4post(&["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2), "clap's usage error");
    let err = stderr(&o);
    assert!(err.contains("invalid value 'tcsh'"), "{err}");
    assert!(err.contains("bash") && err.contains("zsh") && err.contains("fish"), "{err}");
}

/// (verb path, flag, the values its --help and its error must list)
const CHOICES: &[(&[&str], &str, &[&str])] = &[
    (&["grpo"], "--variant", &["v32", "grpo", "dapo", "dr-grpo"]),
    (&["grpo"], "--modes", &["non_think", "think_high", "think_max"]),
    (&["sft"], "--modes", &["non_think", "think_high", "think_max"]),
    (&["sft"], "--format", &["f32", "official"]),
    (&["eval"], "--modes", &["non_think", "think_high", "think_max"]),
    (&["grpo"], "--routing", &["keep", "free"]),
    (&["grpo"], "--anticipatory", &["off", "spike", "always"]),
    (&["grpo"], "--spike-signal", &["loss", "grad_norm"]),
    (&["sft"], "--preset", &["tiny", "small", "flash", "pro"]),
    (&["model", "info"], "--preset", &["tiny", "small", "flash", "pro", "v3.2"]),
    (&["eval"], "--split", &["train", "eval"]),
    (&["opd"], "--estimator", &["full", "sampled"]),
    (&["model", "forward"], "--numerics", &["qat", "dense", "act-fp8"]),
    (&["model", "quantize"], "--format", &["official", "rollout", "f32"]),
    (&["tasks", "sample"], "--split", &["train", "eval"]),
];

#[test]
fn help_lists_the_values_of_each_choice() {
    for (verb, flag, values) in CHOICES {
        let o = v4post(&[*verb, &["--help"]].concat());
        assert!(o.status.success(), "{verb:?} --help: {}", stderr(&o));
        let help = stdout(&o);
        let line = help.lines().position(|l| l.trim_start().starts_with(flag)).unwrap_or_else(|| {
            panic!("{verb:?} --help has no {flag}:\n{help}");
        });
        // the flag's entry runs until the next option (`- value: …` lines are its values)
        let next_option = |l: &&str| {
            let t = l.trim_start();
            t.starts_with('-') && !t.starts_with("- ")
        };
        let lines: Vec<&str> = help.lines().collect();
        let entry: String = std::iter::once(lines[line])
            .chain(lines[line + 1..].iter().copied().take_while(|l| !next_option(l)))
            .collect::<Vec<_>>()
            .join("\n");
        for v in *values {
            assert!(entry.contains(v), "{verb:?} --help: {flag} does not list `{v}`:\n{entry}");
        }
    }
}

#[test]
fn a_bad_value_is_refused_with_the_choices() {
    for (verb, flag, values) in CHOICES {
        let o = v4post(&[*verb, &[*flag, "bogus"]].concat());
        assert_eq!(o.status.code(), Some(2), "{verb:?} {flag} bogus: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains("invalid value 'bogus'"), "{verb:?} {flag}: {err}");
        for v in *values {
            assert!(err.contains(v), "{verb:?} {flag}: the error does not list `{v}`: {err}");
        }
    }
}

/// The spellings users may have scripted before the choices were typed still parse: the
/// aliases of the library parsers are accepted by clap (the run then fails later, on the
/// missing checkpoint, not on the value).
#[test]
fn old_spellings_still_parse() {
    for (verb, flag, value) in [
        (&["eval", "--checkpoint", "/nonexistent/ckpt"][..], "--mode", "max"),
        (&["eval", "--checkpoint", "/nonexistent/ckpt"][..], "--mode", "chat"),
        (&["eval", "--checkpoint", "/nonexistent/ckpt"][..], "--split", "test"),
    ] {
        let o = v4post(&[verb, &[flag, value]].concat());
        let err = stderr(&o);
        assert_ne!(o.status.code(), Some(2), "{flag} {value} refused by clap: {err}");
        assert!(!err.contains("invalid value"), "{flag} {value}: {err}");
    }
}

/// `--redis-password-file` takes V4POST_REDIS_PASSWORD_FILE through clap: `--help` names the
/// variable, the flag wins over it, and an empty value still means "no file".
#[test]
fn the_password_file_comes_from_the_flag_or_its_env_var() {
    let help = stdout(&v4post(&["--help"]));
    assert!(help.contains("V4POST_REDIS_PASSWORD_FILE"), "{help}");

    let o = Command::new(env!("CARGO_BIN_EXE_v4post"))
        .args(["tasks", "list"])
        .env("V4POST_REDIS_PASSWORD_FILE", "")
        .output()
        .unwrap();
    assert!(o.status.success(), "an empty V4POST_REDIS_PASSWORD_FILE: {}", stderr(&o));

    let runs = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(runs.path().join("x")).unwrap();
    let worker = |flag: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_v4post"));
        c.args(["worker", "reward", "--queue", "redis://127.0.0.1:1", "--run", "x", "--max-jobs", "1"])
            .arg("--runs-dir")
            .arg(runs.path())
            .env_remove("V4POST_REDIS_PASSWORD")
            .env("V4POST_REDIS_PASSWORD_FILE", "/nonexistent/from-env");
        if let Some(f) = flag {
            c.args(["--redis-password-file", f]);
        }
        let o = c.output().unwrap();
        assert!(!o.status.success());
        stderr(&o)
    };
    let err = worker(None);
    assert!(err.contains("password file") && err.contains("/nonexistent/from-env"), "{err}");
    let err = worker(Some("/nonexistent/from-flag"));
    assert!(err.contains("password file") && err.contains("/nonexistent/from-flag"), "{err}");
}
