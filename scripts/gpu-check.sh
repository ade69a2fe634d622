#!/usr/bin/env bash
# The CUDA check, for a GPU host with no Rust toolchain and no network (docs/cuda.md).
#
#   scripts/gpu-check.sh --prepare   # here: builds kdc-cuda and the CUDA test binary into
#                                    # target/gpu-check/ (release, stripped, gzipped)
#   scripts/gpu-check.sh             # there, from the repository root, with target/gpu-check
#                                    # carried along: every check, then one table
#
# On the host it runs, keeping going past a failure: the binaries' libraries, a smoke run
# of digits on the GPU, every layer kind's values and gradients on the GPU against the
# CPU (tests/reverse_pass.rs), the digits example on both devices (metrics side by side),
# digits again on the GPU (bitwise the same weights), digits in bf16 on the GPU, and the
# bench cases beside PyTorch on the same GPU. Logs go to $OUT (or /tmp/gpu-check).
set -uo pipefail
cd "$(dirname "$0")/.."
pack=target/gpu-check

if [ "${1:-}" = "--prepare" ]; then
  set -e
  env_file="$(scripts/cuda-toolchain.sh)"
  # shellcheck source=/dev/null
  source "$env_file"
  cargo build --release --features cuda --target-dir target/cuda --bin kdc
  tests="$(cargo test --release --features cuda --target-dir target/cuda --test reverse_pass \
    --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "reverse_pass":
        print(m["executable"])' | tail -1)"
  [ -n "$tests" ] || { echo "gpu-check: no reverse_pass test binary was built" >&2; exit 1; }
  rm -rf "$pack" && mkdir -p "$pack"
  cp target/cuda/release/kdc "$pack/kdc-cuda"
  cp "$tests" "$pack/reverse-pass-cuda"
  strip "$pack/kdc-cuda" "$pack/reverse-pass-cuda"
  gzip -9 "$pack/kdc-cuda" "$pack/reverse-pass-cuda"
  ls -l "$pack"
  bytes="$(du -cb "$pack"/* | tail -1 | cut -f1)"
  echo "gpu-check: $((bytes / 1048576)) MiB to carry (the device tool takes 64 MiB with the working tree)"
  exit 0
fi

out="${OUT:-/tmp/gpu-check}"
mkdir -p "$out"
bin="$out/bin"
mkdir -p "$bin"
for f in kdc-cuda reverse-pass-cuda; do
  if [ -f "$pack/$f.gz" ]; then
    gunzip -c "$pack/$f.gz" >"$bin/$f" && chmod +x "$bin/$f"
  fi
done
kdc="$bin/kdc-cuda"

# The CUDA 13 libraries from the host's PyTorch (its wheels ship them), the driver from
# the system.
python="${KDC_TORCH_PYTHON:-}"
for candidate in "$python" /opt/torch/.venv/bin/python3 "$(command -v python3)"; do
  if [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" -c "import torch" 2>/dev/null; then
    python="$candidate"
    break
  fi
done
libs="$("$python" -c 'import glob, site, os
dirs = [d for s in site.getsitepackages() for d in glob.glob(os.path.join(s, "nvidia", "*", "lib")) + glob.glob(os.path.join(s, "nvidia", "*", "*", "lib"))]
print(":".join(dirs))' 2>/dev/null)"
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

rows=()
check() {
  local name="$1"
  shift
  local started=$SECONDS status
  if "$@" >"$out/$name.log" 2>&1; then status="ok"; else status="FAILED (exit $?)"; fi
  local last
  last="$(grep -v '^\s*$' "$out/$name.log" | tail -1 | cut -c1-120 | tr '|' '/')"
  rows+=("| $name | $status | $((SECONDS - started)) s | $last |")
}

gpu_line() { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; }
missing_libraries() { ! ldd "$kdc" | grep "not found"; ldd "$kdc" | grep -E "libcuda|libcublas|libcurand|libnvrtc|libcudart"; }
smoke() {
  "$kdc" run examples/digits.kd --device cuda --out "$out/smoke" \
    --set stage.teach.epochs=1 --set stage.distill.epochs=1 &&
    grep -q '"device": "cuda:0"' "$out/smoke/summary.json"
}
layers() { KDC_ROOT="$PWD" "$bin/reverse-pass-cuda" --test-threads=1; }
digits() {
  "$kdc" run examples/digits.kd --device cpu --out "$out/digits-cpu" &&
    "$kdc" run examples/digits.kd --device cuda --out "$out/digits-cuda" &&
    "$python" - "$out/digits-cpu/summary.json" "$out/digits-cuda/summary.json" <<'EOF'
import json, sys
cpu, gpu = (json.load(open(p)) for p in sys.argv[1:3])
print("model    split  cpu acc  cuda acc")
for name, model in cpu["models"].items():
    for split, m in model["metrics"].items():
        other = gpu["models"][name]["metrics"][split]
        print(f"{name:8} {split:6} {m['accuracy']:.4f}   {other['accuracy']:.4f}")
print("gpu:", gpu.get("gpu"))
EOF
}
# The same seed on the same GPU gives bitwise the same weights (docs/cuda.md, determinism).
repeatable() {
  "$kdc" run examples/digits.kd --device cuda --out "$out/digits-cuda-again" &&
    for f in teacher.safetensors student.safetensors baseline.safetensors; do
      cmp "$out/digits-cuda/$f" "$out/digits-cuda-again/$f" || return 1
    done && echo "bitwise the same weights"
}
# Mixed precision on the GPU: every model of digits in bf16, accuracies beside f32's.
bf16() {
  "$kdc" run examples/digits.kd --device cuda --set pipeline.digits.precision=bf16 \
    --out "$out/digits-bf16" &&
    "$python" - "$out/digits-cuda/summary.json" "$out/digits-bf16/summary.json" <<'EOF'
import json, sys
f32, bf16 = (json.load(open(p)) for p in sys.argv[1:3])
for name, model in f32["models"].items():
    a = model["metrics"]["test"]["accuracy"]
    b = bf16["models"][name]["metrics"]["test"]["accuracy"]
    print(f"{name}: f32 {a:.4f} bf16 {b:.4f} ({bf16['models'][name]['precision']})")
EOF
}
bench() {
  "$kdc" bench train --device cuda --runs 3 --steps 20 --python "$python" \
    --torch-ref bench/torch_ref.py --case mlp_distill --case cnn_distill --case text_student \
    --case bn_cnn --case resnet_bn --case bilstm_student --case transformer_student
}

check gpu gpu_line
check libraries missing_libraries
check smoke smoke
check layers layers
check digits digits
check repeatable repeatable
check bf16 bf16
check bench bench

echo
echo "| check | result | time | last line of its log ($out/NAME.log) |"
echo "|---|---|---:|---|"
printf '%s\n' "${rows[@]}"
echo
cat "$out/digits.log" 2>/dev/null | tail -12
cat "$out/bf16.log" 2>/dev/null | tail -4
tail -20 "$out/bench.log" 2>/dev/null
