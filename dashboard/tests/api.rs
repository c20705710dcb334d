//! The JSON API over a recorded OPD run's metrics store, and clear messages for empty or
//! malformed stores.

mod common;
use common::*;
use serde_json::Value;

#[test]
fn runs_metrics_and_results() {
    let tmp = tempfile::tempdir().unwrap();
    let run = recorded_copy(tmp.path());
    let srv = start(&[&run]);
    let (st, body) = get(srv.addr, "/api/runs");
    assert_eq!(st, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    let r = &v["runs"][0];
    assert_eq!(r["name"], "recorded-opd");
    let stages: Vec<&str> = r["stages"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(stages.contains(&"opd") && stages.contains(&"grpo-math.add"), "{stages:?}");
    assert!(r["message"].is_null());

    let truth = datasets::store::read_metrics(&run.join("metrics")).unwrap();
    let kl_rows = truth.iter().filter(|r| r.name == "opd/reverse_kl").count();
    let (st, body) = get(srv.addr, "/api/metrics?run=recorded-opd&names=opd/reverse_kl");
    assert_eq!(st, 200);
    let m: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(m["columns"][2], "name");
    let rows = m["rows"].as_array().unwrap();
    assert_eq!(rows.len(), kl_rows);
    assert!(rows.iter().all(|r| r[2] == "opd/reverse_kl"));
    // values equal the store's
    let first = truth
        .iter()
        .find(|r| r.name == "opd/reverse_kl" && r.teacher.as_deref() == Some("math.add") && r.step == 3)
        .unwrap();
    let api = rows.iter().find(|r| r[4] == "math.add" && r[1] == 3).unwrap();
    assert_eq!(api[3].as_f64().unwrap(), first.value);
    // incremental
    let (_, body) = get(srv.addr, "/api/metrics?run=recorded-opd&names=opd/reverse_kl&since_step=6");
    let later: Value = serde_json::from_str(&body).unwrap();
    assert!(later["rows"].as_array().unwrap().iter().all(|r| r[1].as_u64().unwrap() > 6));
    assert!(!later["rows"].as_array().unwrap().is_empty());
    // results
    let (_, body) = get(srv.addr, "/api/results?run=recorded-opd");
    let res: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(res["domains"].as_array().map(Vec::len), Some(13));
    // errors are JSON with a reason
    let (st, body) = get(srv.addr, "/api/metrics?run=nope");
    assert_eq!(st, 404);
    assert!(body.contains("no run named"));
    let (st, page) = get(srv.addr, "/");
    assert_eq!(st, 200);
    assert!(page.contains("/assets/uPlot.iife.min.js"));
    let (st, js) = get(srv.addr, "/assets/uPlot.iife.min.js");
    assert_eq!(st, 200);
    assert!(js.len() > 40_000);
}

#[test]
fn empty_and_malformed_stores_say_why() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty-run");
    std::fs::create_dir_all(empty.join("metrics")).unwrap();
    let bad = tmp.path().join("bad-run");
    std::fs::create_dir_all(bad.join("metrics")).unwrap();
    std::fs::write(bad.join("metrics/part-0000000000001-00000000-000000.parquet"), b"this is not parquet").unwrap();
    let srv = start(&[&empty, &bad]);
    let (_, body) = get(srv.addr, "/api/runs");
    let v: Value = serde_json::from_str(&body).unwrap();
    let e = v["runs"].as_array().unwrap().iter().find(|r| r["name"] == "empty-run").unwrap();
    assert!(e["message"].as_str().unwrap().contains("no metrics yet"), "{e}");
    let b = v["runs"].as_array().unwrap().iter().find(|r| r["name"] == "bad-run").unwrap();
    assert!(b["errors"][0].as_str().unwrap().contains("unreadable metrics shard"), "{b}");
    let (st, body) = get(srv.addr, "/api/metrics");
    assert_eq!(st, 400, "{body}");
    // the page shows the reasons (a real browser runs the script)
    let dom = dump_dom(&format!("http://{}/", srv.addr), &tmp.path().join("profile"));
    assert!(dom.contains("no metrics yet"), "empty store message missing");
    assert!(dom.contains("unreadable metrics shard"), "malformed store message missing");
    assert!(dom.contains("data-ready=\"1\""), "the page did not finish rendering");
    // a missing run directory is an error at start, not a blank page
    assert!(dashboard::data::Run::open(&tmp.path().join("missing")).is_err());
}
