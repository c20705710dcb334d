//! `dashboard` and `report`.

use anyhow::{bail, Context, Result};
use clap::Args;
use dashboard::data::Run;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[derive(Args, Debug)]
pub struct DashboardArgs {
    /// Run directory (runs/NAME); repeat to overlay several runs.
    #[arg(long = "run", required = true)]
    pub runs: Vec<PathBuf>,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Address to listen on (0.0.0.0 to reach it from other machines).
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: String,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Run directory (runs/NAME); give several to overlay them.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Self-contained HTML report (opens offline).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write TensorBoard scalar event files here (one subdirectory per run).
    #[arg(long)]
    pub tensorboard: Option<PathBuf>,
    /// One JSON object on stdout: report (the HTML path or null), tensorboard (a list of
    /// {run, path, scalars}).
    #[arg(long)]
    pub json: bool,
}

fn open_runs(dirs: &[std::path::PathBuf]) -> Result<Vec<Run>> {
    let runs: Vec<Run> = dirs.iter().map(|d| Run::open(d)).collect::<dashboard::Result<_>>()?;
    let mut names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    names.sort();
    if names.windows(2).any(|w| w[0] == w[1]) {
        bail!("two runs share a name ({names:?}); overlay runs with different directory names");
    }
    Ok(runs)
}

pub fn dashboard(a: &DashboardArgs) -> Result<()> {
    let runs = open_runs(&a.runs)?;
    for r in &runs {
        let s = r.summary();
        if let Some(m) = &s.message {
            eprintln!("note: {}: {m}", r.name);
        }
    }
    let title = format!("v4post — {}", runs.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", "));
    let state = Arc::new(dashboard::server::AppState { runs: Mutex::new(runs), title });
    let addr: SocketAddr =
        format!("{}:{}", a.bind, a.port).parse().with_context(|| format!("--bind {} --port {}", a.bind, a.port))?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        dashboard::server::serve(
            state,
            addr,
            |bound| eprintln!("dashboard on http://{bound}/ (Ctrl-C to stop)"),
            async {
                let _ = tokio::signal::ctrl_c().await;
            },
        )
        .await
    })
    .with_context(|| format!("serving on {addr}"))?;
    Ok(())
}

pub fn report(a: &ReportArgs) -> Result<()> {
    if a.out.is_none() && a.tensorboard.is_none() {
        bail!("nothing to write: give --out report.html and/or --tensorboard DIR");
    }
    let runs = open_runs(&a.runs)?;
    for r in &runs {
        for e in &r.errors {
            eprintln!("warning: {}: {e}", r.name);
        }
    }
    if let Some(out) = &a.out {
        let title = format!("v4post report — {}", runs.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", "));
        model::checkpoint::write_atomic(out, dashboard::report::render(&runs, &title).as_bytes())?;
        if !a.json {
            eprintln!("report: {}", out.display());
        }
    }
    let mut written = Vec::new();
    if let Some(dir) = &a.tensorboard {
        for r in &runs {
            let rows: Vec<_> = r.all_rows().collect();
            let p = dashboard::tensorboard::write_events(dir, &r.name, &rows)?;
            if !a.json {
                eprintln!("tensorboard: {} ({} scalars)", p.display(), rows.len());
            }
            written.push(serde_json::json!({"run": r.name, "path": p, "scalars": rows.len()}));
        }
    }
    if a.json {
        crate::ui::print_json(&serde_json::json!({"report": a.out, "tensorboard": written}));
    }
    Ok(())
}
