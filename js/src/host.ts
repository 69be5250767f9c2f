/** What a host (Node, a browser, React Native) gives the core: an onnxruntime module with the
 * onnxruntime-common API, and access to the bundle's files. The core never touches a file system
 * or the network itself, so the same schedules run everywhere onnxruntime-common's API does. */

import type * as OrtCommon from "onnxruntime-common";
import type { Manifest } from "./manifest.js";

/** onnxruntime-node, onnxruntime-web or onnxruntime-react-native: the parts the core uses. */
export type Ort = Pick<typeof OrtCommon, "InferenceSession" | "Tensor">;
export type Session = OrtCommon.InferenceSession;
export type Tensor = OrtCommon.Tensor;
export type SessionOptions = OrtCommon.InferenceSession.SessionOptions;

export interface BundleHost {
  readonly ort: Ort;
  /** A text file of the bundle (manifest.json, tokenizer.json). */
  readText(name: string): Promise<string>;
  /** Check the named files against the manifest: sizes, and sha256 too when `hashes`. */
  checkFiles(manifest: Manifest, names: string[], hashes: boolean): Promise<void>;
  /** One session for a graph file; `options` are the core's, the host adds providers and weights. */
  createSession(manifest: Manifest, file: string, options: SessionOptions): Promise<Session>;
  /** Called once the sessions are open: a host may drop file buffers it kept for them. */
  loaded?(): void;
  /** A short name of where the bundle is, for messages. */
  readonly location: string;
}
