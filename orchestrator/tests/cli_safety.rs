//! The binary's behaviour at its edges: a closed stdout pipe ends it quietly, and
//! `model quantize` refuses to overwrite its own input.

use model::checkpoint::{self, SaveFormat};
use model::{Config, ModelWeights};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn v4post() -> Command {
    Command::new(env!("CARGO_BIN_EXE_v4post"))
}

fn assert_quiet_end(out: &Output, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(101), "{what}: exit 101\n{err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert!(!err.contains("Broken pipe"), "{what}: {err}");
}

/// stdout is a pipe whose reader is already gone: the very first write fails with EPIPE.
fn run_with_closed_stdout(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let child = v4post().args(args).stdout(writer).stderr(Stdio::piped()).spawn().unwrap();
    child.wait_with_output().unwrap()
}

const JSON_INFO: &[&str] = &["model", "info", "--preset", "pro", "--json"];
const TEXT_INFO: &[&str] = &["model", "info", "--preset", "pro", "--vs", "v3.2"];

#[test]
fn a_closed_stdout_pipe_ends_quietly() {
    for args in [JSON_INFO, TEXT_INFO] {
        let out = run_with_closed_stdout(args);
        assert_quiet_end(&out, &args.join(" "));
    }
}

/// `v4post … | head -1`: read one line, then close the pipe.
#[test]
fn head_one_ends_quietly() {
    for args in [JSON_INFO, TEXT_INFO] {
        let mut child = v4post().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
        assert!(!first.is_empty());
        let out = child.wait_with_output().unwrap();
        assert_quiet_end(&out, &args.join(" "));
    }
}

fn tiny_checkpoint(dir: &Path) {
    let w = ModelWeights::random(&Config::tiny(), 5).unwrap();
    checkpoint::save(&w, dir, SaveFormat::F32, None).unwrap();
}

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    v.sort();
    v
}

fn quantize(input: &Path, out: &Path) -> Output {
    v4post()
        .args(["model", "quantize", "--checkpoint"])
        .arg(input)
        .arg("--out")
        .arg(out)
        .args(["--format", "official"])
        .output()
        .unwrap()
}

#[test]
fn quantize_refuses_to_overwrite_its_input() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    tiny_checkpoint(&ckpt);
    let before = snapshot(&ckpt);
    let single = ckpt.join("model.safetensors");
    let outs = [ckpt.clone(), tmp.path().join("ckpt/../ckpt/."), ckpt.join("nested/deeper")];
    for out in &outs {
        let o = quantize(&ckpt, out);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "--out {}: accepted", out.display());
        assert!(err.contains("would overwrite the input checkpoint"), "--out {}: {err}", out.display());
        assert!(!err.contains("panicked"), "{err}");
    }
    // A single-file --in: its directory (where config.json lives) and the file itself.
    for out in [ckpt.clone(), single.clone()] {
        let o = quantize(&single, &out);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("would overwrite"), "--out {}: {err}", out.display());
    }
    assert_eq!(snapshot(&ckpt), before, "the input checkpoint changed");
    assert!(!ckpt.join("nested").exists());
    // A sibling directory is fine.
    let sibling = tmp.path().join("ckpt-fp8");
    let o = quantize(&ckpt, &sibling);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(sibling.join("model.safetensors").exists());
}

#[cfg(unix)]
#[test]
fn quantize_refuses_an_output_reached_through_a_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    tiny_checkpoint(&ckpt);
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&ckpt, &link).unwrap();
    let o = quantize(&ckpt, &link);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("would overwrite"), "{err}");
}
