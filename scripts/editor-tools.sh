#!/usr/bin/env bash
# editor-tools.sh: what the editor tests need (docs/editors.md), pinned, installed once.
#
#   scripts/editor-tools.sh          # prints the folder holding `tree-sitter`
#
# - tree-sitter-cli 0.27.1 from crates.io (`cargo install --locked`; its npm package would
#   download a binary from GitHub, which these machines cannot reach), into
#   ~/.cache/kdc-tools (or $KDC_TOOLS);
# - the VS Code extension's npm packages (vscode-languageclient; vscode-tmgrammar-test,
#   @vscode/vsce, typescript) from its lockfile, into editors/vscode/node_modules, again
#   whenever the lockfile changes.
# Node.js and npm themselves come from the system (Debian's `nodejs` and `npm`). Tests run
# this when a tool is missing; parallel callers wait for the first.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${KDC_TOOLS:-$HOME/.cache/kdc-tools}"
TREE_SITTER_VERSION=0.27.1
mkdir -p "$TOOLS"
exec 9>"$TOOLS/.lock"
flock 9

say() { printf 'editor-tools: %s\n' "$*" >&2; }
command -v node >/dev/null || { say "error: node is missing (apt install nodejs npm)"; exit 1; }
command -v npm >/dev/null || { say "error: npm is missing (apt install npm)"; exit 1; }

if ! "$TOOLS/bin/tree-sitter" --version 2>/dev/null | grep -q "$TREE_SITTER_VERSION"; then
  say "installing tree-sitter-cli $TREE_SITTER_VERSION (cargo install, a few minutes once)"
  cargo install --locked --quiet --root "$TOOLS" --version "$TREE_SITTER_VERSION" tree-sitter-cli >&2
fi
bins="$ROOT/editors/vscode/node_modules/.bin"
if [ ! -x "$bins/vscode-tmgrammar-test" ] || [ ! -x "$bins/vsce" ] || [ ! -x "$bins/tsc" ] ||
  ! cmp -s "$ROOT/editors/vscode/package-lock.json" "$ROOT/editors/vscode/node_modules/.kdc-lock"; then
  say "installing the extension's npm packages (npm ci)"
  (cd "$ROOT/editors/vscode" && npm ci --no-audit --no-fund --loglevel=error >&2 &&
    cp package-lock.json node_modules/.kdc-lock)
fi
echo "$TOOLS/bin"
