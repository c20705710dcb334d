//! Dashboards of a run's metrics store: per-teacher reverse KL, KL by domain, entropies,
//! GRPO rewards, response length by reasoning mode, clip fraction, gradient norm,
//! throughput and queue depth.
//!
//! * [`data`]: runs and their metrics, read incrementally and deduplicated;
//! * [`server`]: the live dashboard (axum): the page, `GET /api/runs`, `GET /api/metrics`,
//!   `GET /api/results`; the page polls, so it follows a run while it trains;
//! * [`report`]: the same page as one self-contained HTML file (data and chart library
//!   inlined) that opens offline;
//! * [`csp`]: the pages' Content-Security-Policy (a header live, a `<meta>` in the report);
//! * [`tensorboard`]: scalar event files (`section/name` tags) for TensorBoard / wandb.
//!
//! The chart library is uPlot 1.6.32 (MIT), vendored in `assets/uplot` and compiled into the
//! binary: no CDN, no network at run time.

pub mod csp;
pub mod data;
pub mod report;
pub mod server;
pub mod tensorboard;

/// uPlot 1.6.32 (MIT, Leon Sorokin), from the npm package `uplot@1.6.32`.
pub const UPLOT_JS: &str = include_str!("../assets/uplot/uPlot.iife.min.js");
pub const UPLOT_CSS: &str = include_str!("../assets/uplot/uPlot.min.css");
pub const UPLOT_LICENSE: &str = include_str!("../assets/uplot/LICENSE");
/// The page and its script (shared by the live dashboard and the static report).
pub const PAGE_HTML: &str = include_str!("../assets/index.html");
pub const APP_JS: &str = include_str!("../assets/app.js");
pub const APP_CSS: &str = include_str!("../assets/app.css");

#[derive(Debug, thiserror::Error)]
pub enum DashError {
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Data(#[from] datasets::DataError),
    #[error("{path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
}

pub type Result<T> = std::result::Result<T, DashError>;
