/** Headless Chromium for the demo page (Debian's chromium driven by puppeteer-core), shared by the
 * browser test and the benchmark. CHROMIUM names another executable. */

import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import type { Server } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import puppeteer, { type Browser, type Page } from "puppeteer-core";
import type { DemoRequest, DemoResult } from "./app.js";

export const CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

export interface Chromium {
  browser: Browser;
  /** Peak resident memory (VmHWM) of the renderer processes, in MiB: the page's memory. */
  rendererPeakMb(): number;
  close(): Promise<void>;
}

/** A headless Chromium with a fresh profile; close() also removes the profile. */
export async function launchChromium(): Promise<Chromium> {
  const profile = mkdtempSync(join(tmpdir(), "shadow-edge-chromium-"));
  const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    protocolTimeout: 900_000, // a slow generation on a busy CI machine is not a hung browser
    args: [...CHROMIUM_FLAGS, `--user-data-dir=${profile}`],
  });
  return {
    browser,
    rendererPeakMb: () => rendererPeakMb(profile),
    close: async () => {
      await browser.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

function rendererPeakMb(profile: string): number {
  let peak = 0;
  for (const pid of readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    try {
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, "utf8");
      if (!cmdline.includes(profile) || !cmdline.includes("--type=renderer")) continue;
      const hwm = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
      peak = Math.max(peak, hwm ? Number(hwm[1]) / 1024 : 0);
    } catch {
      // the process ended meanwhile
    }
  }
  return peak;
}

export function serverOrigin(server: Server): string {
  const address = server.address();
  return `http://127.0.0.1:${typeof address === "object" && address ? address.port : 0}`;
}

/** The demo page on a served bundle, with the page's errors (and failed requests) collected. */
export async function openDemo(browser: Browser, origin: string, bundle: string): Promise<{ page: Page; errors: string[] }> {
  const page = await browser.newPage();
  const errors: string[] = [];
  page.on("pageerror", (error) => errors.push(String(error)));
  page.on("console", (message) => message.type() === "error" && errors.push(message.text()));
  page.on("response", (response) => response.status() >= 400 && errors.push(`${response.status()} ${response.url()}`));
  await page.goto(`${origin}/demo/?bundle=/bundles/${bundle}/`);
  await page.waitForFunction(() => "demo" in window, { timeout: 30_000 });
  return { page, errors };
}

export function runInPage(page: Page, request: DemoRequest): Promise<DemoResult> {
  return page.evaluate((r) => window.demo.run(r), request);
}
