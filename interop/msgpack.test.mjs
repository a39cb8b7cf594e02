// Interop for the MessagePack dialect (PROTOCOL.md, "MessagePack dialect"): the
// rpc-websockets 10.0.1 client with a MessagePack data pack, and raw `ws` sockets
// speaking @msgpack/msgpack, against the wsrpc fixture server, examples/interop_server.rs.
//
//   cargo build --example interop_server && (cd interop && node --test)
//
// The fixture server and the deadlines come from ./harness.mjs.

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  DEADLINE_MS,
  RawSocket,
  call,
  emitted,
  fixtureServer,
  nextEvent,
  rejection,
  within,
} from "./harness.mjs";
import { Decoder, encode } from "@msgpack/msgpack";
import { CommonClient, WebSocket as rpcWebSocketFactory } from "rpc-websockets";

/**
 * Decodes one MessagePack value: 64-bit integers as numbers, and maps as plain objects
 * whose keys must be strings (the dialect's maps have string keys only; the library's
 * default would also let number keys through).
 */
const decoder = new Decoder({
  useBigInt64: false,
  mapKeyConverter: (key) => {
    if (typeof key !== "string") {
      throw new Error(`a map key that is not a string: ${String(key)} (${typeof key})`);
    }
    return key;
  },
});
const unpack = (bytes) => decoder.decode(bytes);
const hex = (bytes) => Buffer.from(bytes).toString("hex");

const server = fixtureServer();

// ---------------------------------------------------------------------------------------
// The rpc-websockets client with a MessagePack data pack.
//
// rpc-websockets 10.0.1's `Client` takes no data pack: its constructor is
// (address, options, generate_request_id) and passes nothing more to its base class.
// The base class it exports, `CommonClient`, takes one as its fifth argument (typed
// `DataPack<object, string>`, but the value is handed to `ws.send` untouched, so a
// Uint8Array goes out as a binary frame). `Client` is `CommonClient` with the exported
// `WebSocket` factory, so that is what is built here, plus the data pack.
//
// On Node, `ws` hands binary frames to the client as Buffers (its binaryType is
// "nodebuffer"), which reach `decode` as they are; only ArrayBuffers are turned into
// strings first. A text frame reaching `decode` means the server sent JSON where
// MessagePack was due: it is recorded and checked, since the client would silently
// drop a message its data pack cannot decode.

class MsgpackDataPack {
  constructor() {
    this.textFrames = [];
  }

  encode(value) {
    return encode(value);
  }

  decode(data) {
    if (typeof data === "string") {
      this.textFrames.push(data);
      throw new Error(`a text frame where MessagePack was expected: ${data}`);
    }
    return unpack(data);
  }
}

/** A connected rpc-websockets client speaking MessagePack on `pathAndQuery`. */
async function connectMsgpack(pathAndQuery = "/") {
  const pack = new MsgpackDataPack();
  const client = new CommonClient(
    rpcWebSocketFactory,
    server.url(pathAndQuery),
    { autoconnect: true, reconnect: false },
    undefined,
    pack,
  );
  server.track(client);
  await within(
    new Promise((resolve, reject) => {
      client.once("open", resolve);
      client.once("error", reject);
      client.once("close", (code) => reject(new Error(`closed (${code}) before opening`)));
    }),
    `the client to connect to ${pathAndQuery}`,
  );
  return { client, pack };
}

describe("the rpc-websockets client with a MessagePack data pack", () => {
  it("calls, an error, a notification, and events, all in MessagePack", async () => {
    // No declared codec: the first frame (a binary call) settles it.
    const { client: c, pack } = await connectMsgpack();
    assert.equal(await call(c, "sum", [5, 3]), 8);
    assert.equal(await call(c, "sum", [1.5, 2.25]), 3.75);
    assert.equal(await call(c, "greet", { name: "msgpack" }), "Hello, msgpack!");
    assert.equal(await call(c, "subtract", { subtrahend: 23, minuend: 42 }), 19);
    // The client sends `params: nil` for a call without params: absent, as in JSON.
    assert.equal(await call(c, "update"), null);

    const e = await rejection(call(c, "fail"));
    assert.deepEqual(e, {
      code: -32050,
      message: "Server error",
      data: "Server error details",
    });
    assert.deepEqual(await rejection(call(c, "noSuchMethod", [])), {
      code: -32601,
      message: "Method not found",
    });

    assert.deepEqual(await within(c.subscribe("newsUpdate"), "subscribe"), {
      newsUpdate: "ok",
    });
    assert.deepEqual(await emitted(c, { headline: "x", n: 1 }), [{ headline: "x", n: 1 }]);

    assert.deepEqual(await emitted(c, [1, "two", { three: 3 }]), [1, "two", { three: 3 }]);

    // A notification (no id) runs the method too.
    const got = nextEvent(c, "newsUpdate");
    await within(c.notify("emit", ["newsUpdate", { via: "notify" }]), "notify");
    assert.deepEqual(await got, [{ via: "notify" }]);

    assert.deepEqual(pack.textFrames, [], "the server sent text frames");
  });

  it("?encoding=msgpack and the /chat namespace", async () => {
    const { client: c, pack } = await connectMsgpack("/chat?encoding=msgpack");
    assert.equal(await call(c, "sum", [20, 22]), 42);
    assert.deepEqual(await within(c.subscribe("chatMessage"), "subscribe"), {
      chatMessage: "ok",
    });
    const got = nextEvent(c, "chatMessage");
    // Emitted from the root namespace into /chat.
    const { client: root } = await connectMsgpack();
    assert.equal(await call(root, "emit", ["chatMessage", { text: "hi" }, "/chat"]), true);
    assert.deepEqual(await got, [{ text: "hi" }]);
    assert.deepEqual(pack.textFrames, [], "the server sent text frames");
  });
});

// ---------------------------------------------------------------------------------------
// Raw sockets.

/** The harness's raw socket, speaking MessagePack as well. */
class Raw extends RawSocket {
  static open(pathAndQuery = "/", protocols = undefined) {
    return server.openRaw(pathAndQuery, protocols, Raw);
  }

  /** Send `value` MessagePack-encoded, in a binary frame (bytes go as they are). */
  sendMsgpack(value) {
    const bytes = value instanceof Uint8Array ? value : encode(value);
    this.ws.send(bytes, { binary: true });
  }

  /** The next message, which must be a binary MessagePack frame, decoded. */
  async nextMsgpack(what) {
    const { data, isBinary } = await this.nextFrame(what);
    assert.equal(
      isBinary,
      true,
      `${what}: expected a binary frame, got the text ${JSON.stringify(data.toString())}`,
    );
    return unpack(data);
  }
}

describe("raw MessagePack frames", () => {
  it("?encoding=msgpack: a call without jsonrpc gets the captured reply bytes", async () => {
    const raw = await Raw.open("/?encoding=msgpack");
    raw.sendMsgpack({ method: "sum", params: [5, 3], id: 1 });
    const { data, isBinary } = await raw.nextFrame("the reply to sum");
    assert.equal(isBinary, true, `expected a binary frame, got ${data.toString()}`);
    assert.deepEqual(unpack(data), { result: 8, id: 1 });
    assert.equal(hex(data), "82a6726573756c7408a2696401");

    // The request bytes of PROTOCOL.md, as captured, get the same answer.
    raw.sendMsgpack(Buffer.from("83a66d6574686f64a373756da6706172616d73920503a2696401", "hex"));
    const again = await raw.nextFrame("the reply to the captured request");
    assert.equal(hex(again.data), "82a6726573756c7408a2696401");

    // With jsonrpc present (it must then be "2.0"), string ids, floats.
    raw.sendMsgpack({ jsonrpc: "2.0", method: "sum", params: [1.5, 2.25], id: "f" });
    assert.deepEqual(await raw.nextMsgpack("the reply to the float sum"), {
      result: 3.75,
      id: "f",
    });
    raw.sendMsgpack({ method: "greet", params: { name: "héllo ✓" }, id: 3 });
    assert.deepEqual(await raw.nextMsgpack("the reply to greet"), {
      result: "Hello, héllo ✓!",
      id: 3,
    });
  });

  it("errors: an unknown method, a structured error, bad params, bad MessagePack", async () => {
    const raw = await Raw.open("/?encoding=msgpack");
    raw.sendMsgpack({ method: "noSuchMethod", params: [], id: 2 });
    assert.deepEqual(await raw.nextMsgpack("the reply to noSuchMethod"), {
      error: { code: -32601, message: "Method not found" },
      id: 2,
    });

    raw.sendMsgpack({ method: "fail", id: 3 });
    assert.deepEqual(await raw.nextMsgpack("the reply to fail"), {
      error: { code: -32050, message: "Server error", data: "Server error details" },
      id: 3,
    });

    raw.sendMsgpack({ method: "sum", params: ["a", "b"], id: 4 });
    const bad = await raw.nextMsgpack("the reply to sum with strings");
    assert.equal(bad.id, 4);
    assert.equal(bad.error?.code, -32602, JSON.stringify(bad));

    // 0xc1 is never valid MessagePack.
    raw.sendMsgpack(Uint8Array.of(0xc1));
    const parse = await raw.nextMsgpack("the reply to a 0xc1 frame");
    assert.equal(parse.id, null, JSON.stringify(parse));
    assert.equal(parse.error?.code, -32700, JSON.stringify(parse));
    assert.equal(parse.error?.message, "Parse error");
    assert.match(String(parse.error?.data), /0xc1/, JSON.stringify(parse));

    // The connection goes on.
    raw.sendMsgpack({ method: "sum", params: [2, 2], id: 5 });
    assert.deepEqual(await raw.nextMsgpack("the reply after the errors"), {
      result: 4,
      id: 5,
    });
  });

  it("values JSON cannot carry are -32602, naming what they are", async () => {
    const raw = await Raw.open("/?encoding=msgpack");
    // A Uint8Array is MessagePack bin.
    raw.sendMsgpack({ method: "echo", params: [Uint8Array.of(1, 2, 3)], id: 6 });
    // The refusal is named in `data`; `message` stays the standard "Invalid params".
    assert.deepEqual(await raw.nextMsgpack("the reply to echo with binary params"), {
      error: {
        code: -32602,
        message: "Invalid params",
        data: "params hold binary data, which JSON cannot carry",
      },
      id: 6,
    });

    // A Date is the timestamp extension type (-1).
    raw.sendMsgpack({ method: "echo", params: [new Date(0)], id: 7 });
    assert.deepEqual(await raw.nextMsgpack("the reply to echo with an extension"), {
      error: {
        code: -32602,
        message: "Invalid params",
        data: "params hold an extension type, which JSON cannot carry",
      },
      id: 7,
    });

    // A map with an integer key: {"method":"echo","params":[{1:7}],"id":8}, by hand,
    // since @msgpack/msgpack writes only string keys.
    raw.sendMsgpack(
      Buffer.concat([
        Uint8Array.of(0x83),
        encode("method"),
        encode("echo"),
        encode("params"),
        Uint8Array.of(0x91, 0x81, 0x01, 0x07),
        encode("id"),
        encode(8),
      ]),
    );
    const key = await raw.nextMsgpack("the reply to echo with an integer map key");
    assert.equal(key.id, 8, JSON.stringify(key));
    assert.equal(key.error?.code, -32602, JSON.stringify(key));
    assert.equal(key.error?.message, "Invalid params", JSON.stringify(key));
    assert.match(String(key.error?.data), /map key that is not a string/, JSON.stringify(key));

    // What JSON can carry comes back as it went.
    const value = { a: [1, -2, 2 ** 40, -(2 ** 40), 0.1, true, false, null], s: "✓", o: {} };
    raw.sendMsgpack({ method: "echo", params: [value], id: 9 });
    assert.deepEqual(await raw.nextMsgpack("the reply to echo"), { result: [value], id: 9 });
  });

  it("notifications get no reply and run their method", async () => {
    const raw = await Raw.open("/?encoding=msgpack");
    raw.sendMsgpack({ method: "rpc.on", params: ["newsUpdate"], id: 1 });
    assert.deepEqual(await raw.nextMsgpack("the reply to rpc.on"), {
      result: { newsUpdate: "ok" },
      id: 1,
    });

    raw.sendMsgpack({ method: "sum", params: [1, 1] });
    raw.sendMsgpack({ method: "update", params: null }); // nil params are absent
    raw.sendMsgpack({ method: "emit", params: ["newsUpdate", { via: "notification" }] });
    assert.deepEqual(await raw.nextMsgpack("the event the notification emitted"), {
      notification: "newsUpdate",
      params: { via: "notification" },
    });
    raw.sendMsgpack({ method: "sum", params: [3, 4], id: 9 });
    assert.deepEqual(await raw.nextMsgpack("the reply to id 9"), { result: 7, id: 9 });

    // As in rpc-websockets (PROTOCOL.md): errors found before dispatch, such as an
    // unknown method, are sent even for a notification, with id null.
    raw.sendMsgpack({ method: "noSuchMethod", params: [] });
    assert.deepEqual(await raw.nextMsgpack("the reply to an unknown notification"), {
      error: { code: -32601, message: "Method not found" },
      id: null,
    });
  });

  it("rpc.on subscribes; an event emitted by a call arrives as MessagePack", async () => {
    const raw = await Raw.open("/?encoding=msgpack");
    raw.sendMsgpack({ method: "rpc.on", params: ["newsUpdate", "noSuchEvent"], id: 1 });
    assert.deepEqual(await raw.nextMsgpack("the reply to rpc.on"), {
      result: { newsUpdate: "ok", noSuchEvent: "provided event invalid" },
      id: 1,
    });

    // Emitted by another MessagePack connection, so the event is the only frame here.
    const emitter = await Raw.open("/?encoding=msgpack");
    emitter.sendMsgpack({ method: "emit", params: ["newsUpdate", { a: 1 }], id: 2 });
    assert.deepEqual(await emitter.nextMsgpack("the reply to emit"), { result: true, id: 2 });
    const event = await raw.nextFrame("the newsUpdate event");
    assert.equal(event.isBinary, true, `expected a binary event, got ${event.data}`);
    assert.deepEqual(unpack(event.data), { notification: "newsUpdate", params: { a: 1 } });
    // PROTOCOL.md's captured event, but for the event's name.
    assert.equal(
      hex(event.data),
      "82ac6e6f74696669636174696f6e" + hex(encode("newsUpdate")) + "a6706172616d7381a16101",
    );

    // A scalar goes as [scalar]; array params as they are.
    emitter.sendMsgpack({ method: "emit", params: ["newsUpdate", 5], id: 3 });
    assert.deepEqual(await emitter.nextMsgpack("the reply to emit 5"), { result: true, id: 3 });
    assert.deepEqual(await raw.nextMsgpack("the event with a scalar"), {
      notification: "newsUpdate",
      params: [5],
    });

    raw.sendMsgpack({ method: "rpc.off", params: ["newsUpdate"], id: 4 });
    assert.deepEqual(await raw.nextMsgpack("the reply to rpc.off"), {
      result: { newsUpdate: "ok" },
      id: 4,
    });
  });

  it('the subprotocol "msgpack" is accepted and sets the events\' codec', async () => {
    const raw = await Raw.open("/", ["msgpack"]);
    assert.equal(raw.ws.protocol, "msgpack");

    // Replies follow the request's codec: a JSON request on this connection gets JSON.
    raw.sendJson({ jsonrpc: "2.0", method: "rpc.on", params: ["newMessage"], id: 1 });
    assert.deepEqual(await raw.nextJson("the reply to a JSON rpc.on"), {
      jsonrpc: "2.0",
      result: { newMessage: "ok" },
      id: 1,
    });
    raw.sendMsgpack({ method: "sum", params: [40, 2], id: 2 });
    assert.deepEqual(await raw.nextMsgpack("the reply to a MessagePack sum"), {
      result: 42,
      id: 2,
    });

    // Events follow the connection's codec, the declared one, though the first frame
    // was JSON.
    const emitter = await Raw.open();
    emitter.sendJson({
      jsonrpc: "2.0",
      method: "emit",
      params: ["newMessage", { from: "json" }],
      id: 3,
    });
    assert.deepEqual(await emitter.nextJson("the reply to emit"), {
      jsonrpc: "2.0",
      result: true,
      id: 3,
    });
    assert.deepEqual(await raw.nextMsgpack("the newMessage event"), {
      notification: "newMessage",
      params: { from: "json" },
    });
  });

  it("a JSON and a MessagePack subscriber each get the event in their own codec", async () => {
    const json = await Raw.open();
    const mp = await Raw.open("/?encoding=msgpack");
    json.sendJson({ jsonrpc: "2.0", method: "rpc.on", params: ["newsUpdate"], id: 1 });
    assert.deepEqual(await json.nextJson("the JSON client's rpc.on reply"), {
      jsonrpc: "2.0",
      result: { newsUpdate: "ok" },
      id: 1,
    });
    mp.sendMsgpack({ method: "rpc.on", params: ["newsUpdate"], id: 1 });
    assert.deepEqual(await mp.nextMsgpack("the MessagePack client's rpc.on reply"), {
      result: { newsUpdate: "ok" },
      id: 1,
    });

    const params = {
      text: "héllo ✓",
      n: [0, -1, 255, 65536, 2 ** 40, -(2 ** 40), 0.1, 1e300],
      flags: [true, false, null],
      nested: { deep: { deeper: [[], {}] } },
    };
    // A JSON notification: no reply, so the event is the next frame on both sockets.
    json.sendJson({ jsonrpc: "2.0", method: "emit", params: ["newsUpdate", params] });
    const [viaJson, viaMsgpack] = await Promise.all([
      json.nextJson("the event on the JSON client"),
      mp.nextMsgpack("the event on the MessagePack client"),
    ]);
    assert.deepEqual(viaJson, { notification: "newsUpdate", params });
    assert.deepEqual(viaMsgpack, { notification: "newsUpdate", params });
    assert.deepEqual(viaMsgpack.params, viaJson.params);

    // And the other way round: emitted from the MessagePack client.
    mp.sendMsgpack({ method: "emit", params: ["newsUpdate", [1, "two"]] });
    const [back, backMp] = await Promise.all([
      json.nextJson("the second event on the JSON client"),
      mp.nextMsgpack("the second event on the MessagePack client"),
    ]);
    assert.deepEqual(back, { notification: "newsUpdate", params: [1, "two"] });
    assert.deepEqual(backMp, back);
  });
});
