//! DeepSeek-V4 architecture for v4post.
//!
//! * [`config`]: hyper-parameters (official and HF key names), presets, parameter counts.
//! * [`cost`]: FLOPs and KV bytes of one decoded token, V4 against DeepSeek-V3.2.
//! * [`formats`]: FP8 E4M3 / MXFP4 encode, decode and fake quantisation.
//! * [`weights`] / [`checkpoint`]: parameters by official name; safetensors I/O.
//! * [`mapped`]: memory-mapped checkpoints whose tensors are views of the files.
//! * [`init`]: random checkpoints of any config, streamed tensor by tensor (`model init`).
//! * [`engine`]: the incremental decode engine (rollout, teachers, conformance).
//! * [`kernels`]: f32 and packed-FP4 matrix kernels used by the engine.
//!
//! The forward pass lives twice, on purpose: a trainable candle graph for the trainers and
//! a hand-written incremental decode engine for rollout, both checked against the golden
//! logits of the public reference implementation.

pub mod checkpoint;
pub mod config;
pub mod cost;
pub mod engine;
pub mod error;
pub mod formats;
pub mod hadamard;
pub mod init;
pub mod kernels;
pub mod mapped;
pub mod rope;
pub mod train;
pub mod weights;

pub use config::{Config, LayerKind, ParamCounts};
pub use engine::{Decisions, DecodeState, Engine, EngineOptions, Numerics, Row, Want};
pub use error::{ModelError, Result};
pub use weights::{ModelWeights, Tensor32};
