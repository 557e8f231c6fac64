//! The WebSocket FrameReader on arbitrary byte streams in arbitrary chunks: it never panics,
//! never reports a message larger than its limit, and the outcome does not depend on how the
//! bytes were split into reads (all at once against the chunks chosen by the first bytes).
#![no_main]

use herald_server::transport::websocket::frame::{FrameReader, Incoming, Violation};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 1024;

fn read(chunks: &[&[u8]]) -> (Vec<Incoming>, Option<Violation>) {
    let mut reader = FrameReader::new(LIMIT);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match reader.next(&mut buf) {
                Ok(Some(incoming)) => {
                    match &incoming {
                        Incoming::Text(t) => assert!(t.len() <= LIMIT),
                        Incoming::Binary(b) => assert!(b.len() <= LIMIT),
                        Incoming::Ping(p) => assert!(p.len() <= 125),
                        Incoming::Pong | Incoming::Close(_) => {}
                    }
                    out.push(incoming);
                }
                Ok(None) => break,
                Err(violation) => return (out, Some(violation)),
            }
        }
        assert!(reader.buffered() <= LIMIT);
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let whole = read(&[stream]);
    let mut chunks = Vec::new();
    let mut rest = stream;
    let mut size = usize::from(seed % 7) + 1;
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        chunks.push(chunk);
        rest = tail;
        size = size * 3 % 11 + 1;
    }
    assert_eq!(read(&chunks), whole);
});
