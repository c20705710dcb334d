//! Opt-in section timing of the training forward and the engine (`V4POST_PROFILE=1`), for
//! finding hot spots.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

fn enabled() -> bool {
    static E: OnceLock<bool> = OnceLock::new();
    *E.get_or_init(|| std::env::var("V4POST_PROFILE").is_ok())
}

fn table() -> &'static Mutex<BTreeMap<&'static str, (Duration, u64)>> {
    static T: OnceLock<Mutex<BTreeMap<&'static str, (Duration, u64)>>> = OnceLock::new();
    T.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// Time `f` under `name` when profiling is on.
pub fn time<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    if !enabled() {
        return f();
    }
    let t = Instant::now();
    let r = f();
    if let Ok(mut m) = table().lock() {
        let e = m.entry(name).or_default();
        e.0 += t.elapsed();
        e.1 += 1;
    }
    r
}

/// Accumulated sections, then reset.
pub fn take() -> Vec<(&'static str, Duration, u64)> {
    table()
        .lock()
        .map(|mut m| std::mem::take(&mut *m).into_iter().map(|(k, (d, n))| (k, d, n)).collect())
        .unwrap_or_default()
}
