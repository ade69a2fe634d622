#!/usr/bin/env bash
# Runs one fuzz target for SECONDS seconds:  scripts/fuzz.sh compile|loaders|text|report SECONDS [FLAGS...]
# (FLAGS go to libFuzzer, e.g. -max_len=65536).
#
# compile: arbitrary bytes as a .kd file through the whole compiler (parser, checker, lowering).
# loaders: arbitrary bytes as a data file through every loader (IDX, CSV, NumPy, images,
# Parquet and Arrow tables, safetensors).
# text: arbitrary bytes as a text data file (JSONL, JSON, CSV, TSV) and a tokenizer.json.
# report: arbitrary bytes as a run's summary.json and metrics.jsonl (split at the first zero
# byte) through `kdc report`'s parse and page.
# cargo-fuzz (libFuzzer) needs nightly compiler flags; RUSTC_BOOTSTRAP=1 lets the stable
# toolchain accept them. One process, so it shares two cores politely. New inputs go to
# fuzz/corpus/TARGET (ignored by git); crashes to fuzz/artifacts/TARGET, and each one found
# belongs in the ordinary tests (tests/hostile/ or tests/cases/err/) once fixed.
set -euo pipefail

usage="usage: scripts/fuzz.sh compile|loaders|text|report SECONDS [LIBFUZZER_FLAGS...]"
target=${1:?$usage}
seconds=${2:?$usage}
case "$target" in compile | loaders | text | report) ;; *) echo "$usage" >&2; exit 2 ;; esac
shift 2

root=$(cd "$(dirname "$0")/.." && pwd)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

# Seeds, gathered fresh from the repository: the examples, the .kd test cases and the
# hostile corpus.
seeds="$root/fuzz/seeds/$target"
rm -rf "$seeds"
mkdir -p "$seeds" "$root/fuzz/corpus/$target"
n=0
if [ "$target" = compile ]; then
  for f in "$root"/examples/*.kd "$root"/tests/cases/*/*.kd "$root"/tests/hostile/*/pipeline.kd; do
    n=$((n + 1)); cp "$f" "$seeds/$n.kd"
  done
elif [ "$target" = text ]; then
  for f in "$root"/tests/text/mail.jsonl "$root"/tests/hostile/text_*/* "$root"/tests/hostile/run_text_*/run/*; do
    [ -f "$f" ] || continue
    case "$f" in *tokenizer.json | *.jsonl | *.json | *.csv | *.tsv) ;; *) continue ;; esac
    n=$((n + 1)); cp "$f" "$seeds/$n"
  done
elif [ "$target" = report ]; then
  # Each seed: a summary, a zero byte, its metrics (committed runs and hostile cases).
  for d in "$root"/docs/results/*/ "$root"/tests/hostile/report_*/; do
    [ -f "$d/summary.json" ] || continue
    n=$((n + 1))
    {
      cat "$d/summary.json"
      printf '\0'
      if [ -f "$d/metrics.jsonl" ]; then cat "$d/metrics.jsonl"; fi
    } > "$seeds/$n"
  done
else
  for f in "$root"/examples/data/*.gz "$root"/tests/hostile/*/*.idx "$root"/tests/hostile/*/*.csv \
    "$root"/tests/hostile/*/*.safetensors "$root"/tests/hostile/*/*.npy "$root"/tests/hostile/*/*.npz "$root"/tests/hostile/*/images/*/* \
    "$root"/tests/tables/*.parquet "$root"/tests/tables/*.arrow "$root"/tests/tables/*/*.arrow \
    "$root"/tests/hostile/*/*.parquet "$root"/tests/hostile/*/*.arrow "$root"/tests/hostile/*/*/*.arrow \
    "$root"/tests/hostile/*/run/*; do
    [ -f "$f" ] || continue
    n=$((n + 1)); cp "$f" "$seeds/$n"
  done
fi

cd "$root/fuzz"
# -s none: the workspace forbids unsafe code, so AddressSanitizer adds little; what is looked
# for is panics, arithmetic overflow (-a turns on debug assertions, as in kdc's dev build),
# and allocations past libFuzzer's limit (-malloc_limit_mb, 2 GB by default). Inputs stay
# under 4 KiB unless FLAGS say otherwise: the 57 KB digits seed and the gzip bombs would
# otherwise grow a corpus that decompresses megabytes per execution, 30 times slower.
# A run's summary with its per-class scores is larger: report inputs may reach 64 KiB.
max_len=4096
[ "$target" = report ] && max_len=65536
RUSTC_BOOTSTRAP=1 cargo fuzz run -s none -a "$target" "corpus/$target" "seeds/$target" -- \
  -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -max_len="$max_len" "$@"
