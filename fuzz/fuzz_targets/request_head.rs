//! Request heads the connection front peeks at: `front::parse_head` never panics, and a head it
//! takes is a complete `GET /listen` head within the limits, with no body, no upgrade and no
//! `Expect`, whose parsed target and headers are exactly those of the bytes.
#![no_main]

use herald_server::front::parse_head;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the limits, so that they are fuzzed too.
    let Some((&knob, bytes)) = data.split_first() else {
        return;
    };
    let max_headers = usize::from(knob % 16);
    let max_header_size = 64 + usize::from(knob) * 16;
    let Some((request, len)) = parse_head(bytes, max_headers, max_header_size) else {
        return;
    };
    assert!(len <= bytes.len() && len <= max_header_size);
    assert!(bytes[..len].ends_with(b"\n"), "a complete head ends with a line end");
    assert_eq!(request.method(), http::Method::GET);
    assert_eq!(request.version(), http::Version::HTTP_11);
    assert!(matches!(request.uri().path(), "/listen" | "/listen/"));
    assert!(request.headers().len() <= max_headers);
    for name in ["upgrade", "transfer-encoding", "expect"] {
        assert!(!request.headers().contains_key(name), "{name}");
    }
    for value in request.headers().get_all("content-length") {
        assert_eq!(value.as_bytes(), b"0");
    }
    let head = String::from_utf8_lossy(&bytes[..len]);
    let target = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    assert!(head.contains(&format!("GET {target} ")), "{head:?} vs {target:?}");
});
