//! Request heads the connection front reads: `front::parse_head` never panics, and a request
//! it takes is within the limits, with no upgrade, no `Expect` and no chunked body, whose parsed
//! target and headers are exactly those of the bytes: a complete `GET /listen` head with no
//! body, or a complete `POST /publish` head followed by all of its one `Content-Length` body.
//! A request the front reads on is one it could take: a head not yet ended within the size
//! limit, or a publish head whose body is still short of its declared length.
#![no_main]

use herald_server::front::{parse_head, parse_request, Parsed};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the limits, so that they are fuzzed too.
    let Some((&knob, bytes)) = data.split_first() else {
        return;
    };
    let max_headers = usize::from(knob % 16);
    let max_header_size = 64 + usize::from(knob) * 16;
    match parse_request(bytes, max_headers, max_header_size) {
        Parsed::HeadIncomplete => {
            assert!(bytes.len() < max_header_size);
            assert!(parse_head(bytes, max_headers, max_header_size).is_none());
            return;
        }
        Parsed::BodyIncomplete { total, body } => {
            assert!(total > bytes.len(), "the body is short");
            assert!(total - body <= bytes.len(), "the head is here");
            assert!(total - body <= max_header_size);
            let head = &bytes[..total - body];
            assert!(
                head.windows(13).any(|w| w == b"POST /publish"),
                "only a publish waits for a body"
            );
            return;
        }
        Parsed::NotOurs | Parsed::Request(..) => {}
    }
    let Some((request, len)) = parse_head(bytes, max_headers, max_header_size) else {
        return;
    };
    assert!(len <= bytes.len());
    assert_eq!(request.version(), http::Version::HTTP_11);
    assert!(request.headers().len() <= max_headers);
    for name in ["upgrade", "transfer-encoding", "expect"] {
        assert!(!request.headers().contains_key(name), "{name}");
    }
    let lengths: Vec<_> = request.headers().get_all("content-length").iter().collect();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let target = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let body_len = match method {
        http::Method::GET => {
            assert!(matches!(path.as_str(), "/listen" | "/listen/"));
            assert!(lengths.iter().all(|v| v.as_bytes() == b"0"));
            0
        }
        http::Method::POST => {
            assert!(matches!(path.as_str(), "/publish" | "/publish/"));
            assert_eq!(lengths.len(), 1);
            let declared: usize = std::str::from_utf8(lengths[0].as_bytes())
                .expect("digits")
                .parse()
                .expect("a length");
            declared
        }
        other => panic!("front took a {other} request"),
    };
    let head_len = len - body_len;
    assert!(head_len <= max_header_size);
    assert!(
        bytes[..head_len].ends_with(b"\n"),
        "a complete head ends with a line end"
    );
    let body = request.into_body().collect();
    let body = ready_now(body).to_bytes();
    assert_eq!(
        &body[..],
        &bytes[head_len..len],
        "the body is the bytes after the head"
    );
    let head = String::from_utf8_lossy(&bytes[..head_len]);
    assert!(
        head.contains(&format!("{method} {target} ")),
        "{head:?} vs {target:?}"
    );
});

/// A `Full` body is ready at once: poll it once with a no-op waker.
fn ready_now<T>(
    future: impl std::future::Future<Output = Result<T, std::convert::Infallible>>,
) -> T {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(Ok(value)) => value,
        std::task::Poll::Ready(Err(never)) => match never {},
        std::task::Poll::Pending => panic!("a Full body is always ready"),
    }
}
