/** A tiny static server for the demo page: the js/ folder at /, bundle folders at /bundles/NAME/,
 * with the headers that make the page cross-origin isolated (COOP same-origin + COEP
 * require-corp), which onnxruntime-web needs for wasm threads (SharedArrayBuffer). GET and HEAD
 * only, single byte ranges (the web host fetches only the weights a mode reads); paths cannot
 * leave their folder.
 *
 *     node dist/demo/server.js --bundle robot=work/robot-bundle [--port 8080]   # then open /demo/
 */

import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import { extname, join, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".wasm": "application/wasm",
  ".map": "application/json",
};

export const ISOLATION_HEADERS = {
  "Cross-Origin-Opener-Policy": "same-origin",
  "Cross-Origin-Embedder-Policy": "require-corp",
  "Cross-Origin-Resource-Policy": "same-origin",
};

const JS_ROOT = resolve(fileURLToPath(new URL("../..", import.meta.url)));

/** The file a URL path names, or null when it is outside the served folders. */
function locate(path: string, bundles: Record<string, string>): string | null {
  const parts = decodeURIComponent(path).split("/").filter(Boolean);
  if (parts.some((p) => p === ".." || p.includes("\\"))) return null;
  let root = JS_ROOT;
  if (parts[0] === "bundles") {
    const bundle = bundles[parts[1] ?? ""];
    if (!bundle) return null;
    root = resolve(bundle);
    parts.splice(0, 2);
  }
  const file = join(root, ...parts);
  return file === root || file.startsWith(root + sep) ? file : null;
}

/** [first, last] byte of a single-range header ("bytes=a-b", "a-", "-n"), null without one. */
function byteRange(header: string | undefined, size: number): [number, number] | null | "invalid" {
  if (!header) return null;
  const match = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!match || (!match[1] && !match[2])) return "invalid";
  const [start, end] = match[1] ? [Number(match[1]), match[2] ? Math.min(Number(match[2]), size - 1) : size - 1] : [Math.max(0, size - Number(match[2])), size - 1];
  return start <= end && start < size ? [start, end] : "invalid";
}

export function startServer(bundles: Record<string, string>, port = 0, host = "127.0.0.1"): Promise<Server> {
  const server = createServer(async (request, response) => {
    const url = new URL(request.url ?? "/", "http://localhost");
    if (request.method !== "GET" && request.method !== "HEAD") {
      response.writeHead(405, ISOLATION_HEADERS).end();
      return;
    }
    let file = locate(url.pathname, bundles);
    const info = file ? await stat(file).catch(() => null) : null;
    if (file && info?.isDirectory()) file = join(file, "index.html");
    const size = file ? await stat(file).then((s) => (s.isFile() ? s.size : -1), () => -1) : -1;
    if (!file || size < 0) {
      response.writeHead(404, { ...ISOLATION_HEADERS, "Content-Type": "text/plain" }).end("not found\n");
      return;
    }
    const headers = {
      ...ISOLATION_HEADERS,
      "Content-Type": TYPES[extname(file)] ?? "application/octet-stream",
      "Accept-Ranges": "bytes",
      "Cache-Control": "no-cache",
    };
    const range = byteRange(request.headers.range, size);
    if (range === "invalid") {
      response.writeHead(416, { ...headers, "Content-Range": `bytes */${size}` }).end();
      return;
    }
    const [start, end] = range ?? [0, size - 1];
    response.writeHead(range ? 206 : 200, {
      ...headers,
      "Content-Length": end - start + 1,
      ...(range ? { "Content-Range": `bytes ${start}-${end}/${size}` } : {}),
    });
    if (request.method === "HEAD" || end < start) response.end();
    else createReadStream(file, { start, end }).pipe(response);
  });
  return new Promise((ok, fail) => {
    server.once("error", fail);
    server.listen(port, host, () => ok(server));
  });
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const bundles: Record<string, string> = {};
  let port = 8080;
  const args = process.argv.slice(2);
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--port") port = Number(args[++i]);
    else if (args[i] === "--bundle") {
      const [name, path] = (args[++i] ?? "").split("=");
      if (!name || !path) throw new Error("--bundle takes NAME=PATH");
      bundles[name] = path;
    } else throw new Error(`unknown argument ${args[i]} (usage: server.js --bundle NAME=PATH [--port N])`);
  }
  const server = await startServer(bundles, port);
  const address = server.address();
  const listening = typeof address === "object" && address ? address.port : port;
  console.log(`http://127.0.0.1:${listening}/demo/?bundle=/bundles/${Object.keys(bundles)[0] ?? "NAME"}/`);
}
