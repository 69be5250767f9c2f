/** Load time, prefill and decode speed of bundles in three hosts side by side, on the same
 * request (request.json: a chat prompt, greedy, EOS off): the Python runtime, this runtime in Node
 * (onnxruntime-node) and in headless Chromium (onnxruntime-web wasm, the demo page). Each host, bundle
 * and mode runs in a fresh process (Chromium: a fresh browser), so peak memory is its own. Two browser
 * peers run the plain base model on the same request in the same run:
 *   --gguf FILE          wllama (llama.cpp in wasm, bench/wllama.html) on that GGUF, with the request's
 *                        threads and with one (llama.cpp's threads busy-wait, which a busy machine
 *                        punishes), timed by llama.cpp itself;
 *   --transformersjs DIR transformers.js (bench/transformersjs.html; its package installed in
 *                        benchmarks/transformersjs/, not js/) on the folder transformersjs_model.py wrote,
 *                        timed by a streamer; with --base BUNDLE (the bundle that folder came from),
 *                        the Python runtime's base mode on it says which tokens transformers.js must give.
 *
 *     node dist/bench/hosts.js [LABEL=]BUNDLE... [--python .venv-runtime/bin/python] [--gguf FILE.gguf]
 *                              [--transformersjs DIR [--base BUNDLE]] [--out FILE.json]
 */

import { execFileSync } from "node:child_process";
import { basename, dirname, resolve } from "node:path";
import { readFileSync, writeFileSync } from "node:fs";
import { cpus, loadavg } from "node:os";
import { fileURLToPath } from "node:url";
import { launchChromium, openDemo, runInPage, serverOrigin } from "../demo/chromium.js";
import { startServer } from "../demo/server.js";
import { type BenchRequest, type HostFigures, median, REQUEST_FILE } from "./figures.js";

const MODES = ["detached", "attached"];
const TRANSFORMERSJS_PACKAGE = fileURLToPath(new URL("../../../benchmarks/transformersjs", import.meta.url));

function child(command: string, args: string[]): HostFigures {
  const out = execFileSync(command, args, { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] });
  return JSON.parse(out.trim().split("\n").pop() as string);
}

async function chromium(bundle: string, mode: string, request: BenchRequest): Promise<HostFigures> {
  const server = await startServer({ bench: bundle });
  const browser = await launchChromium();
  try {
    const { page, errors } = await openDemo(browser.browser, serverOrigin(server), "bench");
    const options = { maxNewTokens: request.max_new_tokens, temperature: 0, eosTokenIds: [] };
    const runs = [];
    for (let i = 0; i < request.repeat; i++) runs.push(await runInPage(page, { mode: mode as "detached", messages: request.messages, options, threads: request.threads }));
    if (errors.length) throw new Error(`the page reported: ${errors.join("; ")}`);
    return {
      host: "chromium",
      mode,
      load_s: runs[0].loadS,
      prefill_s: median(runs.map((r) => r.prefillS)),
      decode_tok_per_s: median(runs.map((r) => r.decodeTokPerS)),
      prompt_tokens: runs[0].promptTokens,
      new_tokens: runs[0].newTokens,
      peak_rss_mb: browser.rendererPeakMb(),
      token_ids: runs[0].tokenIds,
    };
  } finally {
    await browser.close();
    server.close();
  }
}

/** wllama on the GGUF in a fresh browser; its speeds are llama.cpp's timings of each completion. */
async function wllama(gguf: string, threads: number, request: BenchRequest): Promise<HostFigures> {
  const server = await startServer({ gguf: dirname(gguf) });
  const browser = await launchChromium();
  try {
    const page = await browser.browser.newPage();
    const origin = serverOrigin(server);
    await page.goto(`${origin}/bench/wllama.html`);
    await page.waitForFunction(() => "runWllama" in window, { timeout: 30_000 });
    const url = `${origin}/bundles/gguf/${basename(gguf)}`;
    const args = { url, messages: request.messages, maxTokens: request.max_new_tokens, threads, repeat: request.repeat };
    const result = await page.evaluate((a) => (window as unknown as { runWllama(a: unknown): Promise<WllamaResult> }).runWllama(a), args);
    const timings = result.runs.map((r) => r.timings);
    return {
      host: "wllama",
      mode: `base, ${threads} thread${threads > 1 ? "s" : ""}`,
      load_s: result.loadS,
      prefill_s: median(timings.map((t) => t.prompt_ms / 1000)),
      decode_tok_per_s: median(timings.map((t) => t.predicted_per_second)),
      prompt_tokens: timings[0].prompt_n,
      new_tokens: timings[0].predicted_n,
      peak_rss_mb: browser.rendererPeakMb(),
      token_ids: [],
    };
  } finally {
    await browser.close();
    server.close();
  }
}

/** transformers.js on the base model folder in a fresh browser; speeds from a streamer's token times. */
async function transformersjs(model: string, request: BenchRequest): Promise<HostFigures> {
  const server = await startServer({ tjs: TRANSFORMERSJS_PACKAGE, "tjs-model": model });
  const browser = await launchChromium();
  try {
    const page = await browser.browser.newPage();
    const errors: string[] = [];
    page.on("pageerror", (error) => errors.push(String(error)));
    page.on("response", (response) => response.status() >= 400 && errors.push(`${response.status()} ${response.url()}`));
    await page.goto(`${serverOrigin(server)}/bench/transformersjs.html`);
    await page.waitForFunction(() => "runTransformersJs" in window, { timeout: 30_000 });
    const args = { messages: request.messages, maxTokens: request.max_new_tokens, threads: request.threads, repeat: request.repeat };
    const result = await page.evaluate((a) => (window as unknown as { runTransformersJs(a: unknown): Promise<PeerResult> }).runTransformersJs(a), args);
    if (errors.length) throw new Error(`the transformers.js page reported: ${errors.join("; ")}`);
    return {
      host: "transformers.js",
      bundle: "base",
      mode: "base",
      load_s: result.loadS,
      prefill_s: median(result.runs.map((r) => r.prefillS)),
      decode_tok_per_s: median(result.runs.map((r) => r.decodeTokPerS)),
      prompt_tokens: result.runs[0].promptTokens,
      new_tokens: result.runs[0].newTokens,
      peak_rss_mb: browser.rendererPeakMb(),
      token_ids: result.runs[0].tokenIds,
    };
  } finally {
    await browser.close();
    server.close();
  }
}

interface PeerResult {
  loadS: number;
  runs: { promptTokens: number; newTokens: number; prefillS: number; decodeTokPerS: number; tokenIds: number[] }[];
}

interface WllamaResult {
  loadS: number;
  runs: { timings: { prompt_ms: number; prompt_n: number; predicted_n: number; predicted_per_second: number } }[];
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const valued = new Set(["--python", "--gguf", "--transformersjs", "--base", "--out"]);
  const option = (name: string, fallback: string) => (args.includes(name) ? args[args.indexOf(name) + 1] : fallback);
  const bundles = args
    .filter((a, i) => !a.startsWith("--") && !valued.has(args[i - 1]))
    .map((a) => (a.includes("=") ? a.split("=", 2) : [basename(resolve(a)), a]) as [string, string]);
  if (!bundles.length) throw new Error("usage: hosts.js [LABEL=]BUNDLE... [--python PYTHON] [--gguf FILE.gguf] [--transformersjs DIR [--base BUNDLE]] [--out FILE.json]");
  const python = option("--python", "python3");
  const request: BenchRequest = JSON.parse(readFileSync(REQUEST_FILE, "utf8"));
  const results: HostFigures[] = [];
  const loadBefore = loadavg()[0]; // other work on the machine slows every host: say how much there was
  for (const [label, bundle] of bundles) {
    for (const mode of MODES) {
      const rows = [
        child(python, [fileURLToPath(new URL("../../bench/run_python.py", import.meta.url)), bundle, mode]),
        child(process.execPath, [fileURLToPath(new URL("./run_node.js", import.meta.url)), bundle, mode]),
        await chromium(bundle, mode, request),
      ];
      results.push(...rows.map((r) => ({ ...r, bundle: label })));
    }
  }
  const gguf = option("--gguf", "");
  if (gguf) for (const threads of [...new Set([request.threads, 1])]) results.push(await wllama(gguf, threads, request));
  const model = option("--transformersjs", "");
  const base = option("--base", "");
  if (base) results.push({ ...child(python, [fileURLToPath(new URL("../../bench/run_python.py", import.meta.url)), base, "base"]), bundle: "base" });
  if (model) results.push(await transformersjs(model, request));
  const python_ = (r: HostFigures) => results.find((p) => p.host === "python" && p.mode === r.mode && p.bundle === r.bundle);
  const same = (r: HostFigures) => (python_(r) === undefined ? null : JSON.stringify(r.token_ids) === JSON.stringify(python_(r)?.token_ids));
  console.log("bundle    host             mode                load s  prefill s  decode tok/s  peak MB  same tokens as Python");
  for (const r of results) {
    console.log(
      `${(r.bundle ?? "-").padEnd(9)} ${r.host.padEnd(16)} ${r.mode.padEnd(18)} ${r.load_s.toFixed(2).padStart(6)} ${r.prefill_s.toFixed(3).padStart(10)} ${r.decode_tok_per_s.toFixed(1).padStart(13)} ${r.peak_rss_mb.toFixed(0).padStart(8)}  ${same(r) ?? "n/a (another model)"}`,
    );
  }
  const chromiumVersion = execFileSync(process.env.CHROMIUM ?? "/usr/bin/chromium", ["--version"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
  const report = {
    schema: "shadow-edge-js-hosts/2",
    bundles: Object.fromEntries(bundles),
    peers: { gguf: gguf || null, transformersjs: model || null, base: base || null },
    request,
    machine: { cpus: cpus().length, cpu: cpus()[0]?.model, node: process.version, chromium: chromiumVersion, load_average_1min: { before: loadBefore, after: loadavg()[0] } },
    results: results.map(({ token_ids, ...r }) => ({ ...r, same_tokens_as_python: same({ token_ids, ...r }) })),
  };
  const out = option("--out", "");
  if (out) writeFileSync(out, `${JSON.stringify(report, null, 2)}\n`);
}

await main();
