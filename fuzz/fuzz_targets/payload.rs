//! Publish bodies: Payload::from_json and from_text never panic, and what they accept is one
//! JSON value that strict parsers read (so every subscriber can parse every envelope), on a
//! single line (SSE `data:` lines cannot hold newlines); compaction keeps a JSON body's value
//! and a text body becomes the string it was.
#![no_main]

use herald_core::Payload;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn strict(payload: &Payload) -> Value {
    let json = payload.as_bytes();
    assert!(!json.contains(&b'\n') && !json.contains(&b'\r'));
    serde_json::from_slice(json).expect("an accepted payload is strict JSON")
}

fuzz_target!(|data: &[u8]| {
    if let Ok(payload) = Payload::from_json(data) {
        let value = strict(&payload);
        if let Ok(original) = serde_json::from_slice::<Value>(data) {
            assert_eq!(value, original, "compaction keeps the value");
        }
    }
    if let Ok(payload) = Payload::from_text(data) {
        let text = std::str::from_utf8(data).expect("accepted text is UTF-8");
        assert_eq!(strict(&payload), Value::String(text.into()));
    }
});
