#!/usr/bin/env bash
# Kill-and-resume trials behind the figures in docs/reliability.md.
#
#   scripts/resume-trials.sh [CAMPAIGNS] [kdc run options...]
#
# Runs the digits example once without interruption (the reference), then CAMPAIGNS
# times: starts it, kills it with SIGKILL after a random 0.2-3 s, resumes it with
# `kdc run --resume`, kills that too, ... until a resume finishes. Each campaign's exports
# must equal the reference's byte for byte, and its summary.json and metrics.jsonl must
# equal the reference's once timings are removed. Prints one line per campaign and the
# totals. Defaults: 5 campaigns, the example cut to 4 + 4 epochs with a checkpoint every
# 9 steps (pass other --set options to change that).
set -euo pipefail
cd "$(dirname "$0")/.."
campaigns="${1:-5}"
shift || true
if [ "$#" -eq 0 ]; then
  set -- --set stage.teach.epochs=4 --set stage.distill.epochs=4 --set pipeline.digits.checkpoint_every=9
fi
cargo build --quiet
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# A copy, so a rebuild while the trials run cannot change the binary under test.
kdc="$work/kdc"
cp target/debug/kdc "$kdc"

untimed_summary() { grep -v '"seconds"\|"samples_per_s"\|"latency_ms"\|"encoder_forwards"' "$1/summary.json"; }
untimed_metrics() { sed 's/"seconds":[-0-9.e]*//' "$1/metrics.jsonl"; }

"$kdc" run examples/digits.kd --out "$work/reference" "$@" >"$work/reference.log" 2>&1
total_kills=0
matched=0
for campaign in $(seq 1 "$campaigns"); do
  dir="$work/run-$campaign"
  kills=0
  command=("$kdc" run examples/digits.kd --out "$dir" "$@")
  while :; do
    "${command[@]}" >>"$work/run-$campaign.log" 2>&1 &
    pid=$!
    sleep "$((RANDOM % 3)).$((RANDOM % 10))$((RANDOM % 10))"
    if kill -9 "$pid" 2>/dev/null; then
      kills=$((kills + 1))
      wait "$pid" 2>/dev/null || true
      command=("$kdc" run --resume "$dir")
    else
      wait "$pid"
      break
    fi
  done
  same=yes
  for file in "$work/reference"/*.safetensors; do
    cmp -s "$file" "$dir/$(basename "$file")" || same=no
  done
  diff -q <(untimed_summary "$work/reference") <(untimed_summary "$dir") >/dev/null || same=no
  diff -q <(untimed_metrics "$work/reference") <(untimed_metrics "$dir") >/dev/null || same=no
  [ -e "$dir/checkpoint.safetensors" ] && same=no
  echo "campaign $campaign: $kills kills, bitwise equal: $same"
  total_kills=$((total_kills + kills))
  [ "$same" = yes ] && matched=$((matched + 1))
done
echo "$campaigns campaigns, $total_kills kills, $matched of $campaigns matched the uninterrupted run"
[ "$matched" -eq "$campaigns" ]
