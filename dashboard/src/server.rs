//! The live dashboard: axum serving the page, the chart library and a JSON API over the
//! runs' metrics stores. The page polls `/api/metrics?since_ms=…`, so new steps appear as
//! the run writes them.
//!
//! * `GET /api/runs` → `{"runs":[{name, dir, rows, stages, last_step, updated_ms, errors, message}]}`
//! * `GET /api/metrics?run=NAME[&names=a,b][&since_step=N][&since_ms=T]` →
//!   `{"run", "columns":[...], "rows":[[stage, step, name, value, teacher, domain, mode, tokens, time_ms], ...]}`
//! * `GET /api/results?run=NAME` → the run's `results.json` (or `null`)
//!
//! Every response carries a Content-Security-Policy header ([`csp::LIVE`]).

use crate::data::{Run, COLUMNS};
use crate::report::html_escape;
use crate::{csp, APP_CSS, APP_JS, PAGE_HTML, UPLOT_CSS, UPLOT_JS};
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

pub struct AppState {
    pub runs: Mutex<Vec<Run>>,
    pub title: String,
}

fn lock(s: &AppState) -> std::sync::MutexGuard<'_, Vec<Run>> {
    s.runs.lock().unwrap_or_else(|p| p.into_inner())
}

async fn page(State(s): State<Arc<AppState>>) -> Html<String> {
    let head = "<link rel=\"stylesheet\" href=\"/assets/uPlot.min.css\">\n<link rel=\"stylesheet\" href=\"/assets/app.css\">\n<script src=\"/assets/uPlot.iife.min.js\"></script>";
    Html(
        PAGE_HTML
            .replace("<!--TITLE-->", &html_escape(&s.title))
            .replace("<!--HEAD-->", head)
            .replace("<!--APP-->", "<script src=\"/assets/app.js\"></script>"),
    )
}

fn asset(body: &'static str, mime: &'static str) -> Response {
    ([(header::CONTENT_TYPE, mime), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

async fn runs(State(s): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let mut runs = lock(&s);
    for r in runs.iter_mut() {
        r.refresh();
    }
    Json(json!({"runs": runs.iter().map(Run::summary).collect::<Vec<_>>()}))
}

#[derive(Deserialize)]
struct MetricsQuery {
    run: Option<String>,
    names: Option<String>,
    since_step: Option<u64>,
    since_ms: Option<i64>,
}

async fn metrics(State(s): State<Arc<AppState>>, Query(q): Query<MetricsQuery>) -> Response {
    let mut runs = lock(&s);
    let name = match (&q.run, runs.len()) {
        (Some(n), _) => n.clone(),
        (None, 1) => runs[0].name.clone(),
        (None, _) => {
            return (StatusCode::BAD_REQUEST, Json(json!({"error": "give ?run=NAME (several runs are served)"})))
                .into_response()
        }
    };
    let Some(run) = runs.iter_mut().find(|r| r.name == name) else {
        return (StatusCode::NOT_FOUND, Json(json!({"error": format!("no run named `{name}`")}))).into_response();
    };
    run.refresh();
    let names: Option<Vec<String>> =
        q.names.map(|n| n.split(',').map(str::to_string).filter(|s| !s.is_empty()).collect());
    let rows = run.rows_json(names.as_deref(), q.since_step, q.since_ms);
    Json(json!({"run": name, "columns": COLUMNS, "rows": rows, "errors": run.errors, "message": run.summary().message}))
        .into_response()
}

#[derive(Deserialize)]
struct RunQuery {
    run: Option<String>,
}

async fn results(State(s): State<Arc<AppState>>, Query(q): Query<RunQuery>) -> Json<serde_json::Value> {
    let runs = lock(&s);
    let r = match &q.run {
        Some(n) => runs.iter().find(|r| &r.name == n),
        None => runs.first(),
    };
    Json(r.and_then(Run::results).unwrap_or(serde_json::Value::Null))
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/assets/uPlot.iife.min.js", get(|| async { asset(UPLOT_JS, "text/javascript") }))
        .route("/assets/uPlot.min.css", get(|| async { asset(UPLOT_CSS, "text/css") }))
        .route("/assets/app.js", get(|| async { asset(APP_JS, "text/javascript") }))
        .route("/assets/app.css", get(|| async { asset(APP_CSS, "text/css") }))
        .route("/api/runs", get(runs))
        .route("/api/metrics", get(metrics))
        .route("/api/results", get(results))
        .layer(axum::middleware::map_response(with_policy))
        .with_state(state)
}

/// Every response carries the page's Content-Security-Policy ([`csp::LIVE`]) and is never
/// sniffed into another type.
async fn with_policy(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, header::HeaderValue::from_static(csp::LIVE));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    r
}

/// Bind and serve until `shutdown` resolves; `on_bound` gets the actual address (port 0
/// picks a free port).
pub async fn serve(
    state: Arc<AppState>,
    addr: SocketAddr,
    on_bound: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    on_bound(listener.local_addr()?);
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}
