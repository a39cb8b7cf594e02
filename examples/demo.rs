//! `make run`: a server and a client in one process, talking over loopback.
//! Shows a call, a typed call, an error, login with a protected method, and events.

use std::sync::mpsc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use wsrpc::{Client, Error, RpcError, Server};

#[derive(Deserialize)]
struct Login {
    username: String,
    password: String,
}

fn main() -> Result<(), Error> {
    simplelog::TermLogger::init(
        simplelog::LevelFilter::Info,
        simplelog::Config::default(),
        simplelog::TerminalMode::Stderr,
        simplelog::ColorChoice::Auto,
    )
    .ok();

    // The server: a method, a typed method, a protected method, login and an event.
    let server = Server::builder()
        .on_connection(|c| {
            println!(
                "server: client {} connected to {}",
                c.socket_id, c.namespace
            )
        })
        .on_disconnection(|d| println!("server: client {} left (code {})", d.socket_id, d.code))
        .bind("127.0.0.1:0")?;
    server.register("sum", |nums: Vec<f64>, _| Ok(nums.iter().sum::<f64>()));
    server.register("divide", |(a, b): (f64, f64), _| {
        if b == 0.0 {
            return Err(RpcError::new(-32010, "Division by zero").with_data(json!({"a": a})));
        }
        Ok(a / b)
    });
    server
        .register("secret", |_: (), ctx| {
            Ok(format!("the vault is open for {}", ctx.socket_id()))
        })
        .protected();
    server.set_auth(|l: Login, _| Ok(l.username == "demo" && l.password == "demo"));
    server.event("tick");
    let url = format!("ws://{}", server.local_addr());
    println!("server: listening on {url}");

    // The client: blocking calls, an error, login, a subscription.
    let client = Client::builder(&url)
        .socket_id("demo-client")
        .timeout(Duration::from_secs(5))
        .connect()?;
    println!("client: methods {:?}", client.list_methods()?);
    println!(
        "client: sum [1, 2, 3.5] = {}",
        client.call("sum", [1.0, 2.0, 3.5])?
    );
    let q: f64 = client.call_as("divide", (10, 4))?;
    println!("client: divide (10, 4) = {q}");
    match client.call("divide", (1, 0)) {
        Err(Error::Rpc(e)) => println!(
            "client: divide (1, 0) failed: code {} {:?} data {:?}",
            e.code, e.message, e.data
        ),
        other => println!("client: unexpected {other:?}"),
    }
    match client.call("secret", ()) {
        Err(e) => println!("client: secret before login: {e}"),
        Ok(v) => println!("client: secret before login?! {v}"),
    }
    client.login(json!({"username": "demo", "password": "demo"}))?;
    println!("client: secret after login: {}", client.call("secret", ())?);

    let (ticks_tx, ticks) = mpsc::channel();
    client.subscribe("tick", move |params| {
        let _ = ticks_tx.send(params.clone());
    })?;
    for n in 1..=3 {
        server.emit("tick", json!({"n": n}))?;
    }
    for _ in 1..=3 {
        match ticks.recv_timeout(Duration::from_secs(5)) {
            Ok(params) => println!("client: event tick {params}"),
            Err(_) => println!("client: a tick did not arrive"),
        }
    }

    client.close();
    server.close();
    println!("done");
    Ok(())
}
