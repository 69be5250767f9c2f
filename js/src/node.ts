/** The Node (and Electron) host: bundle files from a folder, sessions from onnxruntime-node, which
 * memory-maps the external weights itself; sha256 of every file the mode needs is checked. */

import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { readFile, stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import * as ortNode from "onnxruntime-node";
import { type CascadeModel, type CascadeOptions, loadCascade as loadCascadeFrom } from "./cascade.js";
import { BundleError } from "./errors.js";
import type { BundleHost, Ort, Session, SessionOptions } from "./host.js";
import { checkRelative, type Manifest } from "./manifest.js";
import { load as loadFrom, type ModelOptions, type ShadowEdgeModel } from "./model.js";
import { loadSpeculative as loadSpeculativeFrom, type SpeculativeModel, type SpeculativeOptions } from "./speculative.js";

export * from "./index.js";

export class NodeBundle implements BundleHost {
  readonly root: string;

  constructor(
    root: string,
    readonly ort: Ort = ortNode,
  ) {
    this.root = resolve(root);
  }

  get location(): string {
    return this.root;
  }

  private path(name: string): string {
    return join(this.root, checkRelative(name));
  }

  readText(name: string): Promise<string> {
    return readFile(this.path(name), "utf8");
  }

  async checkFiles(manifest: Manifest, names: string[], hashes: boolean): Promise<void> {
    for (const name of names) {
      const entry = manifest.files[name];
      const size = await stat(this.path(name)).then(
        (s) => s.size,
        () => -1,
      );
      if (size < 0) throw new BundleError(`bundle file missing: ${name}`);
      if (size !== entry.size) {
        throw new BundleError(`bundle file ${name} has ${size} bytes, manifest says ${entry.size}: corrupt or truncated`);
      }
      if (hashes && (await sha256File(this.path(name))) !== entry.sha256) {
        throw new BundleError(`bundle file ${name} does not match its sha256 in the manifest: corrupt or modified`);
      }
    }
  }

  createSession(_manifest: Manifest, file: string, options: SessionOptions): Promise<Session> {
    // the graph's external data (weights.data) is found next to it and memory-mapped
    return this.ort.InferenceSession.create(this.path(file), { ...options, executionProviders: ["cpu"] });
  }
}

async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 22 })) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

/** Open the bundle folder `path` in one mode (default attached). */
export function load(path: string, options: ModelOptions = {}): Promise<ShadowEdgeModel> {
  return loadFrom(new NodeBundle(path), options);
}

/** Open the bundle folder `path` as a cascade. */
export function loadCascade(path: string, options: CascadeOptions = {}): Promise<CascadeModel> {
  return loadCascadeFrom(new NodeBundle(path), options);
}

/** Open the bundle folder `path` for speculative decoding (attached greedy output, shadow drafts). */
export function loadSpeculative(path: string, options: SpeculativeOptions = {}): Promise<SpeculativeModel> {
  return loadSpeculativeFrom(new NodeBundle(path), options);
}
