//! Packed SFT sequences: documents packed into one row with `SeqInput::doc_starts` must
//! compute exactly what they compute run one by one — hidden states, decisions, the loss and
//! every parameter's gradient. The `tiny` preset has a window of 8, CSA layers (ratio 4, with
//! the indexer picking top-2) and an HCA layer (ratio 8); the documents are long enough to
//! cross window and compression-block boundaries, their lengths are not multiples of 4 or 8,
//! and one is shorter than a CSA block (no compressed entry at all).

use candle_core::{DType, Tensor};
use model::train::{ops, SeqInput, TrainModel, TrainOptions};
use model::weights::SeededNormal;
use model::{Config, ModelWeights, Numerics};
use std::collections::BTreeMap;

/// Packed rows (document lengths), the second shorter than the first (right padding).
const ROWS: [&[usize]; 2] = [&[23, 3, 30], &[13, 26, 9]];

fn weights() -> ModelWeights {
    let cfg = Config::tiny();
    let mut w = ModelWeights::random(&cfg, 5).unwrap();
    // move mHC, sinks, ape and norms away from their init so every path matters
    let mut rng = SeededNormal::new(17);
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
    w
}

/// The documents, in order, with distinct token streams.
fn documents(vocab: usize) -> Vec<Vec<u32>> {
    ROWS.iter()
        .flat_map(|r| r.iter())
        .enumerate()
        .map(|(k, &len)| (0..len).map(|i| ((i * (7 + 2 * k) + 3 * k + 1) % vocab) as u32).collect())
        .collect()
}

fn packed_batch(docs: &[Vec<u32>]) -> Vec<SeqInput> {
    let mut it = docs.iter();
    ROWS.iter().map(|r| SeqInput::packed(r.iter().map(|_| it.next().unwrap().clone()))).collect()
}

/// `(batch row, first row position)` of every document in the packed batch.
fn packed_places() -> Vec<(usize, usize)> {
    ROWS.iter()
        .enumerate()
        .flat_map(|(b, r)| {
            r.iter().scan(0, move |a, &len| {
                let start = *a;
                *a += len;
                Some((b, start))
            })
        })
        .collect()
}

/// Sum over documents of the next-token NLL of every position (targets within the
/// document), and the indexer's auxiliary loss (`None` when no query sees a compressed
/// entry). `places[k]` = where document `k` sits.
fn loss(m: &TrainModel, batch: &[SeqInput], docs: &[Vec<u32>], places: &[(usize, usize)]) -> (Tensor, Option<Tensor>) {
    let out = m.forward(batch).unwrap();
    let s = out.hidden.dim(1).unwrap();
    let d = out.hidden.dim(2).unwrap();
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (doc, &(b, a)) in docs.iter().zip(places) {
        for t in 1..doc.len() {
            rows.push((b * s + a + t - 1) as u32);
            targets.push(doc[t]);
        }
    }
    let n = rows.len();
    let h = out.hidden.reshape((batch.len() * s, d)).unwrap();
    let idx = Tensor::from_vec(rows, n, m.device()).unwrap();
    let lp = ops::log_softmax_last(&m.logits(&h.index_select(&idx, 0).unwrap()).unwrap()).unwrap();
    let tg = Tensor::from_vec(targets, (n, 1), m.device()).unwrap();
    let nll = lp.gather(&tg, 1).unwrap().sum_all().unwrap().neg().unwrap();
    (nll, out.indexer_loss)
}

fn to_f64(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap()
}

/// Largest |a − b| / (1 + |b|).
fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs() / (1.0 + y.abs())).fold(0.0, f64::max)
}

/// Gradients of every parameter, by name.
fn grads(m: &TrainModel, loss: &Tensor) -> BTreeMap<String, Vec<f64>> {
    let g = m.backward(loss).unwrap();
    m.vars().iter().filter_map(|(name, v)| g.get(v.as_tensor()).map(|t| (name.clone(), to_f64(t)))).collect()
}

/// Largest relative gradient difference over all parameters (a parameter with a gradient
/// on one side only counts its largest entry).
fn grad_diff(a: &BTreeMap<String, Vec<f64>>, b: &BTreeMap<String, Vec<f64>>) -> (f64, String) {
    let mut worst = (0.0, String::new());
    for name in a.keys().chain(b.keys()) {
        let d = match (a.get(name), b.get(name)) {
            (Some(x), Some(y)) => max_rel(x, y),
            (Some(x), None) | (None, Some(x)) => x.iter().fold(0f64, |m, v| m.max(v.abs())),
            (None, None) => 0.0,
        };
        if d > worst.0 {
            worst = (d, name.clone());
        }
    }
    worst
}

/// Packed vs one by one for one dtype and numerics; returns the largest differences
/// (hidden states, loss, gradients).
fn compare(dtype: DType, options: TrainOptions) -> (f64, f64, f64) {
    let w = weights();
    let cfg = w.config.clone();
    let m = TrainModel::from_weights(&w, dtype, options).unwrap();
    let docs = documents(cfg.vocab_size);
    let places = packed_places();
    let packed = packed_batch(&docs);
    let out = m.forward(&packed).unwrap();
    let s = out.hidden.dim(1).unwrap();

    // 1. every document alone (batch of one): hidden states and decisions
    let mut hidden_diff = 0f64;
    for (doc, &(b, a)) in docs.iter().zip(&places) {
        let alone = m.forward(&[SeqInput::new(doc.clone())]).unwrap();
        let want = to_f64(&alone.hidden);
        let got = to_f64(&out.hidden.get(b).unwrap().narrow(0, a, doc.len()).unwrap());
        hidden_diff = hidden_diff.max(max_rel(&got, &want));
        let d = &out.decisions[b];
        let dw = &alone.decisions[0];
        for t in 0..doc.len() {
            assert_eq!(d.routes.get(&(a + t)), dw.routes.get(&t), "routes of document at ({b}, {a}), t {t}");
        }
        for ((l, t), sel) in &dw.topk {
            assert_eq!(d.topk.get(&(*l, a + t)), Some(sel), "indexer top-k at layer {l}, t {t}");
        }
        let n_packed = d.topk.keys().filter(|(_, t)| (a..a + doc.len()).contains(t)).count();
        assert_eq!(n_packed, dw.topk.len(), "indexer decisions of document at ({b}, {a})");
    }

    // 2. loss and gradients: the packed batch against the documents as separate rows of one
    //    padded batch (same NLL sum, same indexer mean over the same queries)
    let (nll_p, aux_p) = loss(&m, &packed, &docs, &places);
    let aux_p = aux_p.expect("CSA layers produce an indexer loss");
    let rows: Vec<SeqInput> = docs.iter().map(|d| SeqInput::new(d.clone())).collect();
    let row_places: Vec<(usize, usize)> = (0..docs.len()).map(|k| (k, 0)).collect();
    let (nll_u, aux_u) = loss(&m, &rows, &docs, &row_places);
    let aux_u = aux_u.expect("CSA layers produce an indexer loss");
    let total_p = (&nll_p + &aux_p).unwrap();
    let total_u = (&nll_u + &aux_u).unwrap();
    let loss_diff = max_rel(&to_f64(&total_p), &to_f64(&total_u)).max(max_rel(&to_f64(&aux_p), &to_f64(&aux_u)));
    let (g_diff, g_name) = grad_diff(&grads(&m, &total_p), &grads(&m, &total_u));
    eprintln!("  packed vs separate rows: loss {loss_diff:.2e}, gradients {g_diff:.2e} (worst {g_name})");

    // 3. the NLL's gradients against the sum of the documents' gradients run one at a time
    let gp = grads(&m, &nll_p);
    let mut sum: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut nll_sum = 0.0;
    for doc in &docs {
        let (nll, _) = loss(&m, &[SeqInput::new(doc.clone())], std::slice::from_ref(doc), &[(0, 0)]);
        nll_sum += to_f64(&nll)[0];
        for (name, g) in grads(&m, &nll) {
            let acc = sum.entry(name).or_insert_with(|| vec![0.0; g.len()]);
            acc.iter_mut().zip(&g).for_each(|(a, b)| *a += b);
        }
    }
    let nll_diff = max_rel(&to_f64(&nll_p), &[nll_sum]);
    let (g1_diff, g1_name) = grad_diff(&gp, &sum);
    eprintln!("  packed vs one at a time: NLL {nll_diff:.2e}, gradients {g1_diff:.2e} (worst {g1_name})");
    assert_eq!(s, ROWS.iter().map(|r| r.iter().sum::<usize>()).max().unwrap());
    (hidden_diff, loss_diff.max(nll_diff), g_diff.max(g1_diff))
}

#[test]
fn packed_documents_match_documents_run_one_by_one_f64() {
    let opts = TrainOptions { numerics: Numerics::DENSE, qat_experts: false, indexer_loss: true };
    let (h, l, g) = compare(DType::F64, opts);
    eprintln!("f64 dense: hidden {h:.2e}, loss {l:.2e}, gradients {g:.2e}");
    assert!(h <= 1e-9 && l <= 1e-9 && g <= 1e-9, "hidden {h}, loss {l}, gradients {g}");
}

#[test]
fn packed_documents_match_documents_run_one_by_one_f32_qat() {
    // the training configuration: f32, FP8 KV / FP4 indexer / FP4 experts fake quantisation
    let (h, l, g) = compare(DType::F32, TrainOptions::default());
    eprintln!("f32 QAT: hidden {h:.2e}, loss {l:.2e}, gradients {g:.2e}");
    assert!(h <= 1e-5 && l <= 1e-5 && g <= 1e-5, "hidden {h}, loss {l}, gradients {g}");
}

#[test]
fn without_document_starts_the_documents_leak_into_each_other() {
    // the same tokens concatenated without boundaries: a later document sees the earlier ones
    let w = weights();
    let m = TrainModel::from_weights(&w, DType::F64, TrainOptions::default()).unwrap();
    let docs = documents(w.config.vocab_size);
    let packed = packed_batch(&docs);
    let plain = SeqInput::new(packed[0].tokens.clone());
    let a = to_f64(&m.forward(&packed[..1]).unwrap().hidden);
    let b = to_f64(&m.forward(&[plain]).unwrap().hidden);
    let d = 64; // tiny dim
    assert!(max_rel(&a[..23 * d], &b[..23 * d]) < 1e-12, "the first document is the same either way");
    assert!(max_rel(&a[26 * d..], &b[26 * d..]) > 1e-3, "later documents must differ without boundaries");
}

#[test]
fn document_starts_are_validated() {
    let w = weights();
    let m = TrainModel::from_weights(&w, DType::F32, TrainOptions::default()).unwrap();
    let bad = |starts: Vec<usize>| SeqInput { tokens: vec![5; 10], forced: None, doc_starts: starts };
    for starts in [vec![1, 4], vec![0, 4, 4], vec![0, 10]] {
        assert!(m.forward(&[bad(starts.clone())]).is_err(), "{starts:?} must be rejected");
    }
    assert!(m.forward(&[bad(vec![0, 9])]).is_ok());
    let p = SeqInput::packed([vec![1, 2, 3], vec![], vec![4, 5]]);
    assert_eq!((p.tokens, p.doc_starts), (vec![1, 2, 3, 4, 5], vec![0, 3]));
}
