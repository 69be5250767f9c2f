/** Behaviour the vectors do not cover: typed errors for bad bundles and requests, streaming and
 * its stats, the sampler's distribution, and remote escalation to a real `shadow-edge serve`. */

import assert from "node:assert/strict";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import {
  BundleError,
  distribution,
  GenerationError,
  load,
  loadCascade,
  loadSpeculative,
  makeSampler,
  NumpyRandom,
  RemoteError,
  type Response,
} from "../src/node.js";
import { freePort, type PythonServer, startPythonServer } from "./python-server.js";
import { readVectors } from "./vectors.js";

const vectors = readVectors();
const GREEDY = { maxNewTokens: 12, temperature: 0 };

function copyBundle(edit: (dir: string) => void): string {
  const dir = mkdtempSync(join(tmpdir(), "shadow-edge-js-"));
  cpSync(vectors.bundles.text, dir, { recursive: true });
  edit(dir);
  return dir;
}

describe("bundle checks", () => {
  test("another format version is refused with a hint", async () => {
    const dir = copyBundle((d) => {
      const manifest = JSON.parse(readFileSync(join(d, "manifest.json"), "utf8"));
      writeFileSync(join(d, "manifest.json"), JSON.stringify({ ...manifest, format_version: 2 }));
    });
    await assert.rejects(load(dir), (e: unknown) => e instanceof BundleError && /version 2/.test(e.message) && /re-export/.test(e.hint));
    rmSync(dir, { recursive: true });
  });

  test("a modified weights file fails its sha256, and loads with verify: size", async () => {
    const dir = copyBundle((d) => {
      const weights = readFileSync(join(d, "weights.data"));
      weights[100] ^= 0xff;
      writeFileSync(join(d, "weights.data"), weights);
    });
    await assert.rejects(load(dir, { mode: "detached" }), (e: unknown) => e instanceof BundleError && /weights\.data.*sha256/.test(e.message));
    await (await load(dir, { mode: "detached", verify: "size" })).release();
    rmSync(dir, { recursive: true });
  });

  test("a manifest naming a file outside the bundle is refused", async () => {
    const dir = copyBundle((d) => {
      const manifest = JSON.parse(readFileSync(join(d, "manifest.json"), "utf8"));
      manifest.graphs.shadow_lm.file = "../shadow_lm.onnx";
      manifest.files["../shadow_lm.onnx"] = manifest.files["shadow_lm.onnx"];
      writeFileSync(join(d, "manifest.json"), JSON.stringify(manifest));
    });
    await assert.rejects(load(dir, { mode: "detached" }), (e: unknown) => e instanceof BundleError && /outside the bundle/.test(e.message));
    rmSync(dir, { recursive: true });
  });

  test("a truncated file, a missing folder and an unsupported mode are BundleErrors", async () => {
    const dir = copyBundle((d) => writeFileSync(join(d, "shadow_lm.onnx"), "x"));
    await assert.rejects(load(dir, { mode: "detached" }), (e: unknown) => e instanceof BundleError && /has 1 bytes/.test(e.message));
    rmSync(dir, { recursive: true });
    await assert.rejects(load("/nonexistent/bundle"), BundleError);
    await assert.rejects(load(vectors.bundles.text, { mode: "base" }), (e: unknown) => e instanceof BundleError && /base mode/.test(e.message));
  });
});

describe("requests", async () => {
  const text = await load(vectors.bundles.text, { mode: "detached" });
  const ids = await load(vectors.bundles.ids, { mode: "detached" });
  after(() => Promise.all([text.release(), ids.release()]));

  test("bad settings and prompts raise GenerationError before any work", () => {
    for (const options of [{ temperature: -1 }, { topP: 0 }, { topK: 1.5 }, { repetitionPenalty: 0 }, { maxNewTokens: 0 }, { maxNewTokens: 1000 }]) {
      assert.throws(() => text.stream("hello", options), GenerationError, JSON.stringify(options));
    }
    assert.throws(() => ids.stream([5, 999]), /outside the vocabulary/);
    assert.throws(() => ids.stream([]), /empty/);
    assert.throws(() => ids.stream("text"), /no tokenizer/);
    assert.throws(() => ids.stream([5, 6], { stop: ["x"] }), /stop strings need a bundle with a tokenizer/);
  });

  test("a stream yields one response per token with text and stats; its pieces are the text", async () => {
    const responses: Response[] = [];
    for await (const r of text.stream("the cat", { ...GREEDY, eosTokenIds: [] })) responses.push(r);
    const whole = await text.generate("the cat", { ...GREEDY, eosTokenIds: [] });
    assert.equal(responses.length, 12);
    assert.deepEqual(
      responses.map((r) => r.newTokens),
      Array.from({ length: 12 }, (_, i) => i + 1),
    );
    assert.equal(responses.map((r) => r.text).join(""), whole.text);
    assert.deepEqual(
      responses.map((r) => r.finishReason),
      [...new Array(11).fill(null), "length"],
    );
    const last = responses[responses.length - 1];
    assert.ok(last.prefillS > 0 && last.decodeTokPerS > 0 && last.promptTokens === text.encode("the cat").length);
  });

  test("breaking out of a stream stops it", async () => {
    let count = 0;
    for await (const _ of text.stream("the cat", { ...GREEDY, eosTokenIds: [] })) if (++count === 3) break;
    assert.equal(count, 3);
  });

  test("a batch streams each row's responses by index; rows finish on their own; bad batches are refused", async () => {
    const prompts = [[5, 9, 3, 7, 11], [40, 2]];
    const alone = await Promise.all(prompts.map((p) => ids.generate(p, { ...GREEDY, eosTokenIds: [] })));
    const eos = alone[1].tokenIds[2]; // stops row 1 at its third token, unless row 0 meets it first
    const responses: Response[] = [];
    for await (const r of ids.streamBatch(prompts, { ...GREEDY, eosTokenIds: [eos] })) responses.push(r);
    const row = (b: number) => responses.filter((r) => r.index === b);
    assert.deepEqual(
      row(1).map((r) => r.token),
      alone[1].tokenIds.slice(0, alone[1].tokenIds.indexOf(eos) + 1),
    );
    assert.equal(row(1).at(-1)?.finishReason, "eos");
    assert.deepEqual(
      row(0).map((r) => r.promptTokens),
      new Array(row(0).length).fill(5),
    );
    assert.throws(() => ids.streamBatch([]), /non-empty list/);
    assert.throws(() => ids.streamBatch([[5], []]), /empty/);
    assert.throws(() => ids.streamBatch([[5], [999]]), /outside the vocabulary/);
    const cascade = await loadCascade(vectors.bundles.ids, { verify: "size" });
    const speculative = await loadSpeculative(vectors.bundles.ids, { verify: "size" });
    assert.throws(() => cascade.generateBatch(prompts), /one prompt at a time/);
    assert.throws(() => speculative.generateBatch(prompts), /one prompt at a time/);
    await Promise.all([cascade.release(), speculative.release()]);
  });

  test("a seed repeats its tokens; other seeds give others", async () => {
    const sampled = (seed: number) => text.generate("hello", { maxNewTokens: 12, temperature: 1, seed, eosTokenIds: [] });
    const [a, b, c] = [await sampled(5), await sampled(5), await sampled(6)];
    assert.deepEqual(a.tokenIds, b.tokenIds);
    assert.notDeepEqual(a.tokenIds, c.tokenIds);
  });
});

test("speculative decoding refuses sampling and a bundle without the attached graphs", async () => {
  const model = await loadSpeculative(vectors.bundles.text);
  assert.throws(() => model.stream("hello", { temperature: 0.7 }), (e: unknown) => e instanceof GenerationError && /temperature 0/.test(e.message));
  await model.release();
  const dir = copyBundle((d) => {
    const manifest = JSON.parse(readFileSync(join(d, "manifest.json"), "utf8"));
    writeFileSync(join(d, "manifest.json"), JSON.stringify({ ...manifest, modes: ["detached"] }));
  });
  await assert.rejects(loadSpeculative(dir), (e: unknown) => e instanceof BundleError && /needs the attached graphs/.test(e.message));
  rmSync(dir, { recursive: true });
});

test("the sampler draws from its distribution (top-k and top-p applied)", () => {
  const logits = Float32Array.from({ length: 12 }, (_, i) => Math.sin(i * 1.7) * 2);
  const probs = distribution(logits, 0.8, 6, 0.9);
  assert.equal(probs.filter((p) => p > 0).length <= 6, true);
  const sample = makeSampler(0.8, 6, 0.9);
  const rng = new NumpyRandom(1);
  const draws = 20000;
  const counts = new Array(12).fill(0);
  for (let i = 0; i < draws; i++) counts[sample(logits, rng)] += 1;
  probs.forEach((p, token) => {
    const sigma = Math.sqrt(draws * p * (1 - p));
    assert.ok(Math.abs(counts[token] - draws * p) <= 4 * sigma + 1e-9, `token ${token}: ${counts[token]} of ${draws}, p=${p}`);
  });
});

describe("remote escalation to shadow-edge serve", () => {
  let url = "";
  let server: PythonServer | null = null;

  before(async () => {
    server = await startPythonServer(vectors.bundles.text, ["--mode", "attached"]);
    url = server.url;
  });
  after(() => server?.stop());

  test("the escalated answer is the attached model's, with its ids; the decision is the shadow's", async () => {
    const cascade = await loadCascade(vectors.bundles.text, { remote: url, confidenceThreshold: 1.5 });
    assert.ok(!("backbone" in cascade.runners), "a remote cascade does not load the backbone");
    for (const prompt of ["hello world", "the cat sat on"]) {
      const want = vectors.text.find((c) => c.kind === "generate" && c.mode === "attached" && c.prompt === prompt && JSON.stringify(c.settings) === JSON.stringify({ max_new_tokens: 12, temperature: 0 }));
      assert.ok(want);
      const got = await cascade.generate(prompt, GREEDY);
      assert.equal(got.servedBy, "remote");
      assert.match(got.reason ?? "", /^confidence: top-1 probability/);
      assert.deepEqual(got.tokenIds, want.token_ids);
      assert.equal(got.text, want.text);
    }
    const chat = vectors.text.find((c) => c.kind === "chat" && c.mode === "attached");
    const answer = await cascade.chat(chat!.messages!, GREEDY);
    assert.deepEqual([answer.servedBy, answer.tokenIds, answer.text], ["remote", chat!.token_ids, chat!.text]);
    await cascade.release();
  });

  test("an unreachable remote is a RemoteError", async () => {
    const cascade = await loadCascade(vectors.bundles.text, { remote: `http://127.0.0.1:${await freePort()}`, confidenceThreshold: 1.5 });
    await assert.rejects(cascade.generate("hello", GREEDY), (e: unknown) => e instanceof RemoteError && /cannot reach/.test(e.message));
    await cascade.release();
  });
});
