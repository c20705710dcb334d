//! Finite-difference gradient checks of the trainable graph on the `tiny` preset, in f64,
//! with decisions frozen (recorded once, then replayed) so the function is smooth.
//! Covers mHC (hc_attn/hc_ffn/hc_head), attention of every layer kind (window, CSA with the
//! indexer, HCA), compressors, MoE (gate, routed and shared experts) and the indexer's
//! auxiliary loss; and checks that every trainable parameter receives a gradient.

use candle_core::{DType, Tensor};
use model::train::{SeqInput, TrainModel, TrainOptions};
use model::weights::SeededNormal;
use model::{Config, ModelWeights, Numerics};
use std::sync::Arc;

fn setup() -> (TrainModel, Vec<SeqInput>, Tensor) {
    let cfg = Config::tiny();
    let mut w = ModelWeights::random(&cfg, 3).unwrap();
    // Non-trivial mHC and biases so every path is exercised away from its init point.
    let mut rng = SeededNormal::new(11);
    for (name, t) in w.tensors.iter_mut() {
        if name.contains("hc_")
            || name.ends_with("attn_sink")
            || name.ends_with(".ape")
            || name.ends_with("norm.weight")
        {
            for v in t.data.iter_mut() {
                *v += 0.3 * rng.normal() as f32;
            }
        }
    }
    let opts = TrainOptions { numerics: Numerics::DENSE, qat_experts: false, indexer_loss: true };
    let m = TrainModel::from_weights(&w, DType::F64, opts).unwrap();
    let seqs: Vec<Vec<u32>> =
        vec![(0..37).map(|i| (i * 7 + 3) % 300).collect(), (0..29).map(|i| (i * 13 + 1) % 300).collect()];
    let batch: Vec<SeqInput> = seqs.iter().map(|t| SeqInput::new(t.clone())).collect();
    let out = m.forward(&batch).unwrap();
    let batch: Vec<SeqInput> =
        seqs.iter().zip(out.decisions).map(|(t, d)| SeqInput::new(t.clone()).with_forced(Arc::new(d))).collect();
    let s = 37;
    // Padded positions (beyond 29 in the second sequence) must not enter the loss: their
    // routing is not frozen.
    let proj: Vec<f64> = (0..2 * s * cfg.dim).map(|i| if i / cfg.dim >= s + 29 { 0.0 } else { rng.normal() }).collect();
    let proj = Tensor::from_vec(proj, (2, s, cfg.dim), m.device()).unwrap();
    (m, batch, proj)
}

/// Main loss (through hidden states and logits), or — for indexer parameters — the
/// indexer's auxiliary loss alone: its inputs and target are detached by design, so the
/// main parameters see no gradient from it although its value depends on them.
fn loss_of(m: &TrainModel, batch: &[SeqInput], proj: &Tensor, aux_only: bool) -> Tensor {
    let out = m.forward(batch).unwrap();
    if aux_only {
        return out.indexer_loss.expect("CSA layers produce an indexer loss");
    }
    let main = (out.hidden * proj).unwrap().sum_all().unwrap();
    // the logits path (head) too
    let lg = m.logits(&m.forward(batch).unwrap().hidden.get(0).unwrap()).unwrap().sqr().unwrap().mean_all().unwrap();
    (main + lg).unwrap()
}

fn loss(m: &TrainModel, batch: &[SeqInput], proj: &Tensor) -> Tensor {
    let main = loss_of(m, batch, proj, false);
    (main + loss_of(m, batch, proj, true)).unwrap()
}

fn value(t: &Tensor) -> f64 {
    t.to_scalar::<f64>().unwrap()
}

#[test]
fn gradients_match_finite_differences() {
    let (m, batch, proj) = setup();
    let grads_main = m.backward(&loss_of(&m, &batch, &proj, false)).unwrap();
    let grads_aux = m.backward(&loss_of(&m, &batch, &proj, true)).unwrap();
    let names = [
        "layers.0.hc_attn_fn",
        "layers.0.hc_attn_base",
        "layers.0.hc_attn_scale",
        "layers.2.hc_ffn_scale",
        "hc_head_fn",
        "hc_head_scale",
        "embed.weight",
        "head.weight",
        "norm.weight",
        "layers.0.attn.wq_a.weight",
        "layers.0.attn.attn_sink",
        "layers.0.attn.wo_a.weight",
        "layers.1.attn.wkv.weight",
        "layers.1.attn.kv_norm.weight",
        "layers.1.attn.compressor.wkv.weight",
        "layers.1.attn.compressor.wgate.weight",
        "layers.1.attn.compressor.ape",
        "layers.1.attn.compressor.norm.weight",
        "layers.1.attn.indexer.wq_b.weight",
        "layers.1.attn.indexer.weights_proj.weight",
        "layers.1.attn.indexer.compressor.wkv.weight",
        "layers.1.attn.indexer.compressor.ape",
        "layers.2.attn.compressor.wgate.weight",
        "layers.2.attn.compressor.ape",
        "layers.2.attn.wq_b.weight",
        "layers.2.attn.wo_b.weight",
        "layers.0.ffn.gate.weight",
        "layers.3.ffn.gate.weight",
        "layers.3.ffn.experts.1.w1.weight",
        "layers.3.ffn.experts.2.w2.weight",
        "layers.1.ffn.experts.0.w3.weight",
        "layers.2.ffn.shared_experts.w2.weight",
    ];
    let eps = 1e-6;
    let mut checked = 0;
    for name in names {
        let aux = name.contains(".indexer.");
        let grads = if aux { &grads_aux } else { &grads_main };
        let var = &m.vars()[name];
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        let gv: Vec<f64> = g.flatten_all().unwrap().to_vec1().unwrap();
        let base: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let shape = var.as_tensor().dims().to_vec();
        // the entries with the largest gradient, plus one fixed index
        let mut idx: Vec<usize> = (0..gv.len()).collect();
        idx.sort_by(|a, b| gv[*b].abs().total_cmp(&gv[*a].abs()));
        let mut picks = idx[..2.min(idx.len())].to_vec();
        picks.push(gv.len() / 3);
        for &i in &picks {
            let mut p = base.clone();
            p[i] += eps;
            var.set(&Tensor::from_vec(p.clone(), shape.as_slice(), m.device()).unwrap()).unwrap();
            let lp = value(&loss_of(&m, &batch, &proj, aux));
            p[i] -= 2.0 * eps;
            var.set(&Tensor::from_vec(p, shape.as_slice(), m.device()).unwrap()).unwrap();
            let lm = value(&loss_of(&m, &batch, &proj, aux));
            var.set(&Tensor::from_vec(base.clone(), shape.as_slice(), m.device()).unwrap()).unwrap();
            let fd = (lp - lm) / (2.0 * eps);
            let err = (fd - gv[i]).abs();
            assert!(err <= 1e-5 * (1.0 + fd.abs()), "{name}[{i}]: autograd {} vs finite difference {fd}", gv[i]);
            checked += 1;
        }
    }
    assert!(checked >= 90);
}

#[test]
fn every_trainable_parameter_gets_a_gradient() {
    let (m, batch, proj) = setup();
    let grads = m.backward(&loss(&m, &batch, &proj)).unwrap();
    for (name, var) in m.vars() {
        // The router bias only steers selection; V4 updates it with the aux-loss-free
        // balancing rule, never by gradient.
        if name.ends_with("ffn.gate.bias") {
            continue;
        }
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient"));
        let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(norm > 0.0, "{name}: zero gradient");
    }
}
