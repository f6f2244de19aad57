//! Fuzzing the decoders on the stable toolchain (proptest): arbitrary bytes and mutated
//! valid messages, in both forms, must give a value or an error, never a panic. The
//! cargo-fuzz target in `fuzz/` does the same under libFuzzer.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use hostd_proto::json::{decode_request_line, encode_line};
use hostd_proto::{
    CreateInstance, InstanceRef, Request, RequestEnvelope, StopInstance, VfRequest, decode_reply,
    decode_request, encode_frame, frame_length, name,
};
use proptest::prelude::*;

fn samples() -> Vec<RequestEnvelope> {
    let vf = VfRequest {
        port: Some(name("eth0")),
        mac: Some(hostd_proto::bounded("02:00:00:00:00:01")),
        vlan: Some(10),
        ..Default::default()
    };
    [
        Request::Hello,
        Request::HostStatus,
        Request::ShowInstance(InstanceRef {
            instance: name("web-1"),
        }),
        Request::StopInstance(StopInstance {
            instance: name("a"),
            force: true,
            timeout_ms: Some(5),
        }),
        Request::CreateInstance(CreateInstance {
            name: name("web-1"),
            template: name("probe"),
            vcpus: Some(2),
            vfs: Some([vf].into_iter().collect()),
            start: true,
            ..Default::default()
        }),
    ]
    .into_iter()
    .enumerate()
    .map(|(id, request)| RequestEnvelope {
        version: hostd_proto::PROTOCOL_VERSION,
        id: id as u32,
        request,
    })
    .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_request(&bytes);
        let _ = decode_reply(&bytes);
        let _ = decode_request_line(&bytes);
        if bytes.len() >= 4 {
            let _ = frame_length([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        // fastpath's control socket decodes what any local client sends, too.
        let _ = hostd_proto::fastpath::decode_body::<hostd_proto::fastpath::Request>(&bytes);
        let _ = hostd_proto::fastpath::decode_body::<hostd_proto::fastpath::Response>(&bytes);
    }

    #[test]
    fn mutated_messages_decode_or_fail_cleanly(
        which in 0usize..5,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let envelope = &samples()[which];
        let mut buf = [0u8; 1024];
        let mut body = encode_frame(envelope, &mut buf).unwrap()[4..].to_vec();
        let mut line = encode_line(envelope).unwrap();
        prop_assert_eq!(&decode_request(&body).unwrap(), envelope);
        for (at, value) in &flips {
            let i = at.index(body.len());
            body[i] = *value;
            let j = at.index(line.len());
            line[j] = *value;
        }
        let _ = decode_request(&body);
        let _ = decode_request(&body[..cut.index(body.len())]);
        let _ = decode_request_line(&line);
        let _ = decode_request_line(&line[..cut.index(line.len())]);
    }
}
