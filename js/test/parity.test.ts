/** The TypeScript runtime against the Python runtime on the same bundles (make_vectors.py):
 * numpy's generator, tokenizer and chat template, logits, and the tokens, text and finish reason
 * of every generation case (greedy, repetition penalty, seeded sampling, stop strings, EOS) in
 * attached and detached mode, of left-padded batches row by row, and every cascade decision. */

import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { load, loadCascade, loadSpeculative, NumpyRandom, type ShadowEdgeModel, type SpeculativeModel } from "../src/node.js";
import { externalRanges } from "../src/onnx-external.js";
import { type Case, generateOptions, policyOptions, readVectors, title } from "./vectors.js";

const vectors = readVectors();

test("NumpyRandom draws what numpy's default_rng draws", () => {
  assert.ok(vectors.rng.length >= 5);
  for (const { seed, random } of vectors.rng) {
    const rng = new NumpyRandom(BigInt(seed));
    assert.deepEqual(
      random.map(() => rng.random()),
      random,
      `seed ${seed}`,
    );
  }
});

test("the external-data ranges of every graph are those onnx reads", () => {
  for (const [bundle, graphs] of Object.entries(vectors.external)) {
    const manifest = JSON.parse(readFileSync(join(vectors.bundles[bundle as "text"], "manifest.json"), "utf8"));
    for (const [graph, want] of Object.entries(graphs)) {
      const ranges = externalRanges(readFileSync(join(vectors.bundles[bundle as "text"], manifest.graphs[graph].file)));
      assert.ok(ranges.every((r) => r.location === "weights.data"));
      const got = ranges.map((r) => [r.offset, r.length]).sort((a, b) => (a[0] as number) - (b[0] as number) || (a[1] as number) - (b[1] as number));
      assert.deepEqual(got, want, `${bundle} ${graph}`);
    }
  }
});

test("tokenizer ids and chat template equal Python's", async () => {
  const model = await load(vectors.bundles.text, { mode: "detached" });
  for (const { text, ids, chat } of vectors.tokenizer) {
    assert.deepEqual(model.encode(text), ids, text);
    assert.equal(model.tokenizer?.applyChatTemplate(vectorsChat()), chat);
  }
  await model.release();
});

function vectorsChat() {
  const chat = vectors.text.find((c) => c.kind === "chat");
  assert.ok(chat?.messages);
  return chat.messages;
}

for (const bundle of ["text", "ids", "robot", "robot_int4"] as const) {
  describe(`${bundle} bundle`, () => {
    const cases = vectors[bundle];
    const models = new Map<string, Promise<ShadowEdgeModel>>();
    const model = (mode: "attached" | "detached") => {
      if (!models.has(mode)) models.set(mode, load(vectors.bundles[bundle], { mode, threads: 2 }));
      return models.get(mode) as Promise<ShadowEdgeModel>;
    };
    const speculative = new Map<number, Promise<SpeculativeModel>>();
    const drafting = (draftTokens: number) => {
      if (!speculative.has(draftTokens)) speculative.set(draftTokens, loadSpeculative(vectors.bundles[bundle], { draftTokens, threads: 2 }));
      return speculative.get(draftTokens) as Promise<SpeculativeModel>;
    };
    after(async () => Promise.all([...models.values(), ...speculative.values()].map(async (m) => (await m).release())));

    test("has cases of every kind", () => {
      const kinds = new Set(cases.map((c) => `${c.kind} ${c.mode ?? ""}`));
      const wanted = bundle.startsWith("robot")
        ? ["chat attached", "chat detached", "cascade ", ...(bundle === "robot" ? ["batch detached"] : [])]
        : ["logits attached", "logits detached", "generate attached", "generate detached", "batch attached", "batch detached", "cascade ", "speculative "];
      for (const k of wanted) assert.ok(kinds.has(k), k);
      const servedBy = new Set(cases.filter((c) => c.kind === "cascade").map((c) => c.served_by));
      assert.deepEqual([...servedBy].sort(), ["attached", "shadow"]);
    });

    for (const c of cases.filter((c) => c.kind === "logits")) {
      test(title(c), async () => {
        const rows = await (await model(c.mode!)).logits(c.prompt as number[]);
        const last = rows[rows.length - 1];
        const diff = Math.max(...c.last!.map((v, i) => Math.abs(v - last[i])));
        assert.ok(diff <= 1e-5, `max |logit difference| ${diff}`);
      });
    }

    for (const c of cases.filter((c) => c.kind === "generate" || c.kind === "chat")) {
      test(title(c), async () => {
        const m = await model(c.mode!);
        const options = generateOptions(c);
        const got = c.kind === "chat" ? await m.chat(c.messages!, options) : await m.generate(c.prompt!, options);
        assertSame(got, c);
      });
    }

    for (const c of cases.filter((c) => c.kind === "batch")) {
      test(title(c), async () => {
        const got = await (await model(c.mode!)).generateBatch(c.prompts!, generateOptions(c));
        assert.equal(got.length, c.results!.length);
        got.forEach((row, b) => assertSame(row, c.results![b]));
      });
    }

    for (const c of cases.filter((c) => c.kind === "speculative")) {
      test(`${title(c)} draft ${c.draft_tokens}`, async () => {
        const m = await drafting(c.draft_tokens!);
        const got = c.messages ? await m.chat(c.messages, generateOptions(c)) : await m.generate(c.prompt!, generateOptions(c));
        assertSame(got, c);
        assert.deepEqual(m.stats, c.stats);
      });
    }

    for (const c of cases.filter((c) => c.kind === "cascade")) {
      test(title(c), async () => {
        const cascade = await loadCascade(vectors.bundles[bundle], { ...policyOptions(c), verify: "size", threads: 2 });
        const options = generateOptions(c);
        const got = c.messages ? await cascade.chat(c.messages, options) : await cascade.generate(c.prompt!, options);
        assertSame(got, c);
        assert.deepEqual(
          { servedBy: got.servedBy, escalated: got.escalated, reason: got.reason, shadow: got.shadowTokenIds },
          { servedBy: c.served_by, escalated: c.escalated, reason: c.reason, shadow: c.shadow_token_ids },
        );
        await cascade.release();
      });
    }
  });
}

function assertSame(got: { tokenIds: number[]; text: string | null; finishReason: string }, want: Pick<Case, "token_ids" | "text" | "finish_reason">): void {
  assert.deepEqual(
    { tokens: got.tokenIds, text: got.text, finish: got.finishReason },
    { tokens: want.token_ids, text: want.text, finish: want.finish_reason },
  );
}
