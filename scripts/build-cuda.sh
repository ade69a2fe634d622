#!/usr/bin/env bash
# Builds `kdc-cuda`, kdc with candle's CUDA backend, for machines with an NVIDIA GPU
# (docs/cuda.md). The toolkit comes from PyPI (scripts/cuda-toolchain.sh); no GPU is
# needed to build. The binary needs the NVIDIA driver (libcuda.so.1) and the CUDA 13
# libraries (cuBLAS, cuBLASLt, cuRAND, NVRTC) to start; the plain `kdc` needs neither.
#
#   scripts/build-cuda.sh            # release: target/cuda/release/kdc-cuda
#   scripts/build-cuda.sh dev        # the dev profile, faster to build
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-release}"
env_file="$(scripts/cuda-toolchain.sh)"
# shellcheck source=/dev/null
source "$env_file"
cargo build --profile "$profile" --features cuda --target-dir target/cuda --bin kdc
dir="target/cuda/$([ "$profile" = dev ] && echo debug || echo "$profile")"
cp "$dir/kdc" "$dir/kdc-cuda"
[ "$profile" = dev ] || strip "$dir/kdc-cuda"
echo "$dir/kdc-cuda"
