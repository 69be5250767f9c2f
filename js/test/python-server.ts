/** `shadow-edge serve` (the Python server, SHADOW_EDGE_CLI) on a free port, for the remote tests. */

import { spawn } from "node:child_process";
import { createServer } from "node:net";

export interface PythonServer {
  url: string;
  stop(): void;
}

export async function startPythonServer(bundle: string, extra: string[] = []): Promise<PythonServer> {
  const cli = process.env.SHADOW_EDGE_CLI;
  if (!cli) throw new Error("set SHADOW_EDGE_CLI to a shadow-edge executable with the serve extra");
  const port = await freePort();
  const server = spawn(cli, ["serve", bundle, "--port", String(port), "--threads", "1", ...extra], { stdio: "ignore" });
  const url = `http://127.0.0.1:${port}`;
  await waitFor(`${url}/health`, 60_000);
  return { url, stop: () => server.kill() };
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const address = probe.address();
      probe.close(() => resolve(typeof address === "object" && address ? address.port : 0));
    });
  });
}

async function waitFor(url: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      if ((await fetch(url)).ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`${url} did not answer within ${timeoutMs} ms`);
}
