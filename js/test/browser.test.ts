/** The demo page in headless Chromium (Debian's chromium, driven by puppeteer-core): the bundle
 * runs in onnxruntime-web (wasm, threads: the server makes the page cross-origin isolated) and
 * answers as the Python runtime does, detached, attached and as a cascade. */

import assert from "node:assert/strict";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
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
    server = await startServer({ text: vectors.bundles.text, robot: vectors.bundles.robot, corrupt });
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

  test("a mode fetches each file once: the same weights buffer goes to every session", async () => {
    const fresh = await openDemo(chromium.browser, origin, "text");
    const fetched: string[] = [];
    fresh.page.on("request", (request) => fetched.push(new URL(request.url()).pathname));
    await runInPage(fresh.page, { mode: "attached", prompt: "a", options: { maxNewTokens: 2 } });
    const bundleFiles = fetched.filter((p) => p.startsWith("/bundles/text/")).sort();
    assert.deepEqual(bundleFiles, ["backbone.onnx", "manifest.json", "shadow.onnx", "tokenizer.json", "weights.data"].map((f) => `/bundles/text/${f}`));
    await fresh.page.close();
  });

  test("the cascade escalates from the tab to shadow-edge serve (CORS opt-in) as in Python", async () => {
    const remote = await startPythonServer(vectors.bundles.text, ["--mode", "attached", "--cors-origin", origin]);
    try {
      const want = greedy("attached")[0];
      const got = await page.evaluate(
        async (url, prompt) => {
          const web = await import("/dist/src/web.js" as string);
          const cascade = await web.loadCascade(window.demo.bundle, { remote: url, confidenceThreshold: 1.5 });
          const r = await cascade.generate(prompt, { maxNewTokens: 12, temperature: 0 });
          return [r.servedBy, r.tokenIds, r.text, Object.keys(cascade.runners).sort()];
        },
        remote.url,
        want.prompt as string,
      );
      assert.deepEqual(got, ["remote", want.token_ids, want.text, ["shadow", "shadow_head"]]);
    } finally {
      remote.stop();
    }
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
    for (const c of vectors.robot.filter((c) => c.kind === "chat" && c.mode === "detached")) {
      const got = await runInPage(robot.page, { mode: "detached", messages: c.messages, options: generateOptions(c), threads: 2 });
      assert.deepEqual([got.tokenIds, got.text, got.finishReason], [c.token_ids, c.text, c.finish_reason]);
    }
    const escalated = vectors.robot.find((c) => c.kind === "cascade" && c.served_by === "attached") as Case;
    const got = await runInPage(robot.page, { mode: "cascade", messages: escalated.messages, options: generateOptions(escalated) });
    assert.deepEqual([got.servedBy, got.tokenIds, got.text], ["attached", escalated.token_ids, escalated.text]);
    assert.deepEqual(robot.errors, []);
    await robot.page.close();
  });
});
