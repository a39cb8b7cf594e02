//! The interop fixture of the core issue, shared by `examples/interop_server.rs` and the
//! integration tests so that both serve exactly the same thing.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Number, Value, json};
use wsrpc::{RpcError, Server};

/// A sum as JavaScript would print it: integral sums as integers.
fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9_007_199_254_740_992.0 {
        Value::from(x as i64)
    } else {
        Number::from_f64(x)
            .map(Value::Number)
            .unwrap_or(Value::Null)
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Subtract {
    Pair(f64, f64),
    Named { minuend: f64, subtrahend: f64 },
}

#[derive(Deserialize)]
struct Greet {
    name: String,
}

/// Register the fixture's methods, events and login on `server`.
pub fn install(server: &Server) {
    server.register("sum", |nums: Vec<f64>, _| Ok(number(nums.iter().sum())));
    server.register("greet", |p: Greet, _| Ok(format!("Hello, {}!", p.name)));
    server.register("subtract", |p: Subtract, _| {
        let (a, b) = match p {
            Subtract::Pair(a, b) => (a, b),
            Subtract::Named {
                minuend,
                subtrahend,
            } => (minuend, subtrahend),
        };
        Ok(number(a - b))
    });
    server.register("echo", |p: Value, _| Ok(p));
    server.register("update", |_: Value, _| Ok(()));
    server.register("sleep", |(ms,): (u64,), _| {
        std::thread::sleep(Duration::from_millis(ms));
        Ok(ms)
    });
    server.register("whoami", |_: (), ctx| Ok(ctx.socket_id().to_owned()));
    server.register("fail", |_: Value, _| -> Result<(), RpcError> {
        Err(RpcError::new(-32050, "Server error").with_data("Server error details"))
    });
    server.register("panic", |_: Value, _| -> Result<(), RpcError> {
        panic!("the fixture's panic method was called")
    });
    server
        .register("cryptic", |_: Value, _| Ok("boohoo"))
        .protected();
    server.register("emit", |p: Vec<Value>, ctx| {
        let event = p.first().and_then(Value::as_str).ok_or_else(|| {
            RpcError::new(wsrpc::codes::INVALID_PARAMS, "Invalid params")
                .with_data("expected [event, params, namespace?]")
        })?;
        let params = p.get(1).cloned().unwrap_or(Value::Null);
        let ns = p.get(2).and_then(Value::as_str).unwrap_or("/");
        ctx.server().namespace(ns).emit(event, params)?;
        Ok(true)
    });
    server.set_auth(|p: Value, _| Ok(p == json!({"username": "foo", "password": "bar"})));
    server.event("newsUpdate");
    server.event("newMessage");
    server.event("secretFeed").protected();

    let chat = server.namespace("/chat");
    chat.register("sum", |nums: Vec<f64>, _| Ok(number(nums.iter().sum())));
    chat.event("newMessage");
    chat.event("chatMessage");
}
