// v4post dashboard: one script for the live page (polls the JSON API) and the static report
// (data inlined as window.V4POST_DATA). Charts are uPlot; every chart element carries
// data-series / data-points / data-labels so tests (and people) can check what is drawn.
// Names (runs, stages, domains, families, teachers) come from datasets: they go into the
// page only as text (textContent, el()), never as markup; no innerHTML takes data.
(function () {
  "use strict";
  const COLS = ["stage", "step", "name", "value", "teacher", "domain", "mode", "tokens", "time_ms"];
  const C = Object.fromEntries(COLS.map((c, i) => [c, i]));
  const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#bcbd22", "#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd"];
  const CHARTS = [
    { id: "kl-teacher", title: "Reverse KL per teacher (OPD)", names: ["opd/reverse_kl"], by: "teacher" },
    { id: "kl-domain", title: "Reverse KL by domain (OPD)", names: ["opd/reverse_kl"], by: "domain" },
    { id: "entropy", title: "Student vs teacher entropy (OPD)", names: ["opd/student_entropy", "opd/teacher_entropy"], by: "none" },
    { id: "reward", title: "GRPO reward by domain", names: ["grpo/reward_mean"], by: "domain" },
    { id: "opd-reward", title: "Student reward by domain (OPD rollouts)", names: ["opd/reward_mean"], by: "domain" },
    { id: "length", title: "Response length by reasoning mode", names: ["rollout/response_len"], by: "mode" },
    { id: "clip", title: "Clip fraction", names: ["grpo/clip_fraction"], by: "stage" },
    { id: "grad-norm", title: "Gradient norm", names: ["train/grad_norm"], by: "stage" },
    { id: "loss", title: "SFT loss", names: ["train/loss"], by: "stage" },
    { id: "tokens-per-s", title: "Tokens/s (rollout, training)", names: ["rollout/tokens_per_s", "train/tokens_per_s"], by: "stage" },
    { id: "queue", title: "Queue depth", names: ["queue/depth"], by: "stage" },
  ];
  const runs = {}; // name -> {rows: Map(key -> row), summary, results}
  const plots = {};
  const ui = { xaxis: "step", log: false, smooth: 0, stage: "", teachers: null, domains: null };
  const $ = (id) => document.getElementById(id);
  // an element with a class and children (strings become text nodes)
  function el(tag, cls, ...children) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    e.append(...children.map((c) => (c instanceof Node ? c : String(c))));
    return e;
  }

  function key(r) { return [r[C.stage], r[C.step], r[C.name], r[C.teacher], r[C.domain], r[C.mode]].join("\u001f"); }
  function addRows(name, rows) {
    const run = runs[name] || (runs[name] = { rows: new Map(), summary: null, results: null });
    for (const r of rows) run.rows.set(key(r), r);
  }

  function message(text, cls) {
    const d = document.createElement("div");
    d.className = "msg " + (cls || "");
    d.textContent = text;
    $("messages").appendChild(d);
  }
  function showMessages() {
    $("messages").replaceChildren();
    const names = Object.keys(runs);
    if (names.length === 0) message("No runs to show: start the dashboard with --run runs/NAME.", "error");
    let total = 0;
    for (const n of names) {
      const s = runs[n].summary || {};
      total += runs[n].rows.size;
      for (const e of s.errors || []) message(n + ": " + e, "error");
      if (runs[n].rows.size === 0 && s.message) message(n + ": " + s.message);
    }
    if (names.length > 0 && total === 0 && !$("messages").children.length) message("No metrics yet.");
  }

  // distinguishing part of a metric name within a chart: the last segment, or the first
  // when last segments collide (rollout/tokens_per_s vs train/tokens_per_s)
  function shortName(spec, name) {
    const last = spec.names.map((n) => n.split("/").pop());
    const i = spec.names.indexOf(name);
    return new Set(last).size === last.length ? last[i] : name.split("/")[0];
  }
  function xOf(r, t0) {
    if (ui.xaxis === "time") return (r[C.time_ms] - t0) / 1000;
    if (ui.xaxis === "tokens") return r[C.tokens];
    return r[C.step];
  }
  function labelOf(spec, r, multiName) {
    let l;
    if (spec.by === "none") l = "";
    else l = r[C[spec.by]] || (spec.by === "stage" ? r[C.stage] : "all");
    if (spec.by !== "stage" && spec.by !== "none" && !r[C[spec.by]]) return null; // unlabelled aggregate rows
    if (spec.by === "none" && (r[C.teacher] || r[C.domain] || r[C.mode])) return null;
    if (multiName) l = (l ? l + " · " : "") + shortName(spec, r[C.name]);
    return l;
  }
  function passes(r) {
    if (ui.stage && r[C.stage] !== ui.stage) return false;
    if (ui.teachers && r[C.teacher] && !ui.teachers.has(r[C.teacher])) return false;
    if (ui.domains && r[C.domain] && !ui.domains.has(r[C.domain])) return false;
    return true;
  }

  function seriesFor(spec) {
    const names = Object.keys(runs);
    const out = new Map(); // label -> [[x, y]]
    for (const rn of names) {
      const rows = [...runs[rn].rows.values()];
      const t0 = rows.reduce((m, r) => Math.min(m, r[C.time_ms]), Infinity);
      for (const r of rows) {
        if (!spec.names.includes(r[C.name]) || !passes(r)) continue;
        let l = labelOf(spec, r, spec.names.length > 1);
        if (l === null) continue;
        if (names.length > 1) l = rn + ": " + (l || r[C.name]);
        if (l === "") l = r[C.name];
        if (!out.has(l)) out.set(l, []);
        out.get(l).push([xOf(r, t0), r[C.value]]);
      }
    }
    const series = [];
    for (const [label, pts] of [...out.entries()].sort((a, b) => a[0].localeCompare(b[0]))) {
      pts.sort((a, b) => a[0] - b[0]);
      // one point per x (a resumed stage re-logs a step: keep the last)
      const dedup = [];
      for (const p of pts) {
        if (dedup.length && dedup[dedup.length - 1][0] === p[0]) dedup[dedup.length - 1] = p; else dedup.push(p);
      }
      let s = null;
      const ys = dedup.map((p) => { s = (s === null || ui.smooth === 0) ? p[1] : ui.smooth * s + (1 - ui.smooth) * p[1]; return s; });
      series.push({ label, xs: dedup.map((p) => p[0]), ys });
    }
    return series;
  }

  function draw(spec) {
    let box = $("chart-" + spec.id);
    if (!box) {
      box = document.createElement("section");
      box.className = "chart";
      box.id = "chart-" + spec.id;
      box.append(el("h2", "", spec.title), el("div", "plot"));
      $("charts").appendChild(box);
    }
    const series = seriesFor(spec);
    box.dataset.series = String(series.length);
    box.dataset.points = series.map((s) => s.xs.length).join(",");
    box.dataset.labels = series.map((s) => s.label).join("|");
    if (plots[spec.id]) { plots[spec.id].destroy(); delete plots[spec.id]; }
    const holder = box.querySelector(".plot");
    holder.replaceChildren();
    if (series.length === 0) {
      holder.append(el("div", "empty", "no data for this chart" + (ui.stage ? " in stage " + ui.stage : "")));
      box.dataset.ready = "1";
      return;
    }
    const data = uPlot.join(series.map((s) => [s.xs, s.ys.map((y) => (ui.log && y <= 0 ? null : y))]));
    const opts = {
      width: Math.max(560, holder.clientWidth || 600),
      height: 260,
      scales: { x: { time: false }, y: { distr: ui.log ? 3 : 1 } },
      axes: [{ label: ({ step: "step", time: "wall time (s)", tokens: "sampled tokens" })[ui.xaxis] }, {}],
      series: [{ label: ui.xaxis }].concat(series.map((s, i) => ({
        label: s.label, stroke: PALETTE[i % PALETTE.length], width: 1.5, spanGaps: true,
        points: { show: s.xs.length < 40, size: 4 },
        value: (u, v) => (v == null ? "–" : (Math.abs(v) >= 100 ? v.toFixed(1) : v.toPrecision(4))),
      }))),
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
    };
    plots[spec.id] = new uPlot(opts, data, holder);
    box.dataset.ready = "1";
  }

  function fmt(v) { return typeof v === "number" ? v.toFixed(3) : "–"; }
  function drawResults() {
    const box = $("results");
    box.replaceChildren();
    for (const rn of Object.keys(runs)) {
      const res = runs[rn].results;
      if (!res || !res.domains) continue;
      const h = document.createElement("h2");
      h.textContent = "Evaluation — " + rn + " (" + (res.score || "accuracy") + ")";
      box.appendChild(h);
      const t = document.createElement("table");
      t.id = "results-" + rn;
      const head = ["domain", "family", "base", "sft", "teacher", "student", "think_max"];
      t.append(el("tr", "", ...head.map((c) => el("th", "", c))));
      for (const d of res.domains) {
        const cells = [d.domain ?? "", d.family ?? "", fmt(d.base), fmt(d.sft), fmt(d.teacher), fmt(d.student), fmt(d.think_max)];
        t.append(el("tr", "", ...cells.map((c) => el("td", "", c))));
      }
      box.appendChild(t);
      const hl = res.headline || {};
      const p = document.createElement("p");
      p.textContent = "experts beat base: " + hl.all_experts_beat_base + " · student keeps " + fmt(hl.student_keeps_fraction) +
        " of the experts' gain · sampled tokens GRPO " + hl.grpo_sampled_tokens + " vs OPD " + hl.opd_sampled_tokens +
        " · wall " + Math.round(res.wall_s || 0) + " s";
      box.appendChild(p);
    }
  }

  function refreshFilters() {
    const stages = new Set(), teachers = new Set(), domains = new Set();
    for (const rn of Object.keys(runs)) for (const r of runs[rn].rows.values()) {
      stages.add(r[C.stage]); if (r[C.teacher]) teachers.add(r[C.teacher]); if (r[C.domain]) domains.add(r[C.domain]);
    }
    const sel = $("stage");
    const have = new Set([...sel.options].map((o) => o.value));
    for (const s of [...stages].sort()) if (!have.has(s)) { const o = document.createElement("option"); o.value = o.textContent = s; sel.appendChild(o); }
    for (const [id, set, field] of [["teachers", teachers, "teachers"], ["domains", domains, "domains"]]) {
      const box = $(id);
      const known = new Set([...box.querySelectorAll("input")].map((i) => i.value));
      for (const v of [...set].sort()) {
        if (known.has(v)) continue;
        const input = el("input");
        input.type = "checkbox";
        input.checked = true;
        input.value = v;
        const l = el("label", "", input, " ", v);
        l.querySelector("input").addEventListener("change", () => {
          const on = [...box.querySelectorAll("input")].filter((i) => i.checked).map((i) => i.value);
          ui[field] = on.length === box.querySelectorAll("input").length ? null : new Set(on);
          render();
        });
        box.appendChild(l);
      }
    }
  }

  function render() {
    showMessages();
    refreshFilters();
    for (const spec of CHARTS) draw(spec);
    drawResults();
    document.body.dataset.ready = "1";
  }

  function bind() {
    $("xaxis").addEventListener("change", (e) => { ui.xaxis = e.target.value; render(); });
    $("logscale").addEventListener("change", (e) => { ui.log = e.target.checked; render(); });
    $("smooth").addEventListener("input", (e) => { ui.smooth = parseFloat(e.target.value); $("smooth-v").textContent = e.target.value; render(); });
    $("stage").addEventListener("change", (e) => { ui.stage = e.target.value; render(); });
  }

  // ---- static report
  function fromSnapshot(snap) {
    for (const r of snap.runs || []) {
      addRows(r.summary.name, r.rows || []);
      runs[r.summary.name].summary = r.summary;
      runs[r.summary.name].results = r.results;
    }
    $("status").textContent = "static report (" + Object.keys(runs).length + " run(s))";
    render();
  }

  // ---- live: poll the API
  const since = {};
  async function poll() {
    try {
      const rs = await (await fetch("/api/runs")).json();
      for (const s of rs.runs) {
        const q = "/api/metrics?run=" + encodeURIComponent(s.name) + (since[s.name] ? "&since_ms=" + since[s.name] : "");
        const m = await (await fetch(q)).json();
        addRows(s.name, m.rows || []);
        runs[s.name].summary = s;
        for (const r of m.rows || []) since[s.name] = Math.max(since[s.name] || 0, r[C.time_ms]);
        if (!runs[s.name].results) runs[s.name].results = await (await fetch("/api/results?run=" + encodeURIComponent(s.name))).json();
      }
      $("status").textContent = "live · updated " + new Date().toLocaleTimeString();
      render();
    } catch (e) {
      $("status").textContent = "dashboard server unreachable (" + e + "); retrying";
    }
  }

  bind();
  if (window.V4POST_DATA) fromSnapshot(window.V4POST_DATA);
  else { poll(); setInterval(poll, 2000); }
})();
