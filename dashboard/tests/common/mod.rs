//! Shared helpers: the recorded OPD run, a dashboard server on a free port, a tiny HTTP
//! client (std only) and headless Chromium.

#![allow(dead_code)]

use dashboard::data::Run;
use dashboard::server::{serve, AppState};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{mpsc, Arc, Mutex};

pub fn recorded() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/recorded-opd-run")
}

/// A copy of the recorded run in a temporary directory (named like a run).
pub fn recorded_copy(tmp: &Path) -> PathBuf {
    let dst = tmp.join("recorded-opd");
    std::fs::create_dir_all(dst.join("metrics")).unwrap();
    for e in std::fs::read_dir(recorded().join("metrics")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dst.join("metrics").join(p.file_name().unwrap())).unwrap();
    }
    std::fs::copy(recorded().join("results.json"), dst.join("results.json")).unwrap();
    dst
}

pub struct Server {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn start(dirs: &[&Path]) -> Server {
    let runs: Vec<Run> = dirs.iter().map(|d| Run::open(d).unwrap()).collect();
    let state = Arc::new(AppState { runs: Mutex::new(runs), title: "v4post test".into() });
    let (tx, rx) = mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            serve(state, "127.0.0.1:0".parse().unwrap(), move |a| tx.send(a).unwrap(), async {
                let _ = stop_rx.await;
            })
            .await
            .unwrap();
        });
    });
    let addr = rx.recv().unwrap();
    Server { addr, stop: Some(stop_tx), thread: Some(thread) }
}

/// GET `path`; returns (status, body).
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|x| x.parse().ok()).unwrap_or(0);
    // chunked bodies: drop the chunk-size lines
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        body.to_string()
    };
    (status, body)
}

pub fn chromium() -> String {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return c.to_string();
        }
    }
    panic!(
        "headless Chromium is needed for the dashboard browser tests: apt-get install chromium (scripts/test.sh does)"
    );
}

fn chrome_args(profile: &Path) -> Vec<String> {
    vec![
        "--headless".into(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-dev-shm-usage".into(),
        "--hide-scrollbars".into(),
        format!("--user-data-dir={}", profile.display()),
        "--virtual-time-budget=8000".into(),
        "--window-size=1400,2600".into(),
    ]
}

/// The DOM after the page's scripts ran.
pub fn dump_dom(url: &str, profile: &Path) -> String {
    let out = Command::new(chromium()).args(chrome_args(profile)).arg("--dump-dom").arg(url).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn screenshot(url: &str, profile: &Path, png: &Path) {
    let out = Command::new(chromium())
        .args(chrome_args(profile))
        .arg(format!("--screenshot={}", png.display()))
        .arg(url)
        .output()
        .unwrap();
    assert!(png.exists(), "no screenshot: {}", String::from_utf8_lossy(&out.stderr));
}

/// `data-*` attributes of the element with `id` in a dumped DOM.
pub fn attrs(dom: &str, id: &str) -> std::collections::HashMap<String, String> {
    let start = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no element #{id} in the page"));
    let tag_start = dom[..start].rfind('<').unwrap();
    let tag_end = start + dom[start..].find('>').unwrap();
    let tag = &dom[tag_start..tag_end];
    let mut out = std::collections::HashMap::new();
    for part in tag.split("data-").skip(1) {
        if let Some((k, v)) = part.split_once("=\"") {
            out.insert(k.to_string(), v.split('"').next().unwrap_or("").to_string());
        }
    }
    out
}

/// Per-teacher points of `opd/reverse_kl` in the recorded store (the truth to compare with).
pub fn teacher_points(run: &Path) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for r in datasets::store::read_metrics(&run.join("metrics")).unwrap() {
        if let (true, Some(t)) = (r.name == "opd/reverse_kl", r.teacher.clone()) {
            if seen.insert((t.clone(), r.step)) {
                *m.entry(t).or_insert(0) += 1;
            }
        }
    }
    m
}
