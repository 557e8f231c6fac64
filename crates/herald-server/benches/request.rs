//! Micro-benchmark of the connection front reading a request: a publish head and its body as
//! the load generator sends them, and a long poll's head. This runs for every publish and every
//! long poll the front answers. Run with `cargo bench -p herald-server`.
#![allow(missing_docs)]

use herald_server::front::parse_request;

fn main() {
    divan::main();
}

/// hyper's defaults, as `herald serve` has them.
const MAX_HEADERS: usize = 100;
const MAX_HEADER_SIZE: usize = 32 * 1024;

fn publish_request() -> Vec<u8> {
    let mut request = b"POST /publish?cid=bench-17 HTTP/1.1\r\nHost: 127.0.0.1:18000\r\n\
        Content-Type: text/plain\r\nContent-Length: 100\r\n\r\n"
        .to_vec();
    request.extend_from_slice(&[b'x'; 100]);
    request
}

#[divan::bench]
fn publish(bencher: divan::Bencher) {
    let request = publish_request();
    bencher.bench(|| parse_request(divan::black_box(&request), MAX_HEADERS, MAX_HEADER_SIZE));
}

#[divan::bench]
fn long_poll(bencher: divan::Bencher) {
    let request = b"GET /listen?cid=bench-17&since=k3f9%3A17 HTTP/1.1\r\nHost: 127.0.0.1:18000\r\n\
        Accept: */*\r\n\r\n";
    bencher.bench(|| parse_request(divan::black_box(request), MAX_HEADERS, MAX_HEADER_SIZE));
}
