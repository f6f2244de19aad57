//! Every decoder of hostd-proto on arbitrary input: a value or an error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = hostd_proto::decode_request(data);
    let _ = hostd_proto::decode_reply(data);
    let _ = hostd_proto::json::decode_request_line(data);
    if data.len() >= 4 {
        let _ = hostd_proto::frame_length([data[0], data[1], data[2], data[3]]);
    }
});
