//! Memory-mapped checkpoints and the engine built on them ([`Engine::from_checkpoint`]).
//!
//! * Golden A (official layout: FP8 projections, packed FP4 experts, BF16 embeddings/head)
//!   through the mapped engine against the reference `f32_dense` logits with the stored
//!   decisions replayed, at the bound of `golden_engine.rs` (|Δ| ≤ 1e-4 + 1e-4·|ref|), prefill
//!   and prefill-then-decode, FP4 and f32 experts.
//! * The six golden variants through the mapped engine against their f32 logits at the bound
//!   of `golden_variants.rs` (max |Δ| ≤ 1e-4), prefill and decode.
//! * Mapped engine against `Engine::new(&checkpoint::load(dir))` (weights widened to f32):
//!   every logit, all three numerics, few-row (decode) and many-row (prefill) products.
//! * F32, Rollout and Official saves, single-file and sharded, and Hugging Face tensor names:
//!   same logits as the f32-loaded engine.
//! * Broken files: truncated (names file and tensor), corrupt header, missing, mis-shaped,
//!   unexpected tensors, FP4 weights whose input dimension is not a multiple of 32 or that
//!   are not 2-D, index entries outside the directory — errors naming the file and tensor
//!   (or index entry), never panics.
//! * Memory: the mapped engine holds no heap copy of the routed experts (they are the packed
//!   mapped bytes), and its heap-owned weights are a small fraction of the file.

use model::checkpoint::{self, SaveFormat};
use model::mapped::MappedCheckpoint;
use model::{Decisions, Engine, EngineOptions, Numerics, Row, Want};
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const VARIANTS: [&str; 6] =
    ["head-dim-192", "flash-shaped", "compressed-first-layer", "hca-ratio-8", "routing", "rope-yarn"];

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/golden/v4-tiny-a")
}

fn variant_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/golden/variants").join(name)
}

fn i64s(st: &SafeTensors, name: &str) -> (Vec<usize>, Vec<i64>) {
    let t = st.tensor(name).unwrap_or_else(|_| panic!("missing {name}"));
    (t.shape().to_vec(), t.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect())
}

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|_| panic!("missing {name}"));
    t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Stored routing/indexer decisions of golden A (as `golden_engine.rs` reads them).
fn decisions(st: &SafeTensors, c: usize, path: &str, n_layers: usize, k: usize) -> Decisions {
    let mut d = Decisions::default();
    for l in 0..n_layers {
        let (shape, v) = i64s(st, &format!("case{c}.f32_dense.{path}.route_idx.L{l}"));
        for pos in 0..shape[0] {
            let e = d.routes.entry(pos).or_insert_with(|| vec![0; n_layers * k]);
            e[l * k..(l + 1) * k]
                .copy_from_slice(&v[pos * k..(pos + 1) * k].iter().map(|&x| x as u32).collect::<Vec<_>>());
        }
        let tk = format!("case{c}.f32_dense.{path}.topk.L{l}");
        if st.tensor(&tk).is_ok() {
            let (shape, v) = i64s(st, &tk);
            for pos in 0..shape[0] {
                let sel = v[pos * shape[1]..(pos + 1) * shape[1]].iter().filter(|&&x| x >= 0).map(|&x| x as usize);
                d.topk.insert((l, pos), sel.collect());
            }
        }
    }
    d
}

fn rows(toks: &[u32]) -> Vec<Row> {
    toks.iter().map(|&t| Row { seq: 0, token: t }).collect()
}

fn prefill(e: &Engine, toks: &[u32], forced: Option<Arc<Decisions>>) -> Vec<f32> {
    let mut st = e.new_state();
    if let Some(f) = forced {
        st = st.replaying(f);
    }
    e.forward(&mut [st], &rows(toks), Want::AllLogits).expect("prefill").values
}

/// Prefill `toks[..prefix]`, then one token at a time; logits of the last prefix position
/// (when `with_prefix_logits`) and of every decoded token.
fn decode(
    e: &Engine,
    toks: &[u32],
    prefix: usize,
    forced: Option<Arc<Decisions>>,
    with_prefix_logits: bool,
) -> Vec<f32> {
    let mut st = e.new_state();
    if let Some(f) = forced {
        st = st.replaying(f);
    }
    let mut states = [st];
    let first = e.forward(&mut states, &rows(&toks[..prefix]), Want::LastLogits).expect("prefix").values;
    let mut out = if with_prefix_logits { first } else { Vec::new() };
    for &t in &toks[prefix..] {
        out.extend(e.forward(&mut states, &[Row { seq: 0, token: t }], Want::LastLogits).expect("decode").values);
    }
    out
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths");
    a.iter()
        .zip(b)
        .map(|(x, y)| if x.is_nan() || y.is_nan() { f32::INFINITY } else { (x - y).abs() })
        .fold(0f32, f32::max)
}

fn assert_golden(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        let tol = 1e-4 + 1e-4 * b.abs();
        assert!((a - b).abs() <= tol, "{what}: logit[{i}] = {a}, reference {b} (|Δ| {})", (a - b).abs());
    }
    eprintln!("{what}: max |Δ| vs reference {:.2e}", max_abs_diff(got, want));
}

#[test]
fn golden_a_through_the_mapped_engine_matches_the_reference() {
    let bytes = std::fs::read(golden_dir().join("cases.safetensors")).expect("cases.safetensors");
    let st = SafeTensors::deserialize(&bytes).expect("valid cases file");
    for fp4_experts in [true, false] {
        let e = Engine::from_checkpoint(&golden_dir(), EngineOptions { numerics: Numerics::DENSE, fp4_experts })
            .expect("mapped engine");
        let (nl, k) = (e.config.n_layers, e.config.n_activated_experts);
        for c in 0..3 {
            let toks: Vec<u32> = i64s(&st, &format!("case{c}.input_ids")).1.into_iter().map(|t| t as u32).collect();
            let forced = Arc::new(decisions(&st, c, "prefill", nl, k));
            let got = prefill(&e, &toks, Some(forced));
            let what = format!("golden A case {c} fp4={fp4_experts}");
            assert_golden(&got, &f32s(&st, &format!("case{c}.f32_dense.prefill_logits")), &format!("{what} prefill"));
            let prefix = i64s(&st, &format!("case{c}.decode_prefix_len")).1[0] as usize;
            let forced = Arc::new(decisions(&st, c, "decode", nl, k));
            let got = decode(&e, &toks, prefix, Some(forced), false);
            assert_golden(&got, &f32s(&st, &format!("case{c}.f32_dense.decode_logits")), &format!("{what} decode"));
        }
    }
}

#[test]
fn every_variant_through_the_mapped_engine_matches_its_golden_logits() {
    const TOL: f32 = 1e-4;
    for name in VARIANTS {
        let bytes = std::fs::read(variant_dir(name).join("cases.safetensors")).expect("cases.safetensors");
        let st = SafeTensors::deserialize(&bytes).expect("valid cases file");
        for fp4_experts in [true, false] {
            let opts = EngineOptions { numerics: Numerics::DENSE, fp4_experts };
            let e = Engine::from_checkpoint(&variant_dir(name), opts).unwrap_or_else(|e| panic!("{name}: {e}"));
            let v = e.config.vocab_size;
            for c in 0..3 {
                let toks: Vec<u32> = i64s(&st, &format!("case{c}.input_ids")).1.into_iter().map(|t| t as u32).collect();
                let want = f32s(&st, &format!("case{c}.f32_dense.prefill_logits"));
                let what = format!("{name} case {c} fp4={fp4_experts}");
                let d = max_abs_diff(&prefill(&e, &toks, None), &want);
                assert!(d <= TOL, "{what} prefill: max |Δlogit| {d:.3e}");
                let prefix = toks.len() / 3 + 1;
                let dd = max_abs_diff(&decode(&e, &toks, prefix, None, true), &want[(prefix - 1) * v..]);
                assert!(dd <= TOL, "{what} decode from {prefix}: max |Δlogit| {dd:.3e}");
                eprintln!("{what}: prefill max |Δ| {d:.2e}, decode max |Δ| {dd:.2e}");
            }
        }
    }
}

/// Logits of the mapped engine and of the f32-loaded engine on `dir`: prefill (many-row
/// products) and decode (few-row products) of a 40-token sequence; returns the max |Δ|.
fn mapped_vs_loaded(dir: &Path, options: EngineOptions) -> f32 {
    let mapped = Engine::from_checkpoint(dir, options).expect("mapped engine");
    let loaded = Engine::new(&checkpoint::load(dir).expect("load"), options).expect("engine");
    let v = mapped.config.vocab_size as u32;
    let toks: Vec<u32> = (0..40u32).map(|i| (i * 7919 + 13) % v).collect();
    let a = [prefill(&mapped, &toks, None), decode(&mapped, &toks, 9, None, true)].concat();
    let b = [prefill(&loaded, &toks, None), decode(&loaded, &toks, 9, None, true)].concat();
    max_abs_diff(&a, &b)
}

#[test]
fn mapped_engine_equals_the_f32_loaded_engine() {
    let mut dirs = vec![golden_dir()];
    dirs.extend(VARIANTS.iter().map(|n| variant_dir(n)));
    for dir in &dirs {
        for numerics in [Numerics::DENSE, Numerics::QAT, Numerics::ACT_FP8] {
            for fp4_experts in [true, false] {
                let d = mapped_vs_loaded(dir, EngineOptions { numerics, fp4_experts });
                eprintln!("{} {numerics:?} fp4={fp4_experts}: max |Δ| mapped vs loaded {d:.2e}", dir.display());
                assert!(d <= 1e-5, "{}: {numerics:?} fp4={fp4_experts}: max |Δ| {d:e}", dir.display());
            }
        }
    }
}

#[test]
fn every_save_format_and_sharding_reads_mapped() {
    let w = checkpoint::load(&golden_dir()).expect("golden");
    let opts = EngineOptions::default();
    let reference = {
        let dir = tempfile::tempdir().unwrap();
        checkpoint::save(&w, dir.path(), SaveFormat::Official, None).unwrap();
        let e = Engine::from_checkpoint(dir.path(), opts).unwrap();
        let toks: Vec<u32> = (0..24u32).map(|i| (i * 31 + 5) % e.config.vocab_size as u32).collect();
        (toks.clone(), prefill(&e, &toks, None))
    };
    for format in [SaveFormat::F32, SaveFormat::Rollout, SaveFormat::Official] {
        for shard in [None, Some(256 * 1024)] {
            let dir = tempfile::tempdir().unwrap();
            checkpoint::save(&w, dir.path(), format, shard).unwrap();
            let n_files = std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "safetensors"))
                .count();
            assert_eq!(n_files > 1, shard.is_some(), "{format:?} {shard:?}: {n_files} files");
            let ck = MappedCheckpoint::open(dir.path()).expect("maps");
            assert_eq!(ck.files().len(), n_files);
            let d = mapped_vs_loaded(dir.path(), opts);
            assert!(d <= 1e-5, "{format:?} shard {shard:?}: mapped vs loaded {d:e}");
            // the golden values are exactly representable in every format: same logits
            let e = Engine::from_checkpoint(dir.path(), opts).unwrap();
            let got = prefill(&e, &reference.0, None);
            let dr = max_abs_diff(&got, &reference.1);
            eprintln!("{format:?} shard {shard:?} ({n_files} files): vs loaded {d:.2e}, vs official {dr:.2e}");
            assert!(dr <= 1e-5, "{format:?} shard {shard:?}: vs official single file {dr:e}");
        }
    }
}

/// A copy of golden A's safetensors with Hugging Face names for a few tensors, opened as a
/// directory and as the file itself.
#[test]
fn hugging_face_names_and_a_single_file_are_accepted() {
    let bytes = std::fs::read(golden_dir().join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let hf = |n: &str| -> String {
        let n = n
            .replace("embed.weight", "embed_tokens.weight")
            .replace(".attn.wq_a.weight", ".self_attn.q_a_proj.weight")
            .replace(".attn.wq_a.scale", ".self_attn.q_a_proj.weight_scale_inv")
            .replace(".ffn.gate.bias", ".mlp.gate.e_score_correction_bias")
            .replace("attn_norm.weight", "input_layernorm.weight");
        if n == "head.weight" {
            "lm_head.weight".into()
        } else if n.starts_with("layers.") || n.starts_with("embed_tokens") {
            format!("model.{n}")
        } else {
            n
        }
    };
    let views: Vec<(String, safetensors::tensor::TensorView)> =
        st.tensors().into_iter().map(|(n, v)| (hf(&n), v)).collect();
    assert!(views.iter().any(|(n, _)| n == "model.layers.0.self_attn.q_a_proj.weight_scale_inv"));
    let dir = tempfile::tempdir().unwrap();
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
    std::fs::copy(golden_dir().join("config.json"), dir.path().join("config.json")).unwrap();
    let toks: Vec<u32> = (0..20u32).map(|i| (i * 101 + 3) % 500).collect();
    let a = prefill(&Engine::from_checkpoint(dir.path(), EngineOptions::default()).unwrap(), &toks, None);
    let b = prefill(&Engine::from_checkpoint(&golden_dir(), EngineOptions::default()).unwrap(), &toks, None);
    assert_eq!(a, b, "renamed tensors give the same engine");
    // one safetensors file named directly (its config.json next to it)
    let file = dir.path().join("model.safetensors");
    let c = prefill(&Engine::from_checkpoint(&file, EngineOptions::default()).unwrap(), &toks, None);
    assert_eq!(a, c, "a single file reads like its directory");
}

fn open_err(dir: &Path) -> String {
    match MappedCheckpoint::open(dir) {
        Ok(_) => panic!("{} mapped but should not", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn broken_checkpoints_are_clear_errors_naming_file_and_tensor() {
    let w = checkpoint::load(&golden_dir()).unwrap();
    let good = tempfile::tempdir().unwrap();
    checkpoint::save(&w, good.path(), SaveFormat::Official, None).unwrap();
    let file = good.path().join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let cfg = std::fs::read_to_string(good.path().join("config.json")).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let broken = |content: &[u8]| {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("config.json"), &cfg).unwrap();
        std::fs::write(d.path().join("model.safetensors"), content).unwrap();
        d
    };

    // truncated inside the data: the file and the first cut-off tensor are named
    let d = broken(&bytes[..8 + header_len + (bytes.len() - 8 - header_len) / 2]);
    let e = open_err(d.path());
    assert!(e.contains("model.safetensors") && e.contains("truncated") && e.contains("tensor `"), "{e}");
    assert!(Engine::from_checkpoint(d.path(), EngineOptions::default()).is_err());
    // truncated inside the header, and shorter than the length prefix
    for cut in [8 + header_len / 2, 5, 0] {
        let e = open_err(broken(&bytes[..cut]).path());
        assert!(e.contains("model.safetensors") && e.contains("not a valid safetensors"), "cut {cut}: {e}");
    }
    // garbage header
    let e = open_err(broken(b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage").path());
    assert!(e.contains("not a valid safetensors"), "{e}");

    // Structural problems: an error naming the file and the tensor, from the mapped reader,
    // from `checkpoint::load` and from the engine alike (never a panic).
    let fails_naming = |w: &model::ModelWeights, format: SaveFormat, must: &str| {
        let d = tempfile::tempdir().unwrap();
        checkpoint::save(w, d.path(), format, None).unwrap();
        let file = d.path().join("model.safetensors").display().to_string();
        for (what, e) in [
            ("mapped", open_err(d.path())),
            ("load", checkpoint::load(d.path()).expect_err("load must fail too").to_string()),
            (
                "engine",
                Engine::from_checkpoint(d.path(), EngineOptions::default()).err().expect("engine fails").to_string(),
            ),
        ] {
            assert!(e.contains(&file), "{what}: error does not name {file}: {e}");
            assert!(e.contains(must), "{what}: error does not name {must}: {e}");
        }
    };
    let mut missing = w.clone();
    missing.tensors.remove("layers.1.attn.wq_a.weight");
    fails_naming(&missing, SaveFormat::Official, "missing tensor `layers.1.attn.wq_a.weight`");
    let mut extra = w.clone();
    extra.tensors.insert("layers.1.attn.surprise".into(), model::Tensor32::zeros(vec![3]));
    fails_naming(&extra, SaveFormat::F32, "unexpected tensor `layers.1.attn.surprise`");
    let mut shaped = w.clone();
    shaped.tensors.insert("norm.weight".into(), model::Tensor32::zeros(vec![7]));
    fails_naming(&shaped, SaveFormat::Official, "tensor `norm.weight` has shape [7]");
    let mut expert = w.clone();
    expert.fp4.clear();
    let t = expert.tensors.get_mut("layers.0.ffn.experts.0.w1.weight").unwrap();
    t.shape = vec![t.shape[0] / 2, t.shape[1] * 2];
    fails_naming(&expert, SaveFormat::Official, "`layers.0.ffn.experts.0.w1.weight`");

    // a scale with the wrong block grid (FP8) names file, tensor and scale
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut views: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    let wrong = [127u8; 15];
    for (n, v) in views.iter_mut() {
        if n == "layers.0.attn.wq_a.scale" {
            let grid = vec![v.shape()[0] + 2, v.shape()[1] + 2];
            let len = grid[0] * grid[1];
            *v = safetensors::tensor::TensorView::new(safetensors::Dtype::F8_E8M0, grid, &wrong[..len]).unwrap();
        }
    }
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("config.json"), &cfg).unwrap();
    safetensors::serialize_to_file(views, None, &d.path().join("model.safetensors")).unwrap();
    let mapped = open_err(d.path());
    let file = d.path().join("model.safetensors").display().to_string();
    assert!(mapped.contains(&file) && mapped.contains("scale `layers.0.attn.wq_a.scale` has shape"), "{mapped}");
    let loaded = checkpoint::load(d.path()).expect_err("load fails").to_string();
    assert!(loaded.contains(&file) && loaded.contains("`layers.0.attn.wq_a.scale`"), "{loaded}");
}

/// `dir` with an F32 save of `w` whose tensors `replace` are swapped for the given
/// `(dtype, shape, bytes)` (a crafted file: `save` never writes such tensors).
fn crafted(w: &model::ModelWeights, replace: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    checkpoint::save(w, d.path(), SaveFormat::F32, None).unwrap();
    let file = d.path().join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut views: Vec<(String, safetensors::tensor::TensorView)> =
        st.tensors().into_iter().filter(|(n, _)| !replace.iter().any(|r| r.0 == n)).collect();
    for (name, dtype, shape, data) in replace {
        views.push((name.to_string(), safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap()));
    }
    safetensors::serialize_to_file(views, None, &file).unwrap();
    d
}

/// Packed FP4 weights whose logical input dimension is not a multiple of the 32-wide MXFP4
/// block (even or odd) pass the packed/scale shape rules, then used to panic in the kernels
/// and decoders; FP4 storage of a 1-D parameter too. Each is an error naming file and tensor.
#[test]
fn fp4_weights_with_unusable_shapes_are_errors_not_panics() {
    use safetensors::Dtype;
    for inter in [48usize, 33] {
        let cfg = model::Config { moe_inter_dim: inter, expert_dtype: "bf16".into(), ..model::Config::tiny() };
        let w = model::ModelWeights::random(&cfg, 3).unwrap();
        let name = "layers.0.ffn.experts.0.w2.weight";
        let rows = cfg.dim;
        let (packed, scales) = (inter / 2, inter / 32);
        let d = crafted(
            &w,
            &[
                (name, Dtype::I8, vec![rows, packed], vec![0x21; rows * packed]),
                ("layers.0.ffn.experts.0.w2.scale", Dtype::F8_E8M0, vec![rows, scales], vec![127; rows * scales]),
            ],
        );
        let file = d.path().join("model.safetensors").display().to_string();
        let must = format!("packed FP4 tensor `{name}` has logical shape [{rows}, {inter}]");
        let mut errors = vec![
            ("mapped", open_err(d.path())),
            ("load", checkpoint::load(d.path()).expect_err("load fails").to_string()),
            (
                "engine",
                Engine::from_checkpoint(d.path(), EngineOptions::default()).err().expect("engine fails").to_string(),
            ),
        ];
        // Without a config the logical width is 2 × the packed width, so only the even case
        // is visible to `load_tensors`.
        if inter % 2 == 0 {
            let e = checkpoint::load_tensors(d.path(), &[name]).expect_err("load_tensors fails");
            errors.push(("load_tensors", e.to_string()));
        }
        for (what, e) in errors {
            assert!(e.contains(&file) && e.contains(&must) && e.contains("multiple of"), "inter {inter} {what}: {e}");
        }
    }
    // a 1-D parameter stored as packed FP4
    let cfg = model::Config::tiny();
    let w = model::ModelWeights::random(&cfg, 4).unwrap();
    let d = crafted(
        &w,
        &[
            ("norm.weight", Dtype::I8, vec![cfg.dim / 2], vec![0; cfg.dim / 2]),
            ("norm.scale", Dtype::F8_E8M0, vec![1], vec![127]),
        ],
    );
    let e = open_err(d.path());
    let file = d.path().join("model.safetensors").display().to_string();
    assert!(e.contains(&file) && e.contains("packed FP4 tensor `norm.weight`") && e.contains("2-D"), "{e}");
}

/// Shard names in the index are file names inside the checkpoint directory: absolute
/// paths, separators and `..` are refused with the index file and entry named.
#[test]
fn index_entries_outside_the_checkpoint_directory_are_refused() {
    let w = checkpoint::load(&golden_dir()).unwrap();
    let d = tempfile::tempdir().unwrap();
    checkpoint::save(&w, d.path(), SaveFormat::F32, Some(256 * 1024)).unwrap();
    let index_path = d.path().join("model.safetensors.index.json");
    let good: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    assert!(MappedCheckpoint::open(d.path()).is_ok());
    let outside = d.path().join("model-00001-of-00002.safetensors").display().to_string();
    for bad in ["../model-00001-of-00002.safetensors", "sub/model.safetensors", outside.as_str(), "..", ""] {
        let mut v = good.clone();
        v["weight_map"]["norm.weight"] = serde_json::Value::String(bad.to_string());
        std::fs::write(&index_path, serde_json::to_string(&v).unwrap()).unwrap();
        for (what, e) in [
            ("mapped", open_err(d.path())),
            ("files", checkpoint::checkpoint_files(d.path()).expect_err("refused").to_string()),
            ("load", checkpoint::load(d.path()).expect_err("load fails").to_string()),
        ] {
            assert!(
                e.contains(&index_path.display().to_string())
                    && e.contains("`norm.weight`")
                    && e.contains(&format!("`{bad}`")),
                "{what} {bad:?}: {e}"
            );
        }
    }
}

#[test]
fn mapped_engine_holds_no_heap_copy_of_the_experts() {
    let ck = MappedCheckpoint::open(&golden_dir()).unwrap();
    let file = ck.file_bytes() as usize;
    let e = Engine::from_mapped(&ck, EngineOptions::default()).unwrap();
    let (experts, other) = e.weight_memory();
    let c = &e.config;
    let per_expert = 3 * c.moe_inter_dim * c.dim;
    let routed = c.n_layers * c.n_routed_experts * per_expert;
    eprintln!(
        "golden A: file {file} B; experts owned {} B mapped {} B; other owned {} B mapped {} B; f32 experts would be {} B",
        experts.owned,
        experts.mapped,
        other.owned,
        other.mapped,
        4 * routed
    );
    assert_eq!(experts.owned, 0, "routed experts must be the mapped packed bytes");
    assert_eq!(experts.mapped, routed / 2 + routed / 32, "packed codes + UE8M0 scales");
    // Heap-owned weights: small vectors, decoded block scales, mHC (F32 stored, decoded).
    assert!(
        experts.owned + other.owned < file / 4,
        "heap-owned weights {} B vs file {file} B",
        experts.owned + other.owned
    );
    assert!(experts.total() + other.total() <= file + file / 4, "everything held is about the file");

    // The f32-loaded engine, for contrast, holds f32 copies of everything but the experts.
    let loaded = Engine::new(&checkpoint::load(&golden_dir()).unwrap(), EngineOptions::default()).unwrap();
    let (le, lo) = loaded.weight_memory();
    assert_eq!(le.owned, experts.mapped, "the loaded engine keeps the same packed experts on the heap");
    assert_eq!(le.mapped + lo.mapped, 0);
    assert!(lo.owned > 2 * other.total(), "f32 widening of FP8/BF16 tensors: {} vs {}", lo.owned, other.total());

    // An F32 checkpoint is read in place.
    let w = checkpoint::load(&golden_dir()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    checkpoint::save(&w, dir.path(), SaveFormat::Rollout, None).unwrap();
    let e = Engine::from_checkpoint(dir.path(), EngineOptions::default()).unwrap();
    let (ex, ot) = e.weight_memory();
    assert_eq!(ex.owned, 0);
    assert!(ot.mapped > 4 * ot.owned, "F32 matrices mapped in place: owned {} mapped {}", ot.owned, ot.mapped);
}
