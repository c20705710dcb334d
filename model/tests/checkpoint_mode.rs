//! Saved checkpoint files follow the umask like any other file (safetensors writes through a
//! 0600 temporary file), so workers running as another user can read published policies.
//! One test in its own binary: the umask is process-wide.

#![cfg(unix)]

use model::checkpoint::{self, SaveFormat};
use model::{Config, ModelWeights};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn modes(dir: &Path) -> Vec<(String, u32)> {
    let mut v: Vec<(String, u32)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().permissions().mode() & 0o777))
        .collect();
    v.sort();
    v
}

fn save_under_umask(mask: libc::mode_t, format: SaveFormat, shard: Option<usize>) -> Vec<(String, u32)> {
    // SAFETY: umask only swaps the process's file-mode mask; this binary runs one test.
    let old = unsafe { libc::umask(mask) };
    let dir = tempfile::tempdir().unwrap();
    let w = ModelWeights::random(&Config::tiny(), 3).unwrap();
    let out = dir.path().join("ckpt");
    let saved = checkpoint::save(&w, &out, format, shard);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    saved.unwrap();
    modes(&out)
}

#[test]
fn saved_checkpoint_files_follow_the_umask() {
    for (format, shard) in
        [(SaveFormat::F32, None), (SaveFormat::Rollout, Some(64 << 10)), (SaveFormat::Official, None)]
    {
        let m = save_under_umask(0o022, format, shard);
        assert!(m.iter().any(|(n, _)| n.ends_with(".safetensors")), "{m:?}");
        assert!(m.iter().all(|(_, mode)| *mode == 0o644), "umask 022: {m:?}");
        let m = save_under_umask(0o077, format, shard);
        assert!(m.iter().all(|(_, mode)| *mode == 0o600), "umask 077: {m:?}");
    }
}
