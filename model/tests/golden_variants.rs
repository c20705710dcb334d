//! Every V4 configuration, not only golden A's shapes: the six golden variants
//! (`testdata/golden/variants`, copied verbatim from `shared/golden/variants`; README there)
//! against the f32 logits of the Hugging Face transformers port, which matches the official
//! reference's `f32_dense` logits of golden A to 1.2e-5.
//!
//! For each variant, in dense numerics (no FP8/FP4 fake-quant of activations or KV) and with
//! free routing/indexer decisions (the variants store no decisions):
//! * engine prefill of every case, max |Δlogit| ≤ 1e-4 at every position;
//! * engine prefill of a prefix, then decode token by token through the incremental state,
//!   the same bound on every decoded position;
//! * the trainable candle graph, the same bound;
//! * an official-layout save and reload keeps every dequantised weight bit-exact, with the
//!   partial 128×128 edge blocks of projections that are not multiples of 128
//!   (`head-dim-192`: `wkv` is `[192, 128]`, its scale `[2, 1]`).

use candle_core::DType;
use model::checkpoint::{self, SaveFormat};
use model::train::{SeqInput, TrainModel, TrainOptions};
use model::{Engine, EngineOptions, ModelWeights, Numerics, Row, Want};
use safetensors::SafeTensors;
use std::path::PathBuf;

const VARIANTS: [&str; 6] =
    ["head-dim-192", "flash-shaped", "compressed-first-layer", "hca-ratio-8", "routing", "rope-yarn"];
const CASES: usize = 3;
/// Max |Δlogit| the golden README expects in dense numerics.
const TOL: f32 = 1e-4;

fn variant_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/golden/variants").join(name)
}

struct Case {
    tokens: Vec<u32>,
    /// `[L, vocab]` row-major.
    logits: Vec<f32>,
}

fn load_cases(name: &str) -> Vec<Case> {
    let bytes = std::fs::read(variant_dir(name).join("cases.safetensors")).expect("cases.safetensors");
    let st = SafeTensors::deserialize(&bytes).expect("valid cases file");
    (0..CASES)
        .map(|c| {
            let ids = st.tensor(&format!("case{c}.input_ids")).expect("input_ids");
            let tokens = ids.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32).collect();
            let lg = st.tensor(&format!("case{c}.f32_dense.prefill_logits")).expect("prefill_logits");
            let logits = lg.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            Case { tokens, logits }
        })
        .collect()
}

fn load(name: &str) -> ModelWeights {
    checkpoint::load(&variant_dir(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Max |Δ| over all logits, with the position of the worst one; panics past [`TOL`].
fn assert_close(got: &[f32], want: &[f32], vocab: usize, what: &str) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (mut worst, mut at) = (0f32, 0);
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        let d = (a - b).abs();
        if d > worst || d.is_nan() {
            (worst, at) = (d, i);
        }
    }
    assert!(
        worst <= TOL,
        "{what}: max |Δlogit| {worst:.3e} at position {} token {} (bound {TOL:e})",
        at / vocab,
        at % vocab
    );
    worst
}

fn engine_prefill(e: &Engine, toks: &[u32]) -> Vec<f32> {
    let mut states = [e.new_state()];
    let rows: Vec<Row> = toks.iter().map(|&t| Row { seq: 0, token: t }).collect();
    e.forward(&mut states, &rows, Want::AllLogits).expect("prefill").values
}

/// Prefill `toks[..prefix]`, then decode the rest one token at a time; logits of positions
/// `prefix - 1..L`.
fn engine_decode(e: &Engine, toks: &[u32], prefix: usize) -> Vec<f32> {
    let mut states = [e.new_state()];
    let rows: Vec<Row> = toks[..prefix].iter().map(|&t| Row { seq: 0, token: t }).collect();
    let mut out = e.forward(&mut states, &rows, Want::LastLogits).expect("prefix").values;
    for &t in &toks[prefix..] {
        out.extend(e.forward(&mut states, &[Row { seq: 0, token: t }], Want::LastLogits).expect("decode").values);
    }
    out
}

#[test]
fn every_variant_matches_in_engine_prefill_and_decode() {
    for name in VARIANTS {
        let w = load(name);
        let v = w.config.vocab_size;
        let cases = load_cases(name);
        for fp4_experts in [false, true] {
            let e = Engine::new(&w, EngineOptions { numerics: Numerics::DENSE, fp4_experts }).expect("engine");
            for (c, case) in cases.iter().enumerate() {
                let what = format!("{name} case {c} fp4={fp4_experts}");
                let worst =
                    assert_close(&engine_prefill(&e, &case.tokens), &case.logits, v, &format!("{what} prefill"));
                // decode from a prefix that is not a multiple of any compress ratio or window
                let prefix = case.tokens.len() / 3 + 1;
                let got = engine_decode(&e, &case.tokens, prefix);
                let want = &case.logits[(prefix - 1) * v..];
                let worst_d = assert_close(&got, want, v, &format!("{what} decode from {prefix}"));
                eprintln!("{what}: prefill max |Δ| {worst:.2e}, decode max |Δ| {worst_d:.2e}");
            }
        }
    }
}

#[test]
fn every_variant_matches_in_the_trainable_graph() {
    for name in VARIANTS {
        let w = load(name);
        let v = w.config.vocab_size;
        let cases = load_cases(name);
        let m = TrainModel::from_weights(
            &w,
            DType::F32,
            TrainOptions { numerics: Numerics::DENSE, qat_experts: false, indexer_loss: true },
        )
        .expect("train model");
        // all three cases, of different lengths, in one padded batch
        let batch: Vec<SeqInput> =
            cases.iter().map(|c| SeqInput { tokens: c.tokens.clone(), ..SeqInput::default() }).collect();
        let out = m.forward(&batch).expect("forward");
        let logits = m.logits(&out.hidden).expect("logits");
        for (c, case) in cases.iter().enumerate() {
            let len = out.lengths[c];
            let got: Vec<f32> =
                logits.get(c).unwrap().narrow(0, 0, len).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let worst = assert_close(&got, &case.logits, v, &format!("{name} case {c} train graph"));
            eprintln!("{name} case {c} train graph: max |Δ| {worst:.2e}");
        }
    }
}

#[test]
fn every_variant_round_trips_through_the_official_layout() {
    for name in VARIANTS {
        let w = load(name);
        let dir = tempfile::tempdir().unwrap();
        checkpoint::save(&w, dir.path(), SaveFormat::Official, None).expect("save");
        let back = checkpoint::load(dir.path()).expect("reload");
        assert_eq!(back.config, w.config, "{name}: config");
        for (tname, t) in &w.tensors {
            let b = &back.tensors[tname];
            assert_eq!(b.shape, t.shape, "{name}: {tname} shape");
            let same = b.data.iter().zip(&t.data).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{name}: {tname} changed in an official-layout round trip");
        }
        assert_eq!(back.tid2eid, w.tid2eid, "{name}: tid2eid");
    }
    // The stored scale of a 192-row projection has a full and a partial block row.
    let bytes = std::fs::read(variant_dir("head-dim-192").join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (wkv, scale) = (st.tensor("layers.0.attn.wkv.weight").unwrap(), st.tensor("layers.0.attn.wkv.scale").unwrap());
    assert_eq!((wkv.shape(), scale.shape()), (&[192usize, 128][..], &[2usize, 1][..]));
}

#[test]
fn a_scale_that_does_not_tile_in_128_blocks_is_a_clear_error() {
    // Rewrite head-dim-192's wkv scale as [3, 1] (what 64-row blocks would need).
    let src = variant_dir("head-dim-192");
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> =
        st.tensors().into_iter().map(|(n, t)| (n.clone(), t.dtype(), t.shape().to_vec(), t.data().to_vec())).collect();
    for (n, _, shape, data) in owned.iter_mut() {
        if n == "layers.0.attn.wkv.scale" {
            *shape = vec![3, 1];
            let b = data[0];
            *data = vec![b; 3 * data.len() / 2];
        }
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
    let err = checkpoint::load(dir.path()).expect_err("must fail").to_string();
    assert!(err.contains("layers.0.attn.wkv.scale") && err.contains("[2, 1]"), "{err}");
}
