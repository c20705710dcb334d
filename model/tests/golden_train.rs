//! The trainable candle graph against the golden reference logits, and against the decode
//! engine (same weights, same decisions). Tolerances as in `golden_engine.rs`: the f32_dense
//! variant with replayed decisions must match to 1e-4 + 1e-4·|ref|.

use candle_core::DType;
use model::train::{SeqInput, TrainModel, TrainOptions};
use model::{checkpoint, Decisions, Numerics};
use safetensors::SafeTensors;
use std::path::PathBuf;
use std::sync::Arc;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/golden/v4-tiny-a")
}

fn load_cases() -> Vec<u8> {
    std::fs::read(golden_dir().join("cases.safetensors")).expect("cases")
}

fn i64s(bytes: &[u8], name: &str) -> (Vec<usize>, Vec<i64>) {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let t = st.tensor(name).unwrap_or_else(|_| panic!("{name}"));
    (t.shape().to_vec(), t.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect())
}

fn f32s(bytes: &[u8], name: &str) -> Vec<f32> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    st.tensor(name).unwrap().data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn decisions(bytes: &[u8], c: usize, variant: &str, nl: usize, k: usize) -> Decisions {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let mut d = Decisions::default();
    for l in 0..nl {
        let (shape, v) = i64s(bytes, &format!("case{c}.{variant}.prefill.route_idx.L{l}"));
        for pos in 0..shape[0] {
            let e = d.routes.entry(pos).or_insert_with(|| vec![0; nl * k]);
            for j in 0..k {
                e[l * k + j] = v[pos * k + j] as u32;
            }
        }
        let tk = format!("case{c}.{variant}.prefill.topk.L{l}");
        if st.tensor(&tk).is_ok() {
            let (shape, v) = i64s(bytes, &tk);
            for pos in 0..shape[0] {
                d.topk.insert(
                    (l, pos),
                    v[pos * shape[1]..(pos + 1) * shape[1]].iter().filter(|&&x| x >= 0).map(|&x| x as usize).collect(),
                );
            }
        }
    }
    d
}

#[test]
fn train_graph_matches_f32_dense_golden_logits() {
    let bytes = load_cases();
    let w = checkpoint::load(&golden_dir()).unwrap();
    let (nl, k, v) = (w.config.n_layers, w.config.n_activated_experts, w.config.vocab_size);
    for qat_experts in [false, true] {
        let m = TrainModel::from_weights(
            &w,
            DType::F32,
            TrainOptions { numerics: Numerics::DENSE, qat_experts, indexer_loss: true },
        )
        .unwrap();
        // two sequences of different lengths in one padded batch
        let batch: Vec<SeqInput> = [0usize, 1, 2]
            .iter()
            .map(|&c| SeqInput {
                tokens: i64s(&bytes, &format!("case{c}.input_ids")).1.into_iter().map(|t| t as u32).collect(),
                forced: Some(Arc::new(decisions(&bytes, c, "f32_dense", nl, k))),
                ..Default::default()
            })
            .collect();
        let out = m.forward(&batch).unwrap();
        let logits = m.logits(&out.hidden).unwrap();
        assert!(out.indexer_loss.is_some());
        for (bi, c) in [0usize, 1, 2].iter().enumerate() {
            let len = out.lengths[bi];
            let got: Vec<f32> =
                logits.get(bi).unwrap().narrow(0, 0, len).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let want = f32s(&bytes, &format!("case{c}.f32_dense.prefill_logits"));
            assert_eq!(got.len(), len * v);
            let mut worst = 0f32;
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!((a - b).abs() <= 1e-4 + 1e-4 * b.abs(), "case {c} qat={qat_experts}: logit {i}: {a} vs {b}");
                worst = worst.max((a - b).abs());
            }
            eprintln!("train graph case {c} qat_experts={qat_experts}: max |Δ| {worst:.2e}");
        }
    }
}

#[test]
fn train_graph_qat_numerics_match_f32_noaq() {
    // With the FP8 KV fake-quant on, a one-ulp difference upstream (candle's GEMM vs the
    // reference's) can flip one E4M3 rounding; early in a sequence that shifts every later
    // logit a little. Per the golden README: strict where no flip happens (median ≤ 1e-4,
    // all positions within 0.1), and for a case with a flip the logits must still agree
    // statistically (mean |Δ| ≤ 0.05, argmax agreement ≥ 0.95). At least two of the three
    // cases must be strict.
    let bytes = load_cases();
    let w = checkpoint::load(&golden_dir()).unwrap();
    let (nl, k, v) = (w.config.n_layers, w.config.n_activated_experts, w.config.vocab_size);
    let m = TrainModel::from_weights(&w, DType::F32, TrainOptions::default()).unwrap();
    let mut strict = 0;
    for c in 0..3 {
        let toks: Vec<u32> = i64s(&bytes, &format!("case{c}.input_ids")).1.into_iter().map(|t| t as u32).collect();
        let out =
            m.forward(&[SeqInput::new(toks).with_forced(Arc::new(decisions(&bytes, c, "f32_noaq", nl, k)))]).unwrap();
        let got: Vec<f32> = m.logits(&out.hidden).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let want = f32s(&bytes, &format!("case{c}.f32_noaq.prefill_logits"));
        let mut pp: Vec<f32> = got
            .chunks(v)
            .zip(want.chunks(v))
            .map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max))
            .collect();
        let mean = got.iter().zip(&want).map(|(a, b)| (a - b).abs() as f64).sum::<f64>() / want.len() as f64;
        let argmax = |x: &[f32]| {
            x.iter().enumerate().fold((0, f32::NEG_INFINITY), |m, (i, &y)| if y > m.1 { (i, y) } else { m }).0
        };
        let agree =
            got.chunks(v).zip(want.chunks(v)).filter(|(a, b)| argmax(a) == argmax(b)).count() as f64 / pp.len() as f64;
        pp.sort_by(f32::total_cmp);
        let median = pp[pp.len() / 2];
        let worst = *pp.last().unwrap();
        eprintln!("train graph noaq case {c}: median {median:.2e} worst {worst:.2e} mean {mean:.2e} argmax {agree:.3}");
        if median <= 1e-4 && worst <= 0.1 {
            strict += 1;
        } else {
            assert!(mean <= 0.05 && agree >= 0.95, "case {c}: mean {mean}, argmax agreement {agree}");
        }
    }
    assert!(strict >= 2, "only {strict} cases matched strictly");
}
