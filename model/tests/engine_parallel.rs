//! The engine's attention runs the rows of one sequence in parallel and writes the ring
//! buffer after the call (`Engine::attention`). Checked here on the tiny config (window 8,
//! CSA and HCA layers): a call longer than the window, after a prefix, with two sequences'
//! rows interleaved, gives the same bits on 1 and on 3 threads (logits and recorded routing
//! and indexer decisions); and chunked calls agree with token-by-token decoding, which reads
//! every older key from the ring.

use model::{Config, Decisions, Engine, EngineOptions, ModelWeights, Row, Want};

fn engine() -> Engine {
    let w = ModelWeights::random(&Config::tiny(), 7).expect("random weights");
    Engine::new(&w, EngineOptions::default()).expect("engine")
}

fn token(i: usize, vocab: usize) -> u32 {
    (3 + (i * 2654435761) % (vocab - 3)) as u32
}

/// Logits of every row of `calls` (each a list of rows), and the decisions recorded.
fn run(e: &Engine, calls: &[Vec<Row>]) -> (Vec<Vec<f32>>, Vec<Decisions>) {
    let mut states = vec![e.new_state().recording(), e.new_state().recording()];
    let logits =
        calls.iter().map(|rows| e.forward(&mut states, rows, Want::AllLogits).expect("forward").values).collect();
    (logits, states.into_iter().map(|s| s.record.expect("recording")).collect())
}

/// A 5-token prefix of sequence 0, one call of 20 + 20 interleaved rows (longer than the
/// window of 8), then one decode row each.
fn interleaved(vocab: usize) -> Vec<Vec<Row>> {
    let prefix = (0..5).map(|i| Row { seq: 0, token: token(i, vocab) }).collect();
    let long = (0..40).map(|i| Row { seq: i % 2, token: token(100 + i, vocab) }).collect();
    let decode = vec![Row { seq: 0, token: token(200, vocab) }, Row { seq: 1, token: token(201, vocab) }];
    vec![prefix, long, decode]
}

fn on_threads<T: Send>(n: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new().num_threads(n).build().expect("thread pool").install(f)
}

#[test]
fn parallel_rows_give_the_same_bits_on_any_thread_count() {
    let e = engine();
    let calls = interleaved(Config::tiny().vocab_size);
    let (one, dec_one) = on_threads(1, || run(&e, &calls));
    let (three, dec_three) = on_threads(3, || run(&e, &calls));
    for (c, (a, b)) in one.iter().zip(&three).enumerate() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(a), bits(b), "call {c}: logits differ between 1 and 3 threads");
    }
    assert_eq!(dec_one, dec_three, "recorded decisions differ between 1 and 3 threads");
    assert!(dec_one.iter().all(|d| !d.topk.is_empty() && !d.routes.is_empty()), "nothing was recorded");
}

#[test]
fn chunked_calls_agree_with_token_by_token_decoding() {
    let e = engine();
    let vocab = Config::tiny().vocab_size;
    let tokens: Vec<u32> = (0..30).map(|i| token(300 + i, vocab)).collect();
    // one sequence: calls of 3, 20 (longer than the window) and 7 rows
    let chunked: Vec<Vec<Row>> = [0..3, 3..23, 23..30]
        .into_iter()
        .map(|r| tokens[r].iter().map(|&t| Row { seq: 0, token: t }).collect())
        .collect();
    let single: Vec<Vec<Row>> = tokens.iter().map(|&t| vec![Row { seq: 0, token: t }]).collect();
    let (a, dec_a) = run(&e, &chunked);
    let (b, dec_b) = run(&e, &single);
    let (a, b): (Vec<f32>, Vec<f32>) = (a.concat(), b.concat());
    assert_eq!(a.len(), b.len());
    // the products differ in summation order (GEMM for ≥ 16 rows, dot kernels below), so the
    // logits agree to rounding, and a wrong key (an overwritten ring slot) would be far off
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs() / (1.0 + y.abs())).fold(0f32, f32::max);
    assert!(worst < 1e-3, "chunked vs token-by-token: worst relative difference {worst}");
    assert_eq!(dec_a[0].routes.len(), dec_b[0].routes.len());
}
