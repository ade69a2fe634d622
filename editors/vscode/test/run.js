// The grammar's tests, run by a real TextMate engine (vscode-textmate with oniguruma,
// through vscode-tmgrammar-test):
//   1. test/syntax/*.kd: syntax tests asserting scopes word by word;
//   2. snapshots of every example (examples/*.kd) and every checker case
//      (tests/cases/**/*.kd): each is copied to test/snap/ under a flattened name and its
//      tokens compared with the committed `.snap` beside it.
// `node test/run.js --update` rewrites the snapshots; without it a missing snapshot fails.
"use strict";
const fs = require("fs");
const path = require("path");
const { spawnSync } = require("child_process");

const here = path.resolve(__dirname, "..");
const repo = path.resolve(here, "../..");
const update = process.argv.includes("--update");
const bin = (name) => path.join(here, "node_modules", ".bin", name);

function run(tool, args) {
  const result = spawnSync(bin(tool), args, { cwd: here, stdio: "inherit" });
  return result.status === 0;
}

function sources() {
  const found = [];
  const walk = (dir) => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) walk(full);
      else if (entry.name.endsWith(".kd")) found.push(full);
    }
  };
  for (const file of fs.readdirSync(path.join(repo, "examples"))) {
    if (file.endsWith(".kd")) found.push(path.join(repo, "examples", file));
  }
  walk(path.join(repo, "tests", "cases"));
  return found.sort();
}

let ok = run("vscode-tmgrammar-test", ["-g", "syntaxes/kd.tmLanguage.json", "test/syntax/*.kd"]);

const snapDir = path.join(here, "test", "snap");
const wanted = new Set();
for (const source of sources()) {
  const name = path.relative(repo, source).split(path.sep).join("__");
  wanted.add(name);
  fs.copyFileSync(source, path.join(snapDir, name));
  if (!update && !fs.existsSync(path.join(snapDir, name + ".snap"))) {
    console.error(`no snapshot for ${path.relative(repo, source)}: run \`npm test -- --update\` in editors/vscode and commit test/snap/${name}.snap`);
    ok = false;
  }
}
// Snapshots of files that no longer exist would pass silently: they fail instead.
for (const file of fs.readdirSync(snapDir)) {
  const source = file.replace(/\.snap$/, "");
  if (!wanted.has(source)) {
    if (update) fs.rmSync(path.join(snapDir, file));
    else {
      console.error(`stale snapshot test/snap/${file}: its source is gone (\`npm test -- --update\` removes it)`);
      ok = false;
    }
  }
}
const snapArgs = ["-g", "syntaxes/kd.tmLanguage.json", "test/snap/*.kd"];
if (update) snapArgs.push("--updateSnapshot");
ok = run("vscode-tmgrammar-snap", snapArgs) && ok;
process.exit(ok ? 0 : 1);
