/** What each host of the benchmark reports (the Python host prints the same fields). */

import { fileURLToPath } from "node:url";

export const REQUEST_FILE = fileURLToPath(new URL("../../bench/request.json", import.meta.url));

export interface BenchRequest {
  messages: { role: string; content: string }[];
  max_new_tokens: number;
  repeat: number;
  threads: number;
}

export interface HostFigures {
  host: "python" | "node" | "chromium" | "wllama" | "transformers.js";
  bundle?: string; // which of the run's bundles (hosts.ts labels them); a peer runs its own model
  mode: string;
  load_s: number; // manifest to ready sessions (Chromium: fetching the files from localhost included)
  prefill_s: number; // median over the runs
  decode_tok_per_s: number; // median over the runs
  prompt_tokens: number;
  new_tokens: number;
  peak_rss_mb: number; // the process (Chromium: the page's renderer process)
  token_ids: number[]; // [] when the host does not say (wllama)
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}
