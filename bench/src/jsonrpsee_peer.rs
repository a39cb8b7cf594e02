//! The jsonrpsee server that `make bench` measures wsrpc against: a peer of
//! the benchmark, not part of wsrpc. It serves the same workloads (`sum`,
//! `emit`, the `newsUpdate` subscription) the way a jsonrpsee user would:
//! its own multi-thread tokio runtime, jsonrpsee defaults except for the
//! connection limit.

use std::error::Error;
use std::io::Write;

use jsonrpsee::server::{RpcModule, Server, ServerConfig};
use serde_json::value::RawValue;
use tokio::sync::broadcast::{self, Sender, error::RecvError};

/// Room for the benchmark's 512 and 10,000 connections (jsonrpsee's default is 100).
const MAX_CONNECTIONS: u32 = 100_000;

/// Serve until killed: binds 127.0.0.1:0, prints `listening on 127.0.0.1:PORT` as the first stdout line (flushed).
pub fn serve() {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => fail(&e),
    };
    if let Err(e) = runtime.block_on(run()) {
        fail(&*e);
    }
}

fn fail(e: &dyn Error) -> ! {
    eprintln!("jsonrpsee peer: {e}");
    std::process::exit(1)
}

async fn run() -> Result<(), Box<dyn Error>> {
    let config = ServerConfig::builder()
        .max_connections(MAX_CONNECTIONS)
        .build();
    let server = Server::builder()
        .set_config(config)
        .build("127.0.0.1:0")
        .await?;
    let addr = server.local_addr()?;
    let handle = server.start(module()?);
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {addr}")?;
    stdout.flush()?;
    handle.stopped().await;
    Ok(())
}

/// `sum`, `emit` and the `newsUpdate` subscription, over one broadcast channel.
fn module() -> Result<RpcModule<Sender<Box<RawValue>>>, Box<dyn Error>> {
    let (news, _) = broadcast::channel::<Box<RawValue>>(1024);
    let mut module = RpcModule::new(news);

    module.register_method("sum", |params, _, _| {
        let total: f64 = params.parse::<Vec<f64>>()?.iter().sum();
        // Whole sums go out as integers (`5`, not `5.0`).
        Ok::<_, jsonrpsee::types::ErrorObjectOwned>(crate::peers::js_number(total))
    })?;

    module.register_method("emit", |params, news, _| {
        let (_event, value) = params.parse::<(String, Box<RawValue>)>()?;
        // An error only means nobody is subscribed right now.
        let _ = news.send(value);
        Ok::<_, jsonrpsee::types::ErrorObjectOwned>(true)
    })?;

    module.register_subscription(
        "subscribe_newsUpdate",
        "newsUpdate",
        "unsubscribe_newsUpdate",
        |_, pending, news, _| async move {
            let mut rx = news.subscribe();
            let Ok(sink) = pending.accept().await else {
                return;
            };
            loop {
                tokio::select! {
                    () = sink.closed() => break,
                    item = rx.recv() => match item {
                        Ok(value) => {
                            if sink.send(value).await.is_err() {
                                break;
                            }
                        }
                        Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => break,
                    },
                }
            }
        },
    )?;
    Ok(module)
}
