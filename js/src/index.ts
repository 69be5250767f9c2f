/** The core of the shadow-edge runtime: host-independent, over onnxruntime-common's API.
 * Hosts: ./node.ts (onnxruntime-node, files), ./web.ts (onnxruntime-web, fetch); React Native
 * passes onnxruntime-react-native and its own file access as a BundleHost. */

export { CascadeModel, type CascadeOptions, type CascadeResult, CascadeStream, loadCascade } from "./cascade.js";
export { type Decoder, Engine } from "./engine.js";
export { Decision, DEFAULT_POLICY, type EscalationPolicy, nextTokenStats, policyFromManifest, updatePolicy } from "./escalation.js";
export { BundleError, GenerationError, RemoteError, ShadowEdgeError } from "./errors.js";
export type { FinishReason, GenerateOptions, GenerationConfig, GenerationResult, Response } from "./generate.js";
export type { BundleHost, Ort } from "./host.js";
export { KVCache } from "./kv-cache.js";
export { FORMAT_NAME, FORMAT_VERSION, type Manifest, type Mode, parseManifest } from "./manifest.js";
export { load, MODES, type ModelOptions, readManifest, ShadowEdgeModel } from "./model.js";
export { RemoteModel } from "./remote.js";
export { NumpyRandom } from "./rng.js";
export { distribution, makeSampler } from "./sampling.js";
export { DraftLength, loadSpeculative, type SpeculativeOptions, SpeculativeModel, type SpeculativeStats } from "./speculative.js";
export { type LoadOptions } from "./sessions.js";
export { type Message, StreamDecoder, Tokenizer } from "./tokenizer.js";
