// Interop: the real rpc-websockets 10.0.1 Client (and a raw `ws` socket for what the
// Client cannot send) against the wsrpc fixture server, examples/interop_server.rs.
//
//   cargo build --example interop_server && (cd interop && node --test)
//
// The fixture server and the deadlines come from ./harness.mjs.

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { DEADLINE_MS, call, emitted, fixtureServer, nextEvent, rejection, within } from "./harness.mjs";
import { Client } from "rpc-websockets";

const server = fixtureServer();

/** A connected rpc-websockets Client on `pathAndQuery` (no reconnecting). */
async function connect(pathAndQuery = "/") {
  const client = new Client(server.url(pathAndQuery), {
    reconnect: false,
  });
  server.track(client);
  await within(
    new Promise((resolve, reject) => {
      client.once("open", resolve);
      client.once("error", reject);
      client.once("close", (code) => reject(new Error(`closed (${code}) before opening`)));
    }),
    `the Client to connect to ${pathAndQuery}`,
  );
  return client;
}


describe("calls", () => {
  it("sum and greet", async () => {
    const c = await connect();
    assert.equal(await call(c, "sum", [5, 3]), 8);
    assert.equal(await call(c, "sum", [1.5, 2.25]), 3.75);
    assert.equal(await call(c, "greet", { name: "interop" }), "Hello, interop!");
  });

  it("subtract with array and with object params", async () => {
    const c = await connect();
    assert.equal(await call(c, "subtract", [42, 23]), 19);
    assert.equal(await call(c, "subtract", [23, 42]), -19);
    assert.equal(await call(c, "subtract", { subtrahend: 23, minuend: 42 }), 19);
  });

  it("echo with and without params", async () => {
    const c = await connect();
    const value = { nested: { list: [1, "two", null, true], n: -0.5 }, s: "ü ✓" };
    assert.deepEqual(await call(c, "echo", value), value);
    assert.deepEqual(await call(c, "echo", [1, [2, [3]]]), [1, [2, [3]]]);
    // The Client leaves `params` out when it has none; the handler sees null.
    assert.equal(await call(c, "echo"), null);
  });

  it("a handler that returns nothing resolves to null", async () => {
    const c = await connect();
    assert.equal(await call(c, "update", [1, 2, 3]), null);
  });

  it("whoami returns the socket_id given in the URL", async () => {
    const named = await connect("/?socket_id=interop-42");
    assert.equal(await call(named, "whoami"), "interop-42");
    // Its handler takes no params: "no arguments" in the forms callers send it.
    assert.equal(await call(named, "whoami", []), "interop-42");
    assert.equal(await call(named, "whoami", {}), "interop-42");
    const a = await connect();
    const b = await connect();
    const idA = await call(a, "whoami");
    const idB = await call(b, "whoami");
    assert.equal(typeof idA, "string");
    assert.ok(idA.length > 0, "an empty socket id");
    assert.notEqual(idA, idB, "two connections got the same socket id");
  });
});

describe("notifications and events", () => {
  it("notify runs the method: notify emit, receive the event", async () => {
    const c = await connect();
    assert.deepEqual(await within(c.subscribe("newsUpdate"), "subscribe"), {
      newsUpdate: "ok",
    });
    const got = nextEvent(c, "newsUpdate");
    await within(c.notify("emit", ["newsUpdate", { via: "notify" }]), "notify");
    assert.deepEqual(await got, [{ via: "notify" }]);
  });

  it("object params reach the listener as one argument, arrays spread", async () => {
    const c = await connect();
    assert.deepEqual(await within(c.subscribe("newsUpdate"), "subscribe"), {
      newsUpdate: "ok",
    });

    assert.deepEqual(await emitted(c, { headline: "x", n: 1 }), [{ headline: "x", n: 1 }]);

    assert.deepEqual(await emitted(c, [1, "two", { three: 3 }]), [1, "two", { three: 3 }]);

    // A scalar is sent as [scalar]; no value as [], which the Client emits with no
    // arguments.
    assert.deepEqual(await emitted(c, 5), [5]);

    const got = nextEvent(c, "newsUpdate");
    assert.equal(await call(c, "emit", ["newsUpdate"]), true);
    assert.deepEqual(await got, []);
  });

  it("subscribe answers per event; unsubscribed events stop arriving", async () => {
    const c = await connect();
    assert.deepEqual(
      await within(c.subscribe(["newsUpdate", "newMessage", "noSuchEvent"]), "subscribe"),
      { newsUpdate: "ok", newMessage: "ok", noSuchEvent: "provided event invalid" },
    );
    assert.deepEqual(await within(c.subscribe("newsUpdate"), "subscribe again"), {
      newsUpdate: "socket has already been subscribed to event",
    });
    assert.deepEqual(await within(c.unsubscribe("newsUpdate"), "unsubscribe"), {
      newsUpdate: "ok",
    });
    assert.deepEqual(await within(c.unsubscribe("newsUpdate"), "unsubscribe again"), {
      newsUpdate: "not subscribed",
    });

    const news = [];
    c.on("newsUpdate", (...args) => news.push(args));
    const marker = nextEvent(c, "newMessage");
    // Events reach a connection in the order they are emitted: once the later
    // newMessage is here, a newsUpdate sent to this connection would be here too.
    assert.equal(await call(c, "emit", ["newsUpdate", { stale: true }]), true);
    assert.equal(await call(c, "emit", ["newMessage", { marker: true }]), true);
    assert.deepEqual(await marker, [{ marker: true }]);
    assert.deepEqual(news, [], "an event arrived after unsubscribing");
  });
});

describe("namespaces", () => {
  it("/chat has its own methods", async () => {
    const chat = await connect("/chat");
    assert.equal(await call(chat, "sum", [20, 22]), 42);
    const e = await rejection(call(chat, "greet", { name: "x" }));
    assert.deepEqual(e, { code: -32601, message: "Method not found" });
    assert.deepEqual((await call(chat, "__listMethods")).toSorted(), [
      "__listMethods",
      "sum",
    ]);
  });

  it("an event emitted in /chat does not reach a / subscriber of the same name", async () => {
    const root = await connect("/");
    const chat = await connect("/chat");
    assert.deepEqual(await within(root.subscribe("newMessage"), "subscribe on /"), {
      newMessage: "ok",
    });
    assert.deepEqual(await within(chat.subscribe("newMessage"), "subscribe on /chat"), {
      newMessage: "ok",
    });
    const rootSeen = [];
    root.on("newMessage", (...args) => rootSeen.push(args));

    const inChat = nextEvent(chat, "newMessage");
    assert.equal(await call(root, "emit", ["newMessage", { text: "in chat" }, "/chat"]), true);
    assert.deepEqual(await inChat, [{ text: "in chat" }]);

    // Both emits go through the server in order: a leak into / would arrive before this.
    const inRoot = nextEvent(root, "newMessage");
    assert.equal(await call(root, "emit", ["newMessage", { text: "in root" }, "/"]), true);
    assert.deepEqual(await inRoot, [{ text: "in root" }]);
    assert.deepEqual(rootSeen, [[{ text: "in root" }]]);
  });
});

describe("login and protected methods and events", () => {
  it("cryptic and secretFeed are forbidden until login, open after", async () => {
    const c = await connect();
    assert.deepEqual(await rejection(call(c, "cryptic")), {
      code: -32605,
      message: "Method forbidden",
    });
    assert.deepEqual(await rejection(within(c.subscribe("secretFeed"), "subscribe")), {
      code: -32606,
      message: "Event forbidden",
    });

    await assert.rejects(
      within(c.login({ username: "foo", password: "wrong" }), "a failed login"),
      /authentication failed/,
    );
    assert.deepEqual(await rejection(call(c, "cryptic")), {
      code: -32605,
      message: "Method forbidden",
    });

    assert.equal(await within(c.login({ username: "foo", password: "bar" }), "login"), true);
    assert.equal(await call(c, "cryptic"), "boohoo");
    assert.deepEqual(await within(c.subscribe("secretFeed"), "subscribe"), {
      secretFeed: "ok",
    });
    assert.deepEqual(await emitted(c, { code: 7 }, "secretFeed"), [{ code: 7 }]);

    // Login belongs to the connection.
    const other = await connect();
    assert.deepEqual(await rejection(call(other, "cryptic")), {
      code: -32605,
      message: "Method forbidden",
    });
  });

  it("listMethods names every method of the namespace", async () => {
    const c = await connect();
    const methods = await within(c.listMethods(), "listMethods");
    assert.deepEqual(methods.toSorted(), [
      "__listMethods",
      "cryptic",
      "echo",
      "emit",
      "fail",
      "greet",
      "panic",
      "rpc.login",
      "sleep",
      "subtract",
      "sum",
      "update",
      "whoami",
    ]);
  });
});

describe("errors", () => {
  it("a structured handler error keeps code, message and data", async () => {
    const c = await connect();
    assert.deepEqual(await rejection(call(c, "fail")), {
      code: -32050,
      message: "Server error",
      data: "Server error details",
    });
  });

  it("unknown method is -32601", async () => {
    const c = await connect();
    assert.deepEqual(await rejection(call(c, "noSuchMethod", [1])), {
      code: -32601,
      message: "Method not found",
    });
  });

  it("params the handler cannot take are -32602", async () => {
    const c = await connect();
    for (const [method, params] of [
      ["sum", ["a", "b"]],
      ["greet", { nom: "x" }],
      ["sleep", { ms: 1 }],
    ]) {
      const e = await rejection(call(c, method, params));
      assert.equal(e.code, -32602, `${method} ${JSON.stringify(params)}: ${JSON.stringify(e)}`);
      assert.equal(e.message, "Invalid params");
    }
  });

  it("a panicking handler is -32603 and the connection still works", async () => {
    const c = await connect();
    const e = await rejection(call(c, "panic"));
    assert.equal(e.code, -32603, JSON.stringify(e));
    assert.equal(e.message, "Internal error");
    assert.equal(await call(c, "sum", [2, 2]), 4);
    assert.equal(await call(c, "greet", { name: "after" }), "Hello, after!");
  });
});

describe("raw frames", () => {
  it("a batch is answered in order, without its notifications", async () => {
    const raw = await server.openRaw();
    raw.sendJson([
      { jsonrpc: "2.0", method: "sum", params: [1, 2], id: 1 },
      { jsonrpc: "2.0", method: "update", params: [0] },
      { jsonrpc: "2.0", method: "greet", params: { name: "batch" }, id: "two" },
      { jsonrpc: "2.0", method: "noSuchMethod", id: 3 },
      { jsonrpc: "2.0", method: "subtract", params: [10, 4], id: 4 },
    ]);
    assert.deepEqual(await raw.nextJson("the batch reply"), [
      { jsonrpc: "2.0", result: 3, id: 1 },
      { jsonrpc: "2.0", result: "Hello, batch!", id: "two" },
      { jsonrpc: "2.0", error: { code: -32601, message: "Method not found" }, id: 3 },
      { jsonrpc: "2.0", result: 6, id: 4 },
    ]);
  });

  it("a batch of notifications and a notification get no reply", async () => {
    const raw = await server.openRaw();
    raw.sendJson([
      { jsonrpc: "2.0", method: "update", params: [1] },
      { jsonrpc: "2.0", method: "sum", params: [1, 1] },
    ]);
    raw.sendJson({ jsonrpc: "2.0", method: "sum", params: [1, 1] });
    raw.sendJson({ jsonrpc: "2.0", method: "sum", params: [3, 4], id: 9 });
    assert.deepEqual(await raw.nextJson("the reply to id 9"), {
      jsonrpc: "2.0",
      result: 7,
      id: 9,
    });
  });

  it("an empty batch is -32600 Invalid array", async () => {
    const raw = await server.openRaw();
    raw.sendJson("[]");
    assert.deepEqual(await raw.nextJson("the reply to []"), {
      jsonrpc: "2.0",
      error: { code: -32600, message: "Invalid Request", data: "Invalid array" },
      id: null,
    });
  });

  it("id 0 is answered", async () => {
    const raw = await server.openRaw();
    raw.sendJson({ jsonrpc: "2.0", method: "sum", params: [2, 2], id: 0 });
    assert.deepEqual(await raw.nextJson("the reply to id 0"), {
      jsonrpc: "2.0",
      result: 4,
      id: 0,
    });
  });
});

describe("concurrency", () => {
  it("a slow call does not hold up a later call on the same connection", async () => {
    const c = await connect();
    const order = [];
    const slow = call(c, "sleep", [1500]).then((v) => {
      order.push("sleep");
      return v;
    });
    const fast = call(c, "sum", [1, 1]).then((v) => {
      order.push("sum");
      return v;
    });
    assert.equal(await fast, 2);
    assert.deepEqual(order, ["sum"], "sum waited for sleep");
    assert.equal(await slow, 1500);
    assert.deepEqual(order, ["sum", "sleep"]);
  });
});
