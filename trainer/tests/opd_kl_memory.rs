//! Peak memory of the fused reverse KL grows with the tile size, not with tokens × vocabulary.
//! A counting global allocator measures every byte this test process allocates.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use trainer::kl::{reverse_kl, Chunks, Estimator, HeadInput};

struct Counting;
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        CURRENT.fetch_sub(l.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Extra bytes allocated at peak by one call, beyond its two gradient outputs.
fn peak_extra(n: usize, v: usize, d: usize, chunks: Chunks) -> usize {
    let h: Vec<f32> = (0..n * d).map(|i| ((i * 7 % 13) as f32 - 6.0) / 6.0).collect();
    let w: Vec<f32> = (0..v * d).map(|i| ((i * 5 % 11) as f32 - 5.0) / 5.0).collect();
    let wt: Vec<f32> = (0..v * d).map(|i| ((i * 3 % 7) as f32 - 3.0) / 3.0).collect();
    let coef = vec![1.0 / n as f32; n];
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = reverse_kl(
        HeadInput { hidden: &h, head: &w, dim: d },
        HeadInput { hidden: &h, head: &wt, dim: d },
        &coef,
        v,
        1.0,
        Estimator::FullVocab,
        None,
        chunks,
    )
    .unwrap();
    assert!(out.loss.is_finite());
    let outputs = (n * d + v * d) * 4 + 3 * n * 4;
    PEAK.load(Ordering::Relaxed) - base - outputs
}

#[test]
fn peak_memory_follows_the_chunk_not_tokens_times_vocab() {
    let (v, d) = (16384usize, 32usize);
    let small_tile = Chunks { rows: 16, vocab: 1024 };
    let big_tile = Chunks { rows: 64, vocab: 4096 };
    peak_extra(16, v, d, small_tile); // warm up: the rayon pool allocates once
    let a = peak_extra(256, v, d, small_tile);
    let b = peak_extra(2048, v, d, small_tile);
    let c = peak_extra(2048, v, d, big_tile);
    let tv = 2048 * v * 4; // one f32 [tokens × vocab] matrix: 128 MiB
    eprintln!("peak extra bytes: 256 rows {a}, 2048 rows {b}, 2048 rows with 16× larger tiles {c}; [T×V] f32 = {tv}");
    // 8× the tokens: the working set does not follow (only O(tokens·dim) gathers and stats grow).
    assert!(b < a + 2048 * d * 4 * 3 + 2048 * 64, "peak grew with tokens: {a} → {b}");
    assert!(b * 20 < tv, "peak {b} is not far below one [T×V] matrix ({tv})");
    // 16× larger tiles: the working set grows with the tile.
    assert!(c > b * 4, "peak did not grow with the tile: {b} → {c}");
}
