#!/usr/bin/env bash
# Every benchmark in one go (release build), human-readable; the numbers in README.md come from
# this script on the 2-core development machine. Each bench reports medians of repetitions and
# ratios measured within the same run. Pass --json to get one JSON document per bench.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin v4post
B=target/release/v4post
$B bench forward --checkpoint testdata/golden/v4-tiny-a "$@"
$B bench forward --checkpoint assets/v4-small-base "$@"
$B bench rollout --checkpoint assets/v4-small-base "$@"
$B bench train-step --checkpoint assets/v4-small-base "$@"
$B bench opd-kl "$@"
$B bench store "$@"
$B bench queue "$@"
