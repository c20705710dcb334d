//! The v4post data plane: everything between text and tensors, and everything stored.
//!
//! * [`tokenizer`]: built-in byte tokenizer with the V4 special tokens; HF `tokenizer.json`.
//! * [`chat`]: the V4 chat encoding (Non-think / Think High / Think Max, DSML tool calls) and
//!   its parser back to reasoning, content and tool calls.
//! * [`tasks`]: the built-in procedural task suite (13 domains in 4 families).
//! * [`prompts`]: prompt sources — the suite, user Parquet/JSONL datasets.
//! * [`layouts`]: user datasets as they come (verl, TRL, v4post; files, shard directories, globs).
//! * [`sft_data`]: user SFT conversations (`messages`, `prompt`/`completion`).
//! * [`store`]: trajectories as Arrow/Parquet shards; teacher-state shards; the metrics store.
//! * [`paths`]: names from data (domains, teacher ids, run and stage names) as safe,
//!   reversibly escaped path components.

pub mod answers;
pub mod chat;
pub mod error;
pub mod layouts;
pub mod paths;
pub mod progress;
pub mod prompts;
pub mod sft_data;
pub mod store;
pub mod tasks;
pub mod tokenizer;

pub use chat::{Message, Mode, ParsedReply, ToolCall};
pub use error::{DataError, Result};
pub use paths::{name_of_component, safe_component};
pub use tasks::{Split, Task};
pub use tokenizer::{ByteTokenizer, Tokenizer};
