#!/usr/bin/env python3
"""Side-by-side table of one `scripts/bench.sh --anchor VENV` run: v4post against the PyTorch port
(hf_anchor.py) on the same checkpoints, measured back to back on this machine.

Usage: anchor_table.py DIR NAME [NAME ...]
DIR holds, per checkpoint NAME: hf_NAME.json (hf_anchor.py --out), fwd_NAME.json (v4post bench
forward --json), roll_NAME.json (v4post bench rollout --json), train_NAME.json (v4post bench
train-step --optim adamw --numerics dense --json) and rss_hf_NAME / rss_v4_NAME (peak RSS in kB of a
training-only run of each, from /usr/bin/time -f %M), and optionally recipe_NAME.json (v4post bench
train-step --optim muon --numerics qat --accum 32 --json, the project's own recipe step, compared
with PyTorch's AdamW row in tokens/s). Prints a Markdown table. A cross-check tool
for the benchmark script only; nothing in v4post runs Python.
"""
import json
import os
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def hf_rate(hf, row):
    d = hf.get("details", {}).get(row)
    return d["tokens_per_s"]["median"] if d else None


def hf_median(hf, row, key):
    d = hf.get("details", {}).get(row, {}).get(key)
    return d["median"] if isinstance(d, dict) else None


def decode_rate(roll, batch):
    for r in roll.get("runs", []):
        if r.get("batch") == batch:
            return r.get("fp4_tokens_per_s")
    return None


def fmt(v, unit=""):
    if v is None:
        return "—"
    if unit == "s":
        return f"{v:.3f} s"
    if unit == "MiB":
        return f"{v:,.0f} MiB"
    return f"{v:,.0f}"


def ratio(ours, theirs, lower_is_better=False):
    if not ours or not theirs:
        return "—"
    return f"{(theirs / ours) if lower_is_better else (ours / theirs):.2f}×"


def rss_mib(path):
    try:
        with open(path) as f:
            return int(f.read().split()[-1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, names = sys.argv[1], sys.argv[2:]
    print("| row | checkpoint | PyTorch port | v4post | v4post ÷ PyTorch |")
    print("|---|---|---:|---:|---:|")
    for n in names:
        hf = load(os.path.join(out, f"hf_{n}.json"))
        fwd = load(os.path.join(out, f"fwd_{n}.json"))
        roll = load(os.path.join(out, f"roll_{n}.json"))
        tr = load(os.path.join(out, f"train_{n}.json"))
        rows = [
            ("prefill 1×256 (tok/s)", hf_rate(hf, "prefill_1x256"), fwd.get("prefill_tokens_per_s"), ""),
            ("decode b1, 64 + 128 (tok/s)", hf_rate(hf, "decode_b1"), decode_rate(roll, 1), ""),
            ("decode b8, 64 + 128 (tok/s)", hf_rate(hf, "decode_b8"), decode_rate(roll, 8), ""),
            ("train step 4×128, AdamW, dense (tok/s)", hf_rate(hf, "train_4x128"), tr.get("step_tokens_per_s"), ""),
            ("— forward", hf_median(hf, "train_4x128", "forward_s"), tr.get("forward_s"), "s"),
            ("— backward", hf_median(hf, "train_4x128", "backward_s"), tr.get("backward_s"), "s"),
            ("— optimizer", hf_median(hf, "train_4x128", "adamw_s"), tr.get("optimizer_s"), "s"),
            ("peak RSS, training-only process", rss_mib(os.path.join(out, f"rss_hf_{n}")),
             rss_mib(os.path.join(out, f"rss_v4_{n}")), "MiB"),
        ]
        recipe_path = os.path.join(out, f"recipe_{n}.json")
        if os.path.exists(recipe_path):
            rc = load(recipe_path)
            rows.append((f"recipe step (Muon + AdamW, QAT, indexer loss, accum {rc.get('accum')}) vs PyTorch AdamW (tok/s)",
                         hf_rate(hf, "train_4x128"), rc.get("step_tokens_per_s"), ""))
        for label, theirs, ours, unit in rows:
            lower = unit in ("s", "MiB")
            print(f"| {label} | {n} | {fmt(theirs, unit)} | {fmt(ours, unit)} | {ratio(ours, theirs, lower)} |")
        if os.path.exists(recipe_path):
            ns, peak = rc.get("optimizer_gflops"), rc.get("kernel_gemm_gflops")
            if ns and peak:
                print(f"| — Newton–Schulz GFLOP/s ÷ f32 GEMM peak of the same run | {n} | — | "
                      f"{ns:,.0f} ÷ {peak:,.0f} | {ns / peak:.0%} of peak |")
    print()
    print("Ratios above 1× favour v4post (for seconds and memory: PyTorch ÷ v4post).")


if __name__ == "__main__":
    main()
