//! Real-browser tests: headless Chromium loads the live dashboard of a recorded OPD run with
//! three teachers, and the static report from disk; the per-teacher KL chart must have
//! exactly one series per teacher with one point per logged step. Screenshots are kept in
//! `target/dashboard-screenshots/`.

mod common;
use common::*;

fn check_kl_chart(dom: &str, run: &std::path::Path) {
    let truth = teacher_points(run);
    assert!(truth.len() >= 3, "the recorded run has {} teachers", truth.len());
    let a = attrs(dom, "chart-kl-teacher");
    assert_eq!(a.get("ready").map(String::as_str), Some("1"), "chart not drawn");
    assert_eq!(a["series"], truth.len().to_string(), "one series per teacher");
    let labels: Vec<&str> = a["labels"].split('|').collect();
    let points: Vec<usize> = a["points"].split(',').map(|x| x.parse().unwrap()).collect();
    for (l, p) in labels.iter().zip(&points) {
        assert_eq!(Some(p), truth.get(*l), "teacher {l}");
    }
    assert!(dom.contains("class=\"u-wrap\""), "uPlot did not render a canvas");
    // the eval table from results.json
    assert!(dom.contains("id=\"results-recorded-opd\""));
}

fn shots() -> std::path::PathBuf {
    let d = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard-screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn live_dashboard_in_chromium() {
    let tmp = tempfile::tempdir().unwrap();
    let run = recorded_copy(tmp.path());
    let srv = start(&[&run]);
    let url = format!("http://{}/", srv.addr);
    let dom = dump_dom(&url, &tmp.path().join("profile"));
    check_kl_chart(&dom, &run);
    assert!(dom.contains("live · updated"), "the page did not poll the API");
    let png = shots().join("live.png");
    screenshot(&url, &tmp.path().join("profile2"), &png);
    eprintln!("screenshot: {}", png.display());
}

#[test]
fn static_report_from_disk_in_chromium() {
    let tmp = tempfile::tempdir().unwrap();
    let run = recorded_copy(tmp.path());
    let html = dashboard::report::render(&[dashboard::data::Run::open(&run).unwrap()], "report test");
    assert!(!html.contains("src=\"http"), "the report must not load anything from the network");
    let file = tmp.path().join("report.html");
    std::fs::write(&file, html).unwrap();
    let url = format!("file://{}", file.display());
    let dom = dump_dom(&url, &tmp.path().join("profile"));
    check_kl_chart(&dom, &run);
    assert!(dom.contains("static report"));
    let png = shots().join("report.png");
    screenshot(&url, &tmp.path().join("profile2"), &png);
    eprintln!("screenshot: {}", png.display());
}

#[test]
fn two_runs_overlay() {
    let tmp = tempfile::tempdir().unwrap();
    let a = recorded_copy(tmp.path());
    let b = tmp.path().join("second");
    std::fs::rename(tmp.path().join("recorded-opd"), &b).unwrap();
    let a2 = recorded_copy(tmp.path());
    let _ = a;
    let srv = start(&[&a2, &b]);
    let dom = dump_dom(&format!("http://{}/", srv.addr), &tmp.path().join("profile"));
    let at = attrs(&dom, "chart-kl-teacher");
    let truth = teacher_points(&b);
    assert_eq!(at["series"], (2 * truth.len()).to_string(), "series of both runs");
    assert!(at["labels"].contains("second: math.add") && at["labels"].contains("recorded-opd: math.add"));
}
