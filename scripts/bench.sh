#!/usr/bin/env bash
# Every benchmark in one go (release build), human-readable; the numbers in README.md come from
# this script on the 2-core development machine. Each bench reports medians of repetitions and
# ratios measured within the same run. Pass --json to get one JSON document per bench.
#
# Side by side with PyTorch: `scripts/bench.sh --anchor VENV [--small DIR]` runs the Hugging Face
# transformers DeepSeek-V4 port (../shared/bench/hf_anchor.py, or $V4POST_ANCHOR_SCRIPT) from the
# Python venv VENV and the matching v4post benches back to back on golden A and on the 49M
# benchmark checkpoint (DIR, default ../shared/bench/v4-small-49m), then prints one table with
# the ratios. Create the venv once, outside the repository:
#   python3 -m venv ~/hf-anchor && ~/hf-anchor/bin/pip install torch transformers safetensors numpy
# The anchor is a cross-check tool, never a dependency of v4post. Measure on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."

ANCHOR=""
SMALL="../shared/bench/v4-small-49m"
PASS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --anchor) ANCHOR="${2:?--anchor needs the venv directory}"; shift 2 ;;
    --small) SMALL="${2:?--small needs a checkpoint directory}"; shift 2 ;;
    *) PASS+=("$1"); shift ;;
  esac
done

# V4POST_BIN: an already built v4post to measure instead of building the release binary
B="${V4POST_BIN:-}"
if [ -z "$B" ]; then
  cargo build --release --bin v4post
  B=target/release/v4post
fi

if [ -n "$ANCHOR" ]; then
  PY="$ANCHOR/bin/python"
  SCRIPT="${V4POST_ANCHOR_SCRIPT:-../shared/bench/hf_anchor.py}"
  [ -x "$PY" ] || { echo "error: no python at $PY; create the venv: python3 -m venv $ANCHOR && $ANCHOR/bin/pip install torch transformers safetensors numpy" >&2; exit 2; }
  [ -f "$SCRIPT" ] || { echo "error: anchor script $SCRIPT not found (set V4POST_ANCHOR_SCRIPT)" >&2; exit 2; }
  [ -d "$SMALL" ] || { echo "error: benchmark checkpoint $SMALL not found (pass --small DIR)" >&2; exit 2; }
  [ -x /usr/bin/time ] || { echo "error: /usr/bin/time (GNU time) is needed for peak memory" >&2; exit 2; }
  OUT=$(mktemp -d)
  for pair in "A:testdata/golden/v4-tiny-a" "small:$SMALL"; do
    name="${pair%%:*}"; dir="${pair#*:}"
    echo "== $name ($dir): PyTorch port" >&2
    "$PY" "$SCRIPT" "$dir" --reps 5 --only prefill_1x256,decode_b1,decode_b8,train_4x128 --out "$OUT/hf_$name.json" >&2
    /usr/bin/time -f %M -o "$OUT/rss_hf_$name" "$PY" "$SCRIPT" "$dir" --reps 3 --only train_4x128 --out "$OUT/hf_train_$name.json" >&2
    echo "== $name ($dir): v4post" >&2
    $B bench forward --checkpoint "$dir" --json > "$OUT/fwd_$name.json"
    $B bench rollout --checkpoint "$dir" --batches 1,8 --prompt 64 --decode 128 --json > "$OUT/roll_$name.json"
    /usr/bin/time -f %M -o "$OUT/rss_v4_$name" \
      $B bench train-step --checkpoint "$dir" --optim adamw --numerics dense --reps 5 --json > "$OUT/train_$name.json"
    # the project's own recipe step: 32 micro-batches of 4×128 per Muon + AdamW update
    $B bench train-step --checkpoint "$dir" --optim muon --numerics qat --accum 32 --reps 2 --json > "$OUT/recipe_$name.json"
  done
  "$PY" scripts/anchor_table.py "$OUT" A small
  echo "(raw JSON in $OUT)" >&2
  exit 0
fi

$B bench forward --checkpoint testdata/golden/v4-tiny-a "${PASS[@]}"
$B bench forward --checkpoint assets/v4-small-base "${PASS[@]}"
$B bench rollout --checkpoint assets/v4-small-base "${PASS[@]}"
$B bench train-step --checkpoint assets/v4-small-base "${PASS[@]}"
$B bench opd-kl "${PASS[@]}"
$B bench store "${PASS[@]}"
$B bench queue "${PASS[@]}"
