//! Names from datasets are shown, never run: headless Chromium opens the static report and
//! the live dashboard of a run whose domains, families, teachers and stages hold HTML and
//! script. Nothing of it may execute (the title stays, no injected element appears), the
//! names show literally, and the page still draws its charts under its
//! Content-Security-Policy — which on its own also stops an inline handler slipped into
//! the page.

mod common;
use common::*;
use std::path::{Path, PathBuf};

const TITLE: &str = "hostile names";
const IMG: &str = "math.<img src=x onerror=\"document.title='pwned';document.body.dataset.pwned='img'\">";
const SCRIPT: &str = "<script>document.title='pwned';document.body.dataset.pwned='script'</script>";
const CLOSE: &str = "x</script><script>document.title='pwned'</script><!--APP-->";
const COMMENT: &str = "<!--<script>";

/// The recorded run under a hostile name, its results and some metrics relabelled.
fn hostile_run(tmp: &Path) -> PathBuf {
    let run = recorded_copy(tmp);
    let named = tmp.join("run<b onmouseover=alert(1)>");
    std::fs::rename(&run, &named).unwrap();
    let path = named.join("results.json");
    let mut res: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let names = [IMG, CLOSE, COMMENT];
    for (i, d) in res["domains"].as_array_mut().unwrap().iter_mut().take(names.len()).enumerate() {
        d["domain"] = names[i].into();
        d["family"] = SCRIPT.into();
    }
    std::fs::write(&path, res.to_string()).unwrap();
    let mut m = datasets::store::MetricsWriter::new(&named.join("metrics"), "hostile").unwrap();
    for step in 1..=3 {
        m.log(SCRIPT, step, "grpo/reward_mean", 0.5, (Some(IMG), Some(CLOSE), Some(COMMENT)), 10);
    }
    m.flush().unwrap();
    named
}

/// The page's `<title>` text.
fn title(dom: &str) -> &str {
    let start = dom.find("<title>").expect("no <title>") + "<title>".len();
    &dom[start..start + dom[start..].find("</title>").unwrap()]
}

/// `dom` without the page's own script elements (their text is code and data, not markup).
fn without_scripts(dom: &str) -> String {
    let mut out = String::new();
    let mut rest = dom;
    while let Some(i) = rest.find("<script") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find("</script>").map(|j| i + j + "</script>".len()).unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// The DOM `dom` shows every hostile name as text and ran none of it.
fn check_inert(dom: &str, expected_title: &str) {
    assert_eq!(title(dom), expected_title, "a name ran as script");
    let body = without_scripts(dom);
    assert!(!body.contains("data-pwned"), "an injected handler ran");
    assert!(!body.contains("<img"), "a name became an <img> element");
    assert!(!body.contains("<b "), "a name became a <b> element");
    assert!(!body.contains("<script"), "a name became a <script> element");
    // the names show as written (the DOM dump escapes `<`, `>` and `&` of text)
    assert!(body.contains("math.&lt;img src=x onerror=\"document.title='pwned';"), "domain not shown literally");
    assert!(body.contains("&lt;script&gt;document.title='pwned';document.body.dataset.pwned='script'&lt;/script&gt;"));
    assert!(body.contains("x&lt;/script&gt;&lt;script&gt;document.title='pwned'&lt;/script&gt;&lt;!--APP--&gt;"));
    assert!(body.contains("&lt;!--&lt;script&gt;"));
    assert!(body.contains("Evaluation — run&lt;b onmouseover=alert(1)&gt;"), "run name not shown literally");
    // and the page still works: results table and charts drawn
    assert!(body.contains("<table id=\"results-run"), "results table missing");
    let kl = attrs(dom, "chart-kl-teacher");
    assert_eq!(kl.get("ready").map(String::as_str), Some("1"), "charts not drawn");
    let reward = attrs(dom, "chart-reward");
    assert!(reward.get("series").and_then(|n| n.parse::<usize>().ok()).unwrap_or(0) >= 1, "hostile domain not charted");
    assert!(body.contains("class=\"u-wrap\""), "uPlot did not render");
}

fn report_file(tmp: &Path, html: &str) -> String {
    let file = tmp.join("report.html");
    std::fs::write(&file, html).unwrap();
    format!("file://{}", file.display())
}

#[test]
fn static_report_shows_hostile_names_as_text() {
    let tmp = tempfile::tempdir().unwrap();
    let run = hostile_run(tmp.path());
    let html = dashboard::report::render(&[dashboard::data::Run::open(&run).unwrap()], TITLE);
    assert!(html.contains("<meta http-equiv=\"Content-Security-Policy\""), "the report carries no CSP");
    assert!(!html.contains("unsafe-inline") && !html.contains("unsafe-eval"));
    let dom = dump_dom(&report_file(tmp.path(), &html), &tmp.path().join("profile"));
    check_inert(&dom, TITLE);
    assert!(dom.contains("static report"));
}

#[test]
fn report_policy_blocks_a_slipped_in_handler() {
    let tmp = tempfile::tempdir().unwrap();
    let run = recorded_copy(tmp.path());
    let html = dashboard::report::render(&[dashboard::data::Run::open(&run).unwrap()], TITLE);
    // as if a bug put markup in the page: the policy alone must stop it
    let slipped = html.replacen(
        "<body>",
        "<body><img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>",
        1,
    );
    let dom = dump_dom(&report_file(tmp.path(), &slipped), &tmp.path().join("profile"));
    assert_eq!(title(&dom), TITLE, "the CSP let an inline handler or script run");
    // the page's own (hashed) scripts did run
    assert_eq!(attrs(&dom, "chart-kl-teacher").get("ready").map(String::as_str), Some("1"));
}

#[test]
fn live_dashboard_shows_hostile_names_as_text() {
    let tmp = tempfile::tempdir().unwrap();
    let run = hostile_run(tmp.path());
    let srv = start(&[&run]);
    let head = raw_head(srv.addr, "/");
    assert!(head.contains("content-security-policy: default-src 'none'; script-src 'self'"), "{head}");
    assert!(raw_head(srv.addr, "/api/results").contains("content-security-policy:"));
    let dom = dump_dom(&format!("http://{}/", srv.addr), &tmp.path().join("profile"));
    check_inert(&dom, "v4post test");
    assert!(dom.contains("live · updated"), "the page did not poll the API");
}

/// The response head of `GET path`, lower-cased.
fn raw_head(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    text.split("\r\n\r\n").next().unwrap_or("").to_string()
}
