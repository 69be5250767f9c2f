/** One host of hosts.ts: this runtime in Node loads BUNDLE in MODE and runs request.json (greedy,
 * EOS off so every run decodes max_new_tokens); prints one JSON line. A process per mode, so that
 * its peak RSS is its own. */

import { readFileSync } from "node:fs";
import { load, type Mode } from "../src/node.js";
import { type BenchRequest, type HostFigures, median, REQUEST_FILE } from "./figures.js";

const [bundle, mode] = process.argv.slice(2) as [string, Mode];
const request: BenchRequest = JSON.parse(readFileSync(REQUEST_FILE, "utf8"));
const started = performance.now();
const model = await load(bundle, { mode, threads: request.threads, verify: "size" });
const loadS = (performance.now() - started) / 1000;
const options = { maxNewTokens: request.max_new_tokens, temperature: 0, eosTokenIds: [] };
const runs = [];
for (let i = 0; i < request.repeat; i++) runs.push(await model.chat(request.messages, options));
const figures: HostFigures = {
  host: "node",
  mode,
  load_s: loadS,
  prefill_s: median(runs.map((r) => r.prefillS)),
  decode_tok_per_s: median(runs.map((r) => r.decodeTokPerS)),
  prompt_tokens: runs[0].promptTokens,
  new_tokens: runs[0].newTokens,
  peak_rss_mb: process.resourceUsage().maxRSS / 1024,
  token_ids: runs[0].tokenIds,
};
console.log(JSON.stringify(figures));
