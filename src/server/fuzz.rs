//! The request dispatcher as a fuzz target: a frame goes through the same rules a
//! connection applies, against a namespace with something of everything.

use serde_json::{Value, json};

use super::Server;
use super::calls::{self, Session};
use super::dispatcher::{Command, Dispatcher};
use crate::protocol::Codec;

pub(crate) fn dispatch(data: &[u8]) {
    let (server, commands) = Server::detached();
    // rpc.on and rpc.off ask the dispatcher.
    let dispatcher = std::thread::spawn({
        let server = server.clone();
        move || Dispatcher::new(server, commands).run()
    });
    server.register("echo", |p: Value, _| Ok(p));
    server.register("sum", |n: Vec<f64>, _| Ok(n.iter().sum::<f64>()));
    server.register("secret", |_: (), _| Ok("s")).protected();
    server
        .register("bytes", |(b,): (Vec<u8>,), _| Ok(b.len()))
        .allow_raw_values();
    server.register("fail", |_: Value, _| -> Result<(), crate::RpcError> {
        Err(crate::RpcError::new(-1, "no"))
    });
    server.set_auth(|p: Value, _| Ok(p == json!({"u": 1})));
    server.event("feed");
    server.event("vault").protected();
    let table = server.registry().namespace("/").unwrap_or_default();
    let session = Session::new(1, "fuzz".into(), "/".into());
    for codec in [Codec::Json, Codec::MsgPack] {
        let _ = calls::handle_frame(&server, &session, &table, codec, data);
    }
    let (done, stopped) = crossbeam_channel::bounded(1);
    server.dispatch(Command::Shutdown { done });
    let _ = stopped.recv();
    let _ = dispatcher.join();
}
