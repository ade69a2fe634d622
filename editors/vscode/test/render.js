// The picture in the README: every example, highlighted by a real TextMate engine
// (vscode-textmate with oniguruma, the engine VS Code runs) with this grammar, on one HTML
// page, with one diagnostic from `kdc check` drawn where the editor draws it.
//
//   node test/render.js OUT.html DIAGNOSTICS.json FILE.kd...
//
// DIAGNOSTICS.json holds `kdc check --error-format json` lines for the first file. The
// page is then screenshotted by headless Chromium (tests/editor_picture.rs).
"use strict";
const fs = require("fs");
const path = require("path");
const vsctm = require("vscode-textmate");
const oniguruma = require("vscode-oniguruma");

// One Dark's colours, by the scope classes the grammar uses.
const THEME = [
  ["comment", "#7f848e", "italic"],
  ["string", "#98c379"],
  ["constant.numeric", "#d19a66"],
  ["constant.language", "#d19a66"],
  ["keyword.other.unit", "#d19a66"],
  ["storage.type", "#c678dd"],
  ["keyword.control", "#c678dd"],
  ["keyword.other", "#56b6c2"],
  ["keyword.operator", "#56b6c2"],
  ["entity.name", "#e5c07b"],
  ["support.function.layer", "#61afef"],
  ["support.function.builtin", "#61afef"],
  ["support.function", "#61afef"],
  ["support.constant.metric", "#d19a66"],
  ["variable.language", "#e06c75"],
  ["variable.other.setting", "#e06c75"],
  ["variable.parameter", "#e5c07b"],
  ["variable.other.member", "#e06c75"],
];

function style(scopes) {
  for (let i = scopes.length - 1; i >= 0; i--) {
    for (const [prefix, colour, font] of THEME) {
      if (scopes[i].startsWith(prefix)) {
        return `color:${colour}` + (font ? `;font-style:${font}` : "");
      }
    }
  }
  return "";
}

const escape = (s) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

async function main() {
  const [out, diagnosticsFile, ...files] = process.argv.slice(2);
  const here = path.resolve(__dirname, "..");
  const wasm = fs.readFileSync(path.join(here, "node_modules/vscode-oniguruma/release/onig.wasm")).buffer;
  await oniguruma.loadWASM(wasm);
  const registry = new vsctm.Registry({
    onigLib: Promise.resolve({
      createOnigScanner: (sources) => new oniguruma.OnigScanner(sources),
      createOnigString: (s) => new oniguruma.OnigString(s),
    }),
    loadGrammar: async () =>
      vsctm.parseRawGrammar(fs.readFileSync(path.join(here, "syntaxes/kd.tmLanguage.json"), "utf8"), "kd.tmLanguage.json"),
  });
  const grammar = await registry.loadGrammar("source.kd");
  const diagnostics = fs
    .readFileSync(diagnosticsFile, "utf8")
    .split("\n")
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l));
  let body = "";
  files.forEach((file, index) => {
    const text = fs.readFileSync(file, "utf8");
    const lines = text.split("\n");
    if (lines[lines.length - 1] === "") lines.pop();
    // Byte offsets of each line, for the diagnostics' ranges.
    const starts = [];
    let offset = 0;
    for (const line of lines) {
      starts.push(offset);
      offset += Buffer.byteLength(line, "utf8") + 1;
    }
    const marks = index === 0 ? diagnostics : [];
    let state = vsctm.INITIAL;
    let rows = "";
    lines.forEach((line, n) => {
      const result = grammar.tokenizeLine(line, state);
      state = result.ruleStack;
      // Columns (UTF-16, as JavaScript strings count) a diagnostic underlines on this line.
      const lineStart = starts[n];
      const lineEnd = lineStart + Buffer.byteLength(line, "utf8");
      const under = marks
        .filter((d) => d.start < lineEnd && d.end > lineStart)
        .map((d) => {
          const from = Buffer.from(line, "utf8").subarray(0, Math.max(0, d.start - lineStart)).toString("utf8").length;
          const to = Buffer.from(line, "utf8").subarray(0, Math.min(d.end, lineEnd) - lineStart).toString("utf8").length;
          return [from, to, d];
        });
      let html = "";
      for (const token of result.tokens) {
        const piece = line.slice(token.startIndex, token.endIndex);
        const wavy = under.some(([a, b]) => token.startIndex < b && token.endIndex > a);
        const css = style(token.scopes) + (wavy ? ";text-decoration:underline wavy #e06c75" : "");
        html += css ? `<span style="${css}">${escape(piece)}</span>` : escape(piece);
      }
      rows += `<div class="line"><span class="no">${n + 1}</span>${html || " "}</div>`;
      for (const [, , d] of under.filter(([, , d]) => d.end <= lineEnd)) {
        const help = d.help ? `<div class="help">help: ${escape(d.help)}</div>` : "";
        rows += `<div class="diag"><b>${escape(d.code)}</b> ${escape(d.message)}${help}</div>`;
      }
    });
    body += `<section><h2>${escape(path.basename(file))}</h2><pre>${rows}</pre></section>\n`;
  });
  // The page's height for a screenshot 1900 pixels wide: two columns of sections.
  const heights = files.map((file, index) => {
    const lines = fs.readFileSync(file, "utf8").split("\n").length;
    return lines * 18.2 + (index === 0 ? diagnostics.length * 48 : 0) + 56;
  });
  const total = heights.reduce((a, b) => a + b, 0);
  console.log(Math.ceil(total / 2 + Math.max(...heights) / 2 + 40));
  fs.writeFileSync(
    out,
    `<!doctype html><html><head><meta charset="utf-8"><style>
body { background:#21252b; color:#abb2bf; font:13px/1.4 "DejaVu Sans Mono", monospace; margin:0; padding:16px;
  column-count:2; column-gap:16px; }
section { background:#282c34; border-radius:6px; margin:0 0 16px; padding:8px 0; break-inside:avoid; }
h2 { font:bold 13px "DejaVu Sans", sans-serif; color:#d7dae0; margin:0 16px 6px; }
pre { margin:0; font:inherit; }
.line { white-space:pre; padding:0 16px 0 0; }
.no { display:inline-block; width:3.2em; padding-right:1em; text-align:right; color:#495162; }
.diag { margin:2px 16px 4px 4.2em; padding:4px 8px; border-left:3px solid #e06c75; background:#3a2f33; color:#e6c5c8; white-space:pre-wrap; font-size:13px; }
.diag .help { color:#98c379; }
</style></head><body>
${body}</body></html>
`,
  );
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
