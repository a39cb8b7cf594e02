// SIGTERM stops the fixture server (examples/interop_server.rs) even while a handler
// it runs never returns: `Server::close` abandons such handlers after its deadline.

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { call, fixtureServer, within } from "./harness.mjs";
import { Client } from "rpc-websockets";

const fixture = fixtureServer();

describe("shutdown", () => {
  it("SIGTERM ends the server while a handler sleeps for 2^64-1 ms", async () => {
    const raw = await fixture.openRaw("/");
    // The largest u64: JavaScript numbers cannot write it, the raw text can.
    raw.sendJson('{"jsonrpc":"2.0","method":"sleep","params":[18446744073709551615],"id":1}');
    // The server still serves (the sleeping handler's connection reads on elsewhere).
    const client = fixture.track(new Client(fixture.url("/")));
    await within(new Promise((resolve) => client.once("open", resolve)), "a client to open");
    assert.equal(await call(client, "sum", [2, 3]), 5);
    const exit = await within(fixture.terminate("SIGTERM"), "the server to exit", 10000);
    assert.deepEqual(exit, { code: 0, signal: null });
  });
});
