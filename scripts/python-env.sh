#!/usr/bin/env bash
# The Python the tests need (onnxruntime, to run kdc's ONNX exports; onnx, numpy, and
# Hugging Face's tokenizers as the reference for kdc's tokenisation; Pillow, to write and
# decode the images kdc reads; pyarrow and Hugging Face's datasets, to write the Parquet and
# Arrow tables kdc reads; TensorBoard, to load the event files kdc writes), in a
# virtual environment under target/, made on first use from PyPI with pinned versions.
# Prints the interpreter's path.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/pyenv
mkdir -p target
# Tests run in parallel: one process makes the environment, the others wait for it.
exec 9>target/pyenv.lock
flock 9
if ! "$venv/bin/python" -c "import onnx, onnxruntime, numpy, tokenizers, PIL, pyarrow, datasets, tensorboard" >/dev/null 2>&1; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "onnx==1.23.2" "onnxruntime==1.32.0" "numpy==2.4.6" "tokenizers==0.22.1" "pillow==12.3.0" \
    "pyarrow==26.0.1" "datasets==5.2.0" "tensorboard==2.21.0" >&2
fi
echo "$PWD/$venv/bin/python"
