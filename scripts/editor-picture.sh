#!/usr/bin/env bash
# editor-picture.sh OUT.png: the README's picture (docs/images/editor.png). Every example,
# highlighted by vscode-textmate with editors/vscode's grammar (test/render.js), on one
# page; the first is digits.kd with the student's logits made 7 wide, and kdc check's
# diagnostics drawn under the lines they point at. Headless Chromium (Debian's `chromium`)
# takes the screenshot. Needs a built kdc (KDC, default target/debug/kdc) and the
# extension's npm packages (scripts/editor-tools.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$(realpath -m "$1")"
kdc="${KDC:-$ROOT/target/debug/kdc}"
command -v chromium >/dev/null || { echo "editor-picture: chromium is missing (apt install chromium)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/data"
cp "$ROOT/examples/data/digits.csv.gz" "$work/data/"
python3 - "$ROOT/examples/digits.kd" "$work/digits.kd" <<'PY'
import sys
text = open(sys.argv[1]).read()
broken = text.replace("  linear(32) relu\n  linear(10) as logits", "  linear(32) relu\n  linear(7) as logits")
assert broken != text, "examples/digits.kd no longer has the student's last layer this script breaks"
open(sys.argv[2], "w").write(broken)
PY
# kdc check exits 1 on the broken file: that is the point.
"$kdc" --error-format json check "$work/digits.kd" 2>"$work/diagnostics.json" && exit 1
others=()
for f in "$ROOT"/examples/*.kd; do
  [ "$(basename "$f")" = digits.kd ] || others+=("$f")
done
height="$(cd "$ROOT/editors/vscode" && node test/render.js "$work/page.html" "$work/diagnostics.json" "$work/digits.kd" "${others[@]}")"
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --force-device-scale-factor=1 \
  --window-size="1900,$height" --screenshot="$out" "file://$work/page.html" >/dev/null 2>&1
test -s "$out"
echo "$out: 1900x$height"
