//! Optimizer and loss vectors against `testdata/golden/units`.

use serde_json::Value;
use std::path::PathBuf;
use trainer::optim::{newton_schulz, HYBRID_NS};

fn units(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/golden/units").join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn matrix(v: &Value) -> (usize, usize, Vec<f32>) {
    let rows: Vec<Vec<f32>> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect();
    (rows.len(), rows[0].len(), rows.concat())
}

#[test]
fn newton_schulz_hybrid_schedule() {
    let g = units("muon_newton_schulz.json");
    for case in g["cases"].as_array().unwrap() {
        let (r, c, gm) = matrix(&case["G"]);
        let out = newton_schulz(&gm, r, c, &HYBRID_NS);
        let (_, _, want) = matrix(&case["output_float32"]);
        let (_, _, want64) = matrix(&case["output"]);
        for i in 0..out.len() {
            assert!((out[i] - want[i]).abs() < 1e-5, "{}: [{i}] {} vs {}", case["name"], out[i], want[i]);
            assert!((out[i] - want64[i]).abs() < 1e-4);
        }
        // state after the first 8 (Keller) steps
        let after8 = newton_schulz(&gm, r, c, &HYBRID_NS[..8]);
        let (_, _, w8) = matrix(&case["after_8"]);
        for i in 0..after8.len() {
            assert!((after8[i] - w8[i]).abs() < 1e-4);
        }
    }
}

#[test]
fn grpo_losses_and_gradients() {
    use candle_core::{Device, Var};
    use trainer::losses::{advantages, grpo_loss, Aggregation, GrpoLossConfig, KlKind};
    let g = units("grpo.json");
    let rows = |k: &str| -> Vec<Vec<f32>> {
        g[k].as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
            .collect()
    };
    let (old, new, rf) = (rows("old_logprobs"), rows("new_logprobs"), rows("ref_logprobs"));
    let rewards: Vec<f32> = g["rewards"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    let adv = advantages(&rewards, true, g["adv_eps"].as_f64().unwrap() as f32);
    for (a, w) in adv.iter().zip(g["advantages"].as_array().unwrap()) {
        assert!((a - w.as_f64().unwrap() as f32).abs() < 1e-5);
    }
    let lens: Vec<usize> = new.iter().map(Vec::len).collect();
    let (old_f, new_f, ref_f) = (old.concat(), new.concat(), rf.concat());
    for (kind, key) in [(KlKind::K3, "k3"), (KlKind::K3Is, "k3_is_weighted")] {
        let res = &g["results"][key];
        for (agg, want_key) in
            [(Aggregation::SeqMeanTokenMean, "loss_seq_mean_token_mean"), (Aggregation::TokenMean, "loss_token_mean")]
        {
            let cfg = GrpoLossConfig {
                clip_low: 0.2,
                clip_high: 0.28,
                kl: kind,
                beta: 0.04,
                aggregation: agg,
                opsm_delta: None,
                ..Default::default()
            };
            let v = Var::from_vec(new_f.clone(), new_f.len(), &Device::Cpu).unwrap();
            let (loss, _) = grpo_loss(v.as_tensor(), &old_f, Some(&ref_f), &lens, &adv, &cfg).unwrap();
            let want = res[want_key].as_f64().unwrap() as f32;
            let got = loss.to_scalar::<f32>().unwrap();
            assert!((got - want).abs() < 1e-5 * want.abs().max(1.0), "{key} {want_key}: {got} vs {want}");
            if agg == Aggregation::SeqMeanTokenMean {
                let gr = loss.backward().unwrap();
                let gv = gr.get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
                let want_g: Vec<f32> = res["grad_new_logprobs_seq_mean_token_mean_fd"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32))
                    .collect();
                for (i, (a, b)) in gv.iter().zip(&want_g).enumerate() {
                    assert!((a - b).abs() < 2e-5, "{key}: grad[{i}] {a} vs {b}");
                }
            }
        }
    }
}

#[test]
fn reverse_kl_vectors_through_the_logprob_op() {
    // sanity: the OPD vectors' student log-probs equal log_softmax through our op
    use candle_core::{Device, Tensor};
    let g = units("opd_reverse_kl.json");
    let s: Vec<f32> =
        g["single"]["student_logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    let want: Vec<f32> =
        g["single"]["student_logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    let v = s.len();
    let z = Tensor::from_vec(s.repeat(v), (v, v), &Device::Cpu).unwrap();
    let targets: Vec<u32> = (0..v as u32).collect();
    let lp: Vec<f32> = trainer::losses::token_logprobs(&z, &targets, 1.0, None).unwrap().to_vec1().unwrap();
    for (a, b) in lp.iter().zip(&want) {
        assert!((a - b).abs() < 1e-5);
    }
}
