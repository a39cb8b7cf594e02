// What the interop test files share: deadlines, and the wsrpc fixture server
// (examples/interop_server.rs) started before a file's tests and killed after them.
//
// The server binary is $WSRPC_INTEROP_SERVER, or ../target/debug/examples/interop_server
// relative to this directory. Every wait has a deadline, so a hang fails the test.

import { after, afterEach, before } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SERVER_BIN = path.resolve(
  process.env.WSRPC_INTEROP_SERVER ??
    path.join(HERE, "../target/debug/examples/interop_server"),
);

/** How long any single wait may take before the test fails. */
export const DEADLINE_MS = 5000;

/** `promise`, or a rejection naming `what` once `ms` pass. */
export function within(promise, what, ms = DEADLINE_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)),
      ms,
    );
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** The value `promise` rejects with; fails if it resolves. */
export async function rejection(promise) {
  let result;
  try {
    result = await promise;
  } catch (error) {
    return error;
  }
  assert.fail(`expected an error, got the result ${JSON.stringify(result)}`);
}


/** A Client call that fails with "reply timeout" if no reply comes in time. */
export const call = (client, method, params) => client.call(method, params, DEADLINE_MS);

/** The arguments of the next `event` the Client hands to its listeners. */
export function nextEvent(client, event) {
  return within(
    new Promise((resolve) => client.once(event, (...args) => resolve(args))),
    `event ${event}`,
  );
}

/** Have the fixture emit `event` with `params`; the arguments the Client's listeners get. */
export async function emitted(client, params, event = "newsUpdate") {
  const got = nextEvent(client, event);
  assert.equal(await call(client, "emit", [event, params]), true);
  return got;
}
/**
 * Run the fixture server for the calling test file. Returns `{ url(pathAndQuery),
 * track(client) }`: `url` is valid once the file's tests run, and tracked clients and
 * sockets are closed after each test.
 */
export function fixtureServer() {
  let server; // the child process
  let port;
  let clients = [];

  before(async () => {
    if (!existsSync(SERVER_BIN)) {
      throw new Error(
        `no server binary at ${SERVER_BIN}: run \`cargo build --example interop_server\` ` +
          "or set WSRPC_INTEROP_SERVER",
      );
    }
    server = spawn(SERVER_BIN, ["--port", "0"], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    const lines = createInterface({ input: server.stdout });
    const first = await within(
      new Promise((resolve, reject) => {
        lines.once("line", resolve);
        server.once("error", reject);
        server.once("exit", (code, signal) =>
          reject(new Error(`the server exited (${code ?? signal}) before listening`)),
        );
      }),
      "the server's first stdout line",
    );
    const match = /^listening on 127\.0\.0\.1:(\d+)$/.exec(first);
    assert.ok(match, `unexpected first line from the server: ${JSON.stringify(first)}`);
    port = Number(match[1]);
    assert.ok(port > 0, "the server reported port 0");
  });

  afterEach(() => {
    for (const c of clients) c.close();
    clients = [];
  });

  after(async () => {
    if (!server || server.exitCode !== null || server.signalCode !== null) return;
    const exited = new Promise((resolve) => server.once("exit", resolve));
    server.kill("SIGKILL");
    await within(exited, "the server to exit");
  });

  const fixture = {
    url: (pathAndQuery = "/") => `ws://127.0.0.1:${port}${pathAndQuery}`,
    /** Send the server `signal`; resolves with its exit `{code, signal}`. */
    terminate: (signal) => {
      const exited = new Promise((resolve) =>
        server.once("exit", (code, sig) => resolve({ code, signal: sig })),
      );
      server.kill(signal);
      return exited;
    },
    track: (client) => {
      clients.push(client);
      return client;
    },
    /** A `RawSocket` (or subclass `Kind`) on `pathAndQuery`, offering `protocols`. */
    openRaw: async (pathAndQuery = "/", protocols = undefined, Kind = RawSocket) => {
      const url = fixture.url(pathAndQuery);
      const ws = protocols === undefined ? new WebSocket(url) : new WebSocket(url, protocols);
      const raw = fixture.track(new Kind(ws));
      await within(
        new Promise((resolve, reject) => {
          ws.once("open", resolve);
          ws.once("error", reject);
        }),
        "a raw socket to open",
      );
      return raw;
    },
  };
  return fixture;
}

/** A raw `ws` socket that queues what it receives, for frames a Client cannot send. */
export class RawSocket {
  constructor(ws) {
    this.ws = ws;
    this.inbox = [];
    this.waiters = [];
    this.closed = null;
    ws.on("message", (data, isBinary) => {
      const message = { data: Buffer.from(data), isBinary };
      const waiter = this.waiters.shift();
      if (waiter) waiter.resolve(message);
      else this.inbox.push(message);
    });
    ws.on("close", (code) => {
      this.closed = code;
      for (const waiter of this.waiters.splice(0)) {
        waiter.reject(new Error(`the socket closed (${code})`));
      }
    });
  }

  /** Send `value` as JSON text, in a text frame. */
  sendJson(value) {
    this.ws.send(typeof value === "string" ? value : JSON.stringify(value), {
      binary: false,
    });
  }

  /** The next message as it came: `{data: Buffer, isBinary}`. */
  async nextFrame(what) {
    if (this.inbox.length) return this.inbox.shift();
    if (this.closed !== null) throw new Error(`the socket closed (${this.closed})`);
    let waiter;
    const arrived = new Promise((resolve, reject) => {
      waiter = { resolve, reject };
      this.waiters.push(waiter);
    });
    try {
      return await within(arrived, what);
    } finally {
      const i = this.waiters.indexOf(waiter);
      if (i >= 0) this.waiters.splice(i, 1);
    }
  }

  /** The next message, which must be a JSON text frame, parsed. */
  async nextJson(what) {
    const { data, isBinary } = await this.nextFrame(what);
    assert.equal(isBinary, false, `${what}: expected a text frame, got ${data.toString("hex")}`);
    return JSON.parse(data.toString());
  }

  close() {
    this.ws.close();
  }
}
