/** The browser host: bundle files fetched from a base URL, sessions in onnxruntime-web (wasm).
 *
 * Each file is fetched once per WebBundle and the same bytes go to every session of the mode:
 * onnxruntime-web fetches an external-data URL whole once per session, so handing it the buffer
 * matters (measured on SmolLM2 attached: 11+18 s load -> 1.6+6 s). The buffers are dropped once
 * the sessions hold their weights. Sizes are always checked; sha256 (WebCrypto) with verify:
 * "hash", which costs a pass over every byte, so it is not the default here. Threads need a
 * cross-origin isolated page (COOP same-origin + COEP require-corp, see demo/serve.mjs). */

import * as ortWeb from "onnxruntime-web";
import { type CascadeModel, type CascadeOptions, loadCascade as loadCascadeFrom } from "./cascade.js";
import { BundleError } from "./errors.js";
import type { BundleHost, Ort, Session, SessionOptions } from "./host.js";
import { checkRelative, type Manifest, weightFiles } from "./manifest.js";
import { load as loadFrom, type ModelOptions, type ShadowEdgeModel } from "./model.js";

export * from "./index.js";

export class WebBundle implements BundleHost {
  readonly base: URL;
  private files = new Map<string, Promise<Uint8Array>>();

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
      const data = await this.bytes(name);
      if (data.byteLength !== entry.size) {
        throw new BundleError(`bundle file ${name} has ${data.byteLength} bytes, manifest says ${entry.size}: corrupt or truncated`);
      }
      if (hashes && (await sha256(data)) !== entry.sha256) {
        throw new BundleError(`bundle file ${name} does not match its sha256 in the manifest: corrupt or modified`);
      }
    }
  }

  async createSession(manifest: Manifest, file: string, options: SessionOptions): Promise<Session> {
    const externalData = await Promise.all(weightFiles(manifest).map(async (path) => ({ path, data: await this.bytes(path) })));
    const { intraOpNumThreads: _, interOpNumThreads: __, ...rest } = options; // threads: env.wasm.numThreads
    return this.ort.InferenceSession.create(await this.bytes(file), { ...rest, executionProviders: ["wasm"], externalData });
  }

  loaded(): void {
    this.files.clear();
  }
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
