// The real rpc-websockets 10.0.1 Server with a small fixture, for the Rust client's
// interop tests (tests/interop_js_server.rs).
//
//   node interop/js_server.mjs
//
// Listens on 127.0.0.1 on a port the OS picks and prints `listening on 127.0.0.1:PORT`
// as its first stdout line. Later stdout lines are progress notes the tests may wait on:
// `sleep started MS` when a `sleep` call begins. Serves until killed.
//
// Every handler returns a value: rpc-websockets answers a handler that returns
// undefined with a reply that has no `result`, which clients reject as malformed.

import { Server } from "rpc-websockets";

// `--parent-stdin` (the benchmark): exit once standard input closes, so that a
// benchmark killed before it could stop this server leaves nothing behind.
if (process.argv.includes("--parent-stdin")) {
  process.stdin.on("end", () => process.exit(0));
  process.stdin.resume();
}

const server = new Server({ host: "127.0.0.1", port: 0 });

const sum = (params) => {
  if (!Array.isArray(params)) throw { code: -32602, message: "Invalid params" };
  return params.reduce((a, b) => a + b, 0);
};

// namespace "/"
server.register("sum", sum);
server.register("greet", (params) => `Hello, ${params.name}!`);
server.register("fail", () => {
  throw { code: -32050, message: "Server error", data: "Server error details" };
});
server.register("sleep", async ([ms]) => {
  console.log(`sleep started ${ms}`);
  await new Promise((resolve) => setTimeout(resolve, ms));
  return ms;
});
server.register("cryptic", () => "boohoo").protected();
// [event, params]: emit `event` to its subscribers. Arrays and objects go out as the
// event's params as they are (the Server sends a single object argument unwrapped).
server.register("emit", ([event, params]) => {
  if (params === undefined) server.emit(event);
  else server.emit(event, params);
  return true;
});
server.setAuth(
  (params) => params?.username === "foo" && params?.password === "bar",
);
server.event("newsUpdate");
server.event("secretFeed").protected();

// namespace "/chat"
server.of("/chat").register("sum", sum);

server.on("error", (error) => {
  console.error(`server error: ${error}`);
  process.exit(1);
});
server.on("listening", () => {
  const { address, port } = server.wss.address();
  console.log(`listening on ${address}:${port}`);
});
