/** The demo page in headless Chromium (Debian's chromium, driven by puppeteer-core): the bundle
 * runs in onnxruntime-web (wasm, threads: the server makes the page cross-origin isolated) and
 * answers as the Python runtime does, detached, attached and as a cascade. */

import assert from "node:assert/strict";
import { cpSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import type { Server } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import type { Page } from "puppeteer-core";
import { type Chromium, launchChromium, openDemo, runInPage, serverOrigin } from "../demo/chromium.js";
import { startServer } from "../demo/server.js";
import { startPythonServer } from "./python-server.js";
import { type Case, generateOptions, readVectors } from "./vectors.js";

const vectors = readVectors();

/** What a page fetches from a served bundle: file names (HEAD requests aside) and the byte ranges
 * [first, last] of weights.data it received. */
function recordFetches(page: Page, bundle: string): { files: string[]; ranges: [number, number][] } {
  const record = { files: [] as string[], ranges: [] as [number, number][] };
  const prefix = `/bundles/${bundle}/`;
  page.on("response", (response) => {
    const path = new URL(response.url()).pathname;
    if (!path.startsWith(prefix) || response.request().method() !== "GET") return;
    const name = path.slice(prefix.length);
    if (!record.files.includes(name)) record.files.push(name);
    const range = /bytes (\d+)-(\d+)\//.exec(response.headers()["content-range"] ?? "");
    if (name === "weights.data") record.ranges.push(range ? [Number(range[1]), Number(range[2])] : [0, Number.MAX_SAFE_INTEGER]);
  });
  return record;
}

/** Every [offset, length] wanted lies inside one fetched [first, last] range. */
function assertCovered(wanted: [number, number][], fetched: [number, number][]): void {
  assert.ok(wanted.length > 0);
  for (const [offset, length] of wanted) {
    assert.ok(
      fetched.some(([first, last]) => first <= offset && offset + length - 1 <= last),
      `bytes ${offset}+${length} were not fetched (fetched: ${JSON.stringify(fetched)})`,
    );
  }
}

describe("the demo page in headless Chromium", () => {
  let server: Server;
  let chromium: Chromium;
  let origin: string;
  let corrupt: string;
  let page: Page;
  let errors: string[];

  before(async () => {
    corrupt = mkdtempSync(join(tmpdir(), "shadow-edge-corrupt-"));
    cpSync(vectors.bundles.text, corrupt, { recursive: true });
    const weights = readFileSync(join(corrupt, "weights.data"));
    weights[100] ^= 0xff;
    writeFileSync(join(corrupt, "weights.data"), weights);
    server = await startServer({ text: vectors.bundles.text, robot: vectors.bundles.robot, robot_int4: vectors.bundles.robot_int4, corrupt });
    origin = serverOrigin(server);
    chromium = await launchChromium();
    ({ page, errors } = await openDemo(chromium.browser, origin, "text"));
  });
  after(async () => {
    await chromium?.close();
    server?.close();
    rmSync(corrupt, { recursive: true, force: true });
  });

  const greedy = (mode: string) =>
    vectors.text.filter((c) => c.kind === "generate" && c.mode === mode && JSON.stringify(c.settings) === '{"max_new_tokens":12,"temperature":0}');

  for (const mode of ["detached", "attached"] as const) {
    test(`${mode} greedy answers equal Python's, streamed piece by piece`, async () => {
      const cases = greedy(mode);
      assert.ok(cases.length >= 2);
      for (const c of cases) {
        const got = await runInPage(page, { mode, prompt: c.prompt, options: generateOptions(c) });
        assert.deepEqual([got.tokenIds, got.text, got.finishReason], [c.token_ids, c.text, c.finish_reason], String(c.prompt));
        assert.equal(got.pieces, got.newTokens);
        assert.ok(got.decodeTokPerS > 0 && got.loadS > 0);
      }
      assert.deepEqual(errors, []);
    });
  }

  test("a seeded sample and a chat answer equal Python's", async () => {
    const sampled = vectors.text.find((c) => c.kind === "generate" && c.mode === "detached" && c.settings?.top_k === 20) as Case;
    const got = await runInPage(page, { mode: "detached", prompt: sampled.prompt, options: generateOptions(sampled) });
    assert.deepEqual(got.tokenIds, sampled.token_ids);
    const chat = vectors.text.find((c) => c.kind === "chat" && c.mode === "detached") as Case;
    const answer = await runInPage(page, { mode: "detached", messages: chat.messages, options: generateOptions(chat) });
    assert.deepEqual([answer.tokenIds, answer.text], [chat.token_ids, chat.text]);
  });

  test("the cascade escalates in the tab as in Python", async () => {
    const c = vectors.text.find((c) => c.kind === "cascade" && c.served_by === "attached" && c.policy?.confidence_threshold === 1.5) as Case;
    assert.ok(c);
    const got = await page.evaluate(async (prompt) => {
      const web = await import("/dist/src/web.js" as string);
      const cascade = await web.loadCascade(window.demo.bundle, { confidenceThreshold: 1.5 });
      const r = await cascade.generate(prompt, { maxNewTokens: 12, temperature: 0 });
      return [r.servedBy, r.tokenIds, r.text];
    }, c.prompt as string);
    assert.deepEqual(got, ["attached", c.token_ids, c.text]);
  });

  test("an attached page fetches each file once, and of weights.data each byte its graphs read, once", async () => {
    const fresh = await openDemo(chromium.browser, origin, "text");
    const record = recordFetches(fresh.page, "text");
    await runInPage(fresh.page, { mode: "attached", prompt: "a", options: { maxNewTokens: 2 } });
    assert.deepEqual(record.files.sort(), ["backbone.onnx", "manifest.json", "shadow.onnx", "tokenizer.json", "weights.data"]);
    const wanted = [...vectors.external.text.shadow, ...vectors.external.text.backbone];
    assertCovered(wanted, record.ranges);
    const sorted = [...record.ranges].sort((x, y) => x[0] - y[0]);
    sorted.slice(1).forEach(([start], i) => assert.ok(start > sorted[i][1], `ranges overlap: ${JSON.stringify(sorted)}`));
    await fresh.page.close();
  });

  test("verify: hash checks sha256 with WebCrypto: a modified weights file is refused", async () => {
    const outcome = await page.evaluate(async () => {
      const web = await import("/dist/src/web.js" as string);
      const good = await web.load("/bundles/text/", { mode: "detached", verify: "hash" });
      await good.release();
      return web.load("/bundles/corrupt/", { mode: "detached", verify: "hash" }).then(
        () => "loaded",
        (e: Error) => `${e.name}: ${e.message}`,
      );
    });
    assert.match(outcome, /^BundleError: bundle file weights\.data does not match its sha256/);
  });

  test("the page is cross-origin isolated (wasm threads)", async () => {
    assert.equal(await page.evaluate(() => globalThis.crossOriginIsolated), true);
  });

  test("the robot demo (SmolLM2-135M) answers as in Python: detached, and the cascade escalating in the tab", async () => {
    const robot = await openDemo(chromium.browser, origin, "robot");
    const record = recordFetches(robot.page, "robot");
    for (const c of vectors.robot.filter((c) => c.kind === "chat" && c.mode === "detached")) {
      const got = await runInPage(robot.page, { mode: "detached", messages: c.messages, options: generateOptions(c), threads: 2 });
      assert.deepEqual([got.tokenIds, got.text, got.finishReason], [c.token_ids, c.text, c.finish_reason]);
    }
    // the detached page fetched the shadow's weights and not the backbone's
    assertCovered(vectors.external.robot.shadow_lm, record.ranges);
    const fetched = record.ranges.reduce((sum, [s, e]) => sum + e - s + 1, 0);
    const size = statSync(join(vectors.bundles.robot, "weights.data")).size;
    assert.ok(fetched < 0.4 * size, `the detached page fetched ${fetched} of ${size} bytes of weights`);
    const escalated = vectors.robot.find((c) => c.kind === "cascade" && c.served_by === "attached") as Case;
    const got = await runInPage(robot.page, { mode: "cascade", messages: escalated.messages, options: generateOptions(escalated) });
    assert.deepEqual([got.servedBy, got.tokenIds, got.text], ["attached", escalated.token_ids, escalated.text]);
    assert.deepEqual(robot.errors, []);
    await robot.page.close();
  });

  test("the robot demo's web int4 profile answers as in Python, detached and as a cascade", async () => {
    const robot = await openDemo(chromium.browser, origin, "robot_int4");
    for (const c of vectors.robot_int4.filter((c) => c.kind === "chat" && c.mode === "detached")) {
      const got = await runInPage(robot.page, { mode: "detached", messages: c.messages, options: generateOptions(c), threads: 2 });
      assert.deepEqual([got.tokenIds, got.text, got.finishReason], [c.token_ids, c.text, c.finish_reason]);
    }
    const escalated = vectors.robot_int4.find((c) => c.kind === "cascade" && c.served_by === "attached") as Case;
    const got = await runInPage(robot.page, { mode: "cascade", messages: escalated.messages, options: generateOptions(escalated) });
    assert.deepEqual([got.servedBy, got.tokenIds, got.text], ["attached", escalated.token_ids, escalated.text]);
    assert.deepEqual(robot.errors, []);
    await robot.page.close();
  });
});
