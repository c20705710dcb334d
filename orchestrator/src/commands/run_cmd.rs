//! `run` and `worker`.

use crate::pipeline::config::PipelineConfig;
use crate::pipeline::workers::{run_worker, WorkerOptions};
use crate::pipeline::{self, results, RunOptions};
use crate::queue::{self, QueueConfig};
use crate::ui::print_json;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Pipeline file (TOML); without one, the built-in demo pipeline runs.
    pub pipeline: Option<PathBuf>,
    /// The reduced demo (about 3 minutes on 2 cores).
    #[arg(long, conflicts_with_all = ["pipeline", "resume"])]
    pub quick: bool,
    /// Continue the run in this directory (runs/NAME) after a crash or a stop.
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "pipeline")]
    pub resume: Option<PathBuf>,
    /// Base checkpoint of the demo pipeline (default: the shipped assets/v4-small-base).
    #[arg(long)]
    pub base: Option<String>,
    /// Run name (default: from the pipeline; the demo uses `demo` / `demo-quick`).
    #[arg(long)]
    pub name: Option<String>,
    /// Parent directory of run directories.
    #[arg(long)]
    pub runs_dir: Option<PathBuf>,
    /// Queue: `embedded` or redis://[user:password@]host:port (rediss:// for TLS); the
    /// password may also come from V4POST_REDIS_PASSWORD.
    #[arg(long)]
    pub queue: Option<String>,
    /// Stop after this many optimizer steps (then continue with --resume).
    #[arg(long, hide = true)]
    pub stop_after_steps: Option<u64>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// rollout (student/policy sampling), teacher (teacher head inputs), reward (scoring).
    #[arg(value_enum)]
    pub kind: crate::pipeline::workers::WorkerKind,
    /// redis://[user:password@]host:port or rediss://... (V4POST_REDIS_PASSWORD also works).
    #[arg(long)]
    pub queue: String,
    /// Run name, as `run.name` of its pipeline (keys `v4post:{name}:` and the directory
    /// RUNS_DIR/NAME).
    #[arg(long)]
    pub name: String,
    /// Where run directories live (a path shared with the trainer).
    #[arg(long, default_value = "runs")]
    pub runs_dir: PathBuf,
    /// Seconds before a job of a dead worker is handed to another one.
    #[arg(long, default_value_t = 120.0)]
    pub visibility_timeout: f64,
    /// Drop jobs for policies more than this many versions old.
    #[arg(long, default_value_t = 0)]
    pub max_staleness: u64,
    /// Stop after this many jobs (0 = until the run finishes).
    #[arg(long, default_value_t = 0)]
    pub max_jobs: usize,
    /// Keep waiting for work after the run is marked finished.
    #[arg(long)]
    pub no_exit: bool,
    /// Teachers a teacher worker keeps loaded at once (least recently used goes first).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub resident: u64,
    /// Name of this consumer (default: host-pid).
    #[arg(long)]
    pub consumer: Option<String>,
    #[arg(long)]
    pub json: bool,
}

/// The shipped base: `assets/v4-small-base` in the working directory or the source tree.
pub fn default_base() -> Result<String> {
    let candidates =
        [PathBuf::from("assets/v4-small-base"), Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/v4-small-base")];
    for c in &candidates {
        if c.join("config.json").exists() {
            return Ok(c.to_string_lossy().into_owned());
        }
    }
    bail!(
        "the shipped base assets/v4-small-base is missing; rebuild it with the command in assets/README.md, or pass --base DIR (or --base preset:small for random weights)"
    )
}

pub fn run(a: &RunArgs) -> Result<()> {
    let (mut cfg, resume) = match (&a.pipeline, &a.resume) {
        (_, Some(dir)) => {
            let p = dir.join("pipeline.toml");
            let mut c = PipelineConfig::load(&p).with_context(|| format!("--resume {}", dir.display()))?;
            // the run directory is where it is now
            if let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) {
                c.run.runs_dir = if parent.as_os_str().is_empty() { PathBuf::from(".") } else { parent.to_path_buf() };
                let name = name.to_string_lossy();
                c.run.name = datasets::name_of_component(&name)
                    .with_context(|| format!("--resume {}: not a run directory name", dir.display()))?;
            }
            // the resolved config stores an absolute or file-relative base; keep it
            (c, true)
        }
        (Some(p), None) => (PipelineConfig::load(p)?, false),
        (None, None) => {
            let base = match &a.base {
                Some(b) => b.clone(),
                None => default_base()?,
            };
            (PipelineConfig::demo(a.quick, &base), false)
        }
    };
    if let Some(n) = &a.name {
        cfg.run.name = n.clone();
    }
    if let Some(d) = &a.runs_dir {
        cfg.run.runs_dir = d.clone();
    }
    if let (Some(b), Some(_)) = (&a.base, &a.pipeline) {
        cfg.model.base = b.clone();
    }
    if !resume && !cfg.model.base.starts_with("preset:") {
        // store an absolute base path so --resume works from any directory
        if let Ok(p) = std::fs::canonicalize(&cfg.model.base) {
            cfg.model.base = p.to_string_lossy().into_owned();
        }
    }
    if !resume {
        // the same for the datasets (a glob need not exist as a path, so no canonicalize)
        for p in [cfg.data.prompts.as_mut(), cfg.data.eval_prompts.as_mut()].into_iter().flatten() {
            if let Ok(abs) = std::path::absolute(&*p) {
                *p = abs;
            }
        }
        for s in cfg.stages.iter_mut() {
            if let pipeline::config::Stage::Sft(pipeline::config::SftStage { data: Some(p), .. }) = s {
                if let Ok(abs) = std::path::absolute(&*p) {
                    *p = abs;
                }
            }
        }
    }
    let opts = RunOptions {
        resume,
        json: a.json,
        queue: a.queue.clone(),
        stop_after_steps: a.stop_after_steps,
        run_dir: None,
    };
    let results = pipeline::run(cfg.clone(), &opts)?;
    if a.json {
        print_json(&results);
    } else {
        println!("{}", results::table(&results));
        println!("run directory: {}", cfg.run_dir().display());
    }
    Ok(())
}

pub fn worker(a: &WorkerArgs) -> Result<()> {
    if a.queue == "embedded" {
        bail!("a separate worker process needs a shared queue: --queue redis://HOST:PORT");
    }
    let run_dir = a.runs_dir.join(datasets::safe_component(&a.name));
    if !run_dir.exists() {
        bail!(
            "{} does not exist: workers need the run directory (shared filesystem) of `v4post run`",
            run_dir.display()
        );
    }
    let cfg = QueueConfig {
        visibility_timeout: Duration::from_secs_f64(a.visibility_timeout.max(0.1)),
        ..Default::default()
    };
    let q = queue::open(&a.queue, &a.name, cfg)?;
    let consumer = a.consumer.clone().unwrap_or_else(|| {
        let host =
            std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "host".into());
        format!("{host}-{}", std::process::id())
    });
    let opts = WorkerOptions {
        consumer,
        max_staleness: a.max_staleness,
        stop: Arc::new(AtomicBool::new(false)),
        exit_when_finished: !a.no_exit,
        max_jobs: a.max_jobs,
        resident_teachers: usize::try_from(a.resident).unwrap_or(usize::MAX),
    };
    let rep = run_worker(a.kind, q, &run_dir, &opts)?;
    if a.json {
        print_json(&serde_json::to_value(&rep)?);
    } else {
        eprintln!(
            "worker {:?}: {} jobs ({} items), {} stale dropped, {} failed",
            a.kind, rep.jobs, rep.items, rep.dropped_stale, rep.failed
        );
    }
    Ok(())
}
