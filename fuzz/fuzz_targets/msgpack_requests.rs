#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wsrpc::fuzzing::msgpack_requests(data);
});
