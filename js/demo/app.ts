/** The demo page: loads the bundle named by ?bundle= (default /bundles/robot/) once per mode, streams
 * the answer into the page with its tok/s, and exposes window.demo.run() for the browser test.
 * ?remote=URL makes the cascade escalate to that server (`shadow-edge serve --cors-origin ...`)
 * instead of the attached model in the tab. */

import { CascadeStream, type GenerateOptions, load, loadCascade, type Message, type ShadowEdgeModel } from "../src/web.js";

type DemoMode = "detached" | "attached" | "cascade";

export interface DemoRequest {
  mode: DemoMode;
  prompt?: string | number[];
  messages?: Message[];
  options?: GenerateOptions;
  threads?: number;
}

export interface DemoResult {
  tokenIds: number[];
  text: string;
  pieces: number;
  finishReason: string | null;
  servedBy: string | null;
  loadS: number;
  prefillS: number;
  decodeTokPerS: number;
  newTokens: number;
  promptTokens: number;
  crossOriginIsolated: boolean;
}

const params = new URLSearchParams(location.search);
const bundle = params.get("bundle") ?? "/bundles/robot/";
const remote = params.get("remote") ?? undefined;
const models = new Map<DemoMode, { model: Promise<ShadowEdgeModel>; loadS: Promise<number> }>();
const $ = (id: string) => document.getElementById(id) as HTMLElement;

function open(mode: DemoMode, threads?: number) {
  let entry = models.get(mode);
  if (!entry) {
    const started = performance.now();
    const model = mode === "cascade" ? loadCascade(bundle, { threads, remote }) : load(bundle, { mode, threads });
    entry = { model, loadS: model.then(() => (performance.now() - started) / 1000) };
    models.set(mode, entry);
  }
  return entry;
}

/** Generate, streaming into the page; the whole answer and its stats. */
async function run(request: DemoRequest): Promise<DemoResult> {
  const entry = open(request.mode, request.threads);
  const model = await entry.model;
  const answer = $("answer");
  answer.textContent = "";
  const stream = request.messages ? model.streamChat(request.messages, request.options) : model.stream(request.prompt ?? "", request.options);
  const result: DemoResult = {
    tokenIds: [],
    text: "",
    pieces: 0,
    finishReason: null,
    servedBy: null,
    loadS: await entry.loadS,
    prefillS: 0,
    decodeTokPerS: 0,
    newTokens: 0,
    promptTokens: 0,
    crossOriginIsolated: globalThis.crossOriginIsolated,
  };
  for await (const r of stream) {
    result.tokenIds.push(r.token);
    result.text += r.text;
    result.pieces += 1;
    Object.assign(result, { finishReason: r.finishReason, prefillS: r.prefillS, decodeTokPerS: r.decodeTokPerS, newTokens: r.newTokens, promptTokens: r.promptTokens });
    answer.textContent = result.text;
    $("stats").textContent = `${r.newTokens} tokens · first after ${r.prefillS.toFixed(2)} s · ${r.decodeTokPerS.toFixed(1)} tok/s`;
  }
  if (stream instanceof CascadeStream) {
    result.servedBy = stream.servedBy;
    result.tokenIds = stream.tokenIds; // a remote chunk may carry several ids
    $("stats").textContent += ` · answered by ${result.servedBy}`;
  }
  return result;
}

declare global {
  interface Window {
    demo: { run: typeof run; bundle: string };
  }
}
window.demo = { run, bundle };

$("ask").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = new FormData(event.target as HTMLFormElement);
  const mode = form.get("mode") as DemoMode;
  $("status").textContent = models.has(mode) ? "" : `loading ${mode}…`;
  run({ mode, messages: [{ role: "user", content: String(form.get("prompt")) }], options: { maxNewTokens: 64, temperature: 0 } }).then(
    (r) => ($("status").textContent = `loaded in ${r.loadS.toFixed(1)} s${r.crossOriginIsolated ? "" : " (not cross-origin isolated: one thread)"}`),
    (error: Error) => ($("status").textContent = `error: ${error.message}`),
  );
});
