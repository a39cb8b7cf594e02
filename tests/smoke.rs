mod common;

use serde_json::json;

#[test]
fn fixture_answers_sum_over_a_raw_socket() {
    let server = common::start();
    let mut raw = common::Raw::connect(&common::url(&server, "/"));
    let reply = raw.request(r#"{"jsonrpc":"2.0","method":"sum","params":[5,3],"id":1}"#);
    assert_eq!(reply, json!({"jsonrpc": "2.0", "result": 8, "id": 1}));
    server.close();
}
