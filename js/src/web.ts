/** The browser host: bundle files fetched from a base URL, sessions in onnxruntime-web (wasm).
 *
 * Each file is fetched once per WebBundle and the same bytes go to every session of the mode:
 * onnxruntime-web fetches an external-data URL whole once per session, so handing it the buffer
 * matters (measured on SmolLM2 attached: 11+18 s load -> 1.6+6 s). Of a weights file only the
 * byte ranges the mode's graphs point at are fetched (HTTP Range requests; a server that ignores
 * them sends the whole file), into one buffer of the file's size whose other pages stay untouched:
 * a detached page does not download the backbone's weights. onnxruntime-web copies each tensor out
 * of that buffer, which is dropped once the sessions are open. Sizes are always checked; sha256
 * (WebCrypto) with verify: "hash", which needs every byte, so it is not the default here. Threads
 * need a cross-origin isolated page (COOP same-origin + COEP require-corp, see demo/server.ts). */

import * as ortWeb from "onnxruntime-web";
import { type CascadeModel, type CascadeOptions, loadCascade as loadCascadeFrom } from "./cascade.js";
import { BundleError } from "./errors.js";
import type { BundleHost, Ort, Session, SessionOptions } from "./host.js";
import { checkRelative, type Manifest } from "./manifest.js";
import { load as loadFrom, type ModelOptions, type ShadowEdgeModel } from "./model.js";
import { loadSpeculative as loadSpeculativeFrom, type SpeculativeModel, type SpeculativeOptions } from "./speculative.js";
import { externalRanges, spans } from "./onnx-external.js";

export * from "./index.js";

/** A weights file being filled range by range: [start, end) spans already fetched. */
interface PartialFile {
  data: Uint8Array;
  fetched: [number, number][];
}

export class WebBundle implements BundleHost {
  readonly base: URL;
  private files = new Map<string, Promise<Uint8Array>>();
  private weights = new Map<string, PartialFile>();
  /** Bytes of weights fetched so far (all files), for benchmarks and tests. */
  weightBytesFetched = 0;

  constructor(
    base: string | URL,
    readonly ort: Ort = ortWeb,
  ) {
    const url = new URL(base, globalThis.location?.href);
    if (!url.pathname.endsWith("/")) url.pathname += "/";
    this.base = url;
  }

  get location(): string {
    return this.base.href;
  }

  /** The bytes of a bundle file, fetched once. */
  bytes(name: string): Promise<Uint8Array> {
    let file = this.files.get(name);
    if (!file) {
      file = fetchBytes(new URL(checkRelative(name), this.base));
      this.files.set(name, file);
    }
    return file;
  }

  async readText(name: string): Promise<string> {
    return new TextDecoder().decode(await this.bytes(name));
  }

  async checkFiles(manifest: Manifest, names: string[], hashes: boolean): Promise<void> {
    for (const name of names) {
      const entry = manifest.files[name];
      const weights = name.endsWith(".data");
      if (weights && !hashes) {
        await this.checkSize(name, entry.size); // the ranges are fetched by createSession
        continue;
      }
      const data = weights ? await this.fetchSpans(name, entry.size, [[0, entry.size]]) : await this.bytes(name);
      sizeMatches(name, data.byteLength, entry.size);
      if (hashes && (await sha256(data)) !== entry.sha256) {
        throw new BundleError(`bundle file ${name} does not match its sha256 in the manifest: corrupt or modified`);
      }
    }
  }

  async createSession(manifest: Manifest, file: string, options: SessionOptions): Promise<Session> {
    const graph = await this.bytes(file);
    const byFile = new Map<string, ReturnType<typeof externalRanges>>();
    for (const range of externalRanges(graph)) byFile.set(range.location, [...(byFile.get(range.location) ?? []), range]);
    const externalData = [];
    for (const [path, ranges] of byFile) {
      const entry = manifest.files[checkRelative(path)];
      if (!entry) throw new BundleError(`${file} reads weights from ${path}, which the manifest does not list`);
      externalData.push({ path, data: await this.fetchSpans(path, entry.size, spans(ranges, entry.size)) });
    }
    const { intraOpNumThreads: _, interOpNumThreads: __, ...rest } = options; // threads: env.wasm.numThreads
    return this.ort.InferenceSession.create(graph, { ...rest, executionProviders: ["wasm"], externalData });
  }

  loaded(): void {
    this.files.clear();
    this.weights.clear();
  }

  private async checkSize(name: string, size: number): Promise<void> {
    const url = new URL(checkRelative(name), this.base);
    const response = await fetch(url, { method: "HEAD" }).catch((error: Error) => {
      throw new BundleError(`cannot fetch ${url.href}: ${error.message}`);
    });
    if (!response.ok) throw new BundleError(`cannot fetch ${url.href}: HTTP ${response.status}`);
    const length = response.headers.get("Content-Length");
    if (length !== null) sizeMatches(name, Number(length), size);
  }

  /** The weights file `name` with at least the given [start, end) spans fetched into it. */
  private async fetchSpans(name: string, size: number, wanted: [number, number][]): Promise<Uint8Array> {
    let file = this.weights.get(name);
    if (!file) {
      file = { data: new Uint8Array(size), fetched: [] };
      this.weights.set(name, file);
    }
    const url = new URL(checkRelative(name), this.base);
    for (const [start, end] of wanted.flatMap((span) => missing(span, (file as PartialFile).fetched))) {
      const response = await fetch(url, { headers: { Range: `bytes=${start}-${end - 1}` } }).catch((error: Error) => {
        throw new BundleError(`cannot fetch ${url.href}: ${error.message}`);
      });
      if (response.status !== 206 && response.status !== 200) throw new BundleError(`cannot fetch ${url.href}: HTTP ${response.status}`);
      const bytes = new Uint8Array(await response.arrayBuffer());
      this.weightBytesFetched += bytes.byteLength;
      if (response.status === 200) {
        sizeMatches(name, bytes.byteLength, size); // the server sent the whole file
        file.data.set(bytes);
        file.fetched = [[0, size]];
        break;
      }
      const total = /\/(\d+)$/.exec(response.headers.get("Content-Range") ?? "")?.[1];
      if (total !== undefined) sizeMatches(name, Number(total), size);
      if (bytes.byteLength !== end - start) throw new BundleError(`${url.href} sent ${bytes.byteLength} bytes for a range of ${end - start}`);
      file.data.set(bytes, start);
      file.fetched.push([start, end]);
    }
    return file.data;
  }
}

/** The parts of [start, end) that no fetched span covers. */
function missing([start, end]: [number, number], fetched: [number, number][]): [number, number][] {
  const out: [number, number][] = [];
  let from = start;
  for (const [s, e] of [...fetched].sort((a, b) => a[0] - b[0])) {
    if (e <= from) continue;
    if (s >= end) break;
    if (s > from) out.push([from, s]);
    from = Math.max(from, e);
  }
  if (from < end) out.push([from, end]);
  return out;
}

function sizeMatches(name: string, actual: number, expected: number): void {
  if (actual !== expected) throw new BundleError(`bundle file ${name} has ${actual} bytes, manifest says ${expected}: corrupt or truncated`);
}

async function fetchBytes(url: URL): Promise<Uint8Array> {
  let response: globalThis.Response;
  try {
    response = await fetch(url);
  } catch (error) {
    throw new BundleError(`cannot fetch ${url.href}: ${(error as Error).message}`);
  }
  if (!response.ok) throw new BundleError(`cannot fetch ${url.href}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

async function sha256(data: Uint8Array): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", data as Uint8Array<ArrayBuffer>));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

function withThreads<T extends { threads?: number; verify?: "hash" | "size" }>(options: T): T {
  if (options.threads !== undefined) ortWeb.env.wasm.numThreads = options.threads;
  return { verify: "size", ...options };
}

/** Open the bundle at `url` (a folder URL) in one mode (default attached). */
export function load(url: string | URL, options: ModelOptions = {}): Promise<ShadowEdgeModel> {
  return loadFrom(new WebBundle(url), withThreads(options));
}

/** Open the bundle at `url` as a cascade. */
export function loadCascade(url: string | URL, options: CascadeOptions = {}): Promise<CascadeModel> {
  return loadCascadeFrom(new WebBundle(url), withThreads(options));
}

/** Open the bundle at `url` for speculative decoding (attached greedy output, shadow drafts). */
export function loadSpeculative(url: string | URL, options: SpeculativeOptions = {}): Promise<SpeculativeModel> {
  return loadSpeculativeFrom(new WebBundle(url), withThreads(options));
}
