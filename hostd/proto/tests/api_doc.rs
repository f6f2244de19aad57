//! docs/API.md's examples are real: every JSON request in it decodes as a request and every
//! reply as a reply (so the document cannot drift from the types).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use hostd_proto::ReplyEnvelope;
use hostd_proto::json::decode_request_line;

#[test]
fn every_json_example_in_the_api_document_decodes() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/API.md")).unwrap();
    let mut requests = 0;
    let mut replies = 0;
    let blocks: Vec<&str> = doc
        .split("```json\n")
        .skip(1)
        .map(|block| block.split("\n```").next().unwrap())
        .collect();
    for (i, text) in blocks.iter().enumerate() {
        let value: serde_json::Value =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
        let line = serde_json::to_vec(&value).unwrap();
        if value.get("version").is_some() {
            // The one example of a malformed request is followed by its bad_request reply.
            let shows_bad_request = blocks
                .get(i + 1)
                .is_some_and(|next| next.contains("\"code\":\"bad_request\""));
            match decode_request_line(&line) {
                Ok(_) => assert!(!shows_bad_request, "{text} decodes but is shown as bad"),
                Err(e) => assert!(shows_bad_request, "{e}: {text}"),
            }
            requests += 1;
        } else {
            serde_json::from_slice::<ReplyEnvelope>(&line)
                .unwrap_or_else(|e| panic!("{e}: {text}"));
            replies += 1;
        }
    }
    // Every call (31 of them) has a request and a reply example.
    assert!(requests >= 31, "{requests} request examples");
    assert!(replies >= 31, "{replies} reply examples");
}
