//! The WebSocket wire protocol (RFC 6455), without I/O.
//!
//! Herald writes its own small codec instead of using a general WebSocket crate because of what
//! a push server's connections look like: tens of thousands of mostly idle sockets that receive
//! pre-built frames. The available crates keep a read buffer and a write buffer per connection
//! (tungstenite allocates its read buffer up front), which dominates the memory of an idle
//! connection, and they re-frame and copy every outgoing message per connection. Here the
//! server's frames are built once per message ([`herald_core::websocket_frame`]) and written
//! as they are, and the reader below works on whatever bytes have arrived, so a connection
//! holds no buffer while idle.
//!
//! [`FrameReader`] parses masked client frames, reassembles fragmented messages, and reports
//! every protocol violation with the close code RFC 6455 prescribes.

use bytes::Bytes;
use herald_core::websocket_frame;

/// Opcodes (RFC 6455 §5.2).
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Close codes used by Herald (RFC 6455 §7.4.1).
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is going away (shutdown).
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error.
    pub const PROTOCOL: u16 = 1002;
    /// Data type not accepted (binary).
    pub const UNSUPPORTED: u16 = 1003;
    /// Text that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// Policy violation (e.g. ping timeout).
    pub const POLICY: u16 = 1008;
    /// Message too big.
    pub const TOO_BIG: u16 = 1009;
    /// Herald: the consumer fell too far behind.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// Herald: an `auth` command carried an invalid token.
    pub const INVALID_TOKEN: u16 = 4001;
    /// Herald: the connection's token expired and was not refreshed.
    pub const TOKEN_EXPIRED: u16 = 4002;
    /// Herald: the client kept publishing over `client-publish-rate`.
    pub const PUBLISH_FLOOD: u16 = 4029;
}

/// A complete message or control frame from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A complete text message.
    Text(String),
    /// A complete binary message (Herald's command protocol does not accept them).
    Binary(Vec<u8>),
    /// A ping with its payload (to echo in the pong).
    Ping(Vec<u8>),
    /// A pong.
    Pong,
    /// A close frame, with its code and reason if it had any.
    Close(Option<(u16, String)>),
}

/// A protocol violation: the connection must be closed with `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (close code {code})")]
pub struct Violation {
    /// The close code to send.
    pub code: u16,
    /// Why.
    pub reason: &'static str,
}

const fn violation(code: u16, reason: &'static str) -> Violation {
    Violation { code, reason }
}

/// Parses client frames. See the module documentation.
#[derive(Debug)]
pub struct FrameReader {
    max_message: usize,
    fragments: Option<(u8, Vec<u8>)>,
}

impl FrameReader {
    /// A reader that accepts messages of at most `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Self {
            max_message,
            fragments: None,
        }
    }

    /// Parses the next complete message or control frame from the front of `buf`, removing the
    /// bytes it used. `Ok(None)`: more bytes are needed.
    pub fn next(&mut self, buf: &mut Vec<u8>) -> Result<Option<Incoming>, Violation> {
        loop {
            let Some((header, payload_len)) = self.parse_header(buf)? else {
                return Ok(None);
            };
            let total = header.len + 4 + payload_len;
            if buf.len() < total {
                return Ok(None);
            }
            let mask = [
                buf[header.len],
                buf[header.len + 1],
                buf[header.len + 2],
                buf[header.len + 3],
            ];
            let mut payload: Vec<u8> = buf[header.len + 4..total].to_vec();
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= mask[i % 4];
            }
            buf.drain(..total);
            if let Some(message) = self.on_frame(header.fin, header.opcode, payload)? {
                return Ok(Some(message));
            }
        }
    }

    /// Bytes of a partial message being reassembled (for accounting).
    pub fn buffered(&self) -> usize {
        self.fragments.as_ref().map_or(0, |(_, data)| data.len())
    }

    fn parse_header(&self, buf: &[u8]) -> Result<Option<(Header, usize)>, Violation> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        let fin = b0 & 0x80 != 0;
        if b0 & 0x70 != 0 {
            return Err(violation(
                close_code::PROTOCOL,
                "reserved bits set without an extension",
            ));
        }
        let opcode = b0 & 0x0f;
        let control = opcode & 0x08 != 0;
        if !matches!(opcode, CONTINUATION | TEXT | BINARY | CLOSE | PING | PONG) {
            return Err(violation(close_code::PROTOCOL, "reserved opcode"));
        }
        if b1 & 0x80 == 0 {
            return Err(violation(
                close_code::PROTOCOL,
                "client frames must be masked",
            ));
        }
        let (len, header_len) = match b1 & 0x7f {
            126 => {
                if buf.len() < 4 {
                    return Ok(None);
                }
                (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
            }
            127 => {
                if buf.len() < 10 {
                    return Ok(None);
                }
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&buf[2..10]);
                let len = u64::from_be_bytes(bytes);
                if len >> 63 != 0 {
                    return Err(violation(
                        close_code::PROTOCOL,
                        "frame length has its top bit set",
                    ));
                }
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        if control && (!fin || len > 125) {
            return Err(violation(
                close_code::PROTOCOL,
                "control frames must be final and at most 125 bytes",
            ));
        }
        let limit = (self.max_message - self.buffered().min(self.max_message)) as u64;
        if !control && len > limit {
            return Err(violation(close_code::TOO_BIG, "message too big"));
        }
        // Bounded by `max_message` (data) or 125 (control) above.
        let len =
            usize::try_from(len).map_err(|_| violation(close_code::TOO_BIG, "message too big"))?;
        Ok(Some((
            Header {
                fin,
                opcode,
                len: header_len,
            },
            len,
        )))
    }

    fn on_frame(
        &mut self,
        fin: bool,
        opcode: u8,
        payload: Vec<u8>,
    ) -> Result<Option<Incoming>, Violation> {
        match opcode {
            PING => Ok(Some(Incoming::Ping(payload))),
            PONG => Ok(Some(Incoming::Pong)),
            CLOSE => parse_close(&payload).map(|c| Some(Incoming::Close(c))),
            CONTINUATION => {
                let Some((kind, data)) = self.fragments.as_mut() else {
                    return Err(violation(
                        close_code::PROTOCOL,
                        "continuation frame without a message to continue",
                    ));
                };
                let before = data.len();
                data.extend_from_slice(&payload);
                if *kind == TEXT {
                    check_utf8_so_far(data, before)?;
                }
                if !fin {
                    return Ok(None);
                }
                let Some((kind, data)) = self.fragments.take() else {
                    return Ok(None);
                };
                complete(kind, data).map(Some)
            }
            kind => {
                if self.fragments.is_some() {
                    return Err(violation(
                        close_code::PROTOCOL,
                        "new message before the previous one was finished",
                    ));
                }
                if fin {
                    complete(kind, payload).map(Some)
                } else {
                    if kind == TEXT {
                        check_utf8_so_far(&payload, 0)?;
                    }
                    self.fragments = Some((kind, payload));
                    Ok(None)
                }
            }
        }
    }
}

struct Header {
    fin: bool,
    opcode: u8,
    len: usize,
}

fn complete(kind: u8, data: Vec<u8>) -> Result<Incoming, Violation> {
    if kind == BINARY {
        return Ok(Incoming::Binary(data));
    }
    String::from_utf8(data)
        .map(Incoming::Text)
        .map_err(|_| violation(close_code::INVALID_DATA, "text message is not valid UTF-8"))
}

/// Fails a fragmented text message as soon as its bytes so far cannot be the start of valid
/// UTF-8 (RFC 6455 §8.1: fail fast), instead of buffering it up to its last fragment. The
/// bytes before `checked` were checked by an earlier call, so only the new ones (and an
/// incomplete character before them) are looked at again.
fn check_utf8_so_far(data: &[u8], checked: usize) -> Result<(), Violation> {
    // Back up over a possibly incomplete character (at most 3 bytes) to a character start.
    let mut from = checked.saturating_sub(3);
    while from < checked && data[from] & 0xC0 == 0x80 {
        from += 1;
    }
    match std::str::from_utf8(&data[from..]) {
        Ok(_) => Ok(()),
        // Only an incomplete character at the end: the next fragment may complete it.
        Err(e) if e.error_len().is_none() => Ok(()),
        Err(_) => Err(violation(
            close_code::INVALID_DATA,
            "text message is not valid UTF-8",
        )),
    }
}

fn parse_close(payload: &[u8]) -> Result<Option<(u16, String)>, Violation> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(violation(
            close_code::PROTOCOL,
            "close frame with a 1-byte payload",
        )),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(violation(close_code::PROTOCOL, "invalid close code"));
            }
            let reason = std::str::from_utf8(&payload[2..]).map_err(|_| {
                violation(close_code::INVALID_DATA, "close reason is not valid UTF-8")
            })?;
            Ok(Some((code, reason.to_string())))
        }
    }
}

/// A text frame with `text`.
pub fn text(text: &str) -> Bytes {
    websocket_frame(TEXT, text.as_bytes())
}

/// A binary frame with `data` (only the conformance echo endpoint sends them).
#[cfg(feature = "conformance")]
pub fn binary(data: &[u8]) -> Bytes {
    websocket_frame(BINARY, data)
}

/// A ping frame (empty payload).
pub fn ping() -> Bytes {
    websocket_frame(PING, &[])
}

/// A pong answering a ping with `payload`.
pub fn pong(payload: &[u8]) -> Bytes {
    websocket_frame(PONG, payload)
}

/// A close frame with `code` and `reason` (truncated to fit a control frame).
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    websocket_frame(CLOSE, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn read_all(reader: &mut FrameReader, mut bytes: Vec<u8>) -> Result<Vec<Incoming>, Violation> {
        let mut out = Vec::new();
        while let Some(m) = reader.next(&mut bytes)? {
            out.push(m);
        }
        assert!(bytes.is_empty(), "all bytes consumed");
        Ok(out)
    }

    #[test]
    fn reads_text_control_and_fragmented_messages() {
        let mut r = FrameReader::new(1 << 20);
        let mut bytes = frame(true, TEXT, b"hello");
        bytes.extend(frame(false, TEXT, "h\u{e9}".as_bytes()));
        bytes.extend(frame(true, PING, b"p"));
        bytes.extend(frame(false, CONTINUATION, b"ll"));
        bytes.extend(frame(true, CONTINUATION, b"o"));
        bytes.extend(frame(true, PONG, b""));
        bytes.extend(frame(true, CLOSE, &[0x03, 0xe8, b'o', b'k']));
        assert_eq!(
            read_all(&mut r, bytes).expect("valid"),
            vec![
                Incoming::Text("hello".into()),
                Incoming::Ping(b"p".to_vec()),
                Incoming::Text("h\u{e9}llo".into()),
                Incoming::Pong,
                Incoming::Close(Some((1000, "ok".into()))),
            ]
        );
    }

    #[test]
    fn waits_for_complete_frames_byte_by_byte() {
        let mut r = FrameReader::new(1 << 20);
        let whole = frame(true, TEXT, &[b'a'; 300]);
        let mut buf = Vec::new();
        for (i, b) in whole.iter().enumerate() {
            buf.push(*b);
            let got = r.next(&mut buf).expect("valid");
            if i + 1 < whole.len() {
                assert_eq!(got, None);
            } else {
                assert_eq!(got, Some(Incoming::Text("a".repeat(300))));
            }
        }
        let big = frame(true, TEXT, &vec![b'b'; 70_000]);
        assert_eq!(read_all(&mut r, big).expect("valid").len(), 1);
    }

    #[test]
    fn violations_carry_the_rfc_close_code() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (
                {
                    let mut f = frame(true, TEXT, b"x");
                    f[0] |= 0x40;
                    f
                },
                1002,
            ),
            (frame(true, 0x3, b""), 1002),
            (frame(true, 0xB, b""), 1002),
            (
                {
                    let mut f = frame(true, TEXT, b"x");
                    f[1] &= 0x7f;
                    f
                },
                1002,
            ),
            (frame(false, PING, b""), 1002),
            (frame(true, PING, &[0; 126]), 1002),
            (frame(true, CONTINUATION, b"x"), 1002),
            (frame(true, TEXT, &[0xff, 0xfe]), 1007),
            (frame(true, CLOSE, &[0x03]), 1002),
            (frame(true, CLOSE, &[0x03, 0xed]), 1002),
            (frame(true, CLOSE, &[0x03, 0xe8, 0xff]), 1007),
            (frame(true, TEXT, &[b'a'; 101]), 1009),
            (
                [frame(false, TEXT, b"a"), frame(true, TEXT, b"b")].concat(),
                1002,
            ),
            (
                [
                    frame(false, TEXT, &[b'a'; 60]),
                    frame(true, CONTINUATION, &[b'a'; 60]),
                ]
                .concat(),
                1009,
            ),
        ];
        for (i, (bytes, code)) in cases.into_iter().enumerate() {
            let mut r = FrameReader::new(100);
            let mut bytes = bytes;
            let mut result = Ok(None);
            for _ in 0..3 {
                result = r.next(&mut bytes);
                if result.is_err() {
                    break;
                }
            }
            assert_eq!(result.map_err(|v| v.code), Err(code), "case {i}");
        }
        let mut huge = vec![0x81, 0x80 | 127];
        huge.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(
            FrameReader::new(100).next(&mut huge).map_err(|v| v.code),
            Err(1002)
        );
    }

    #[test]
    fn invalid_utf8_in_a_fragment_fails_before_the_message_ends() {
        // Each case: fragments of a text message that is invalid by its last fragment here,
        // none of them final.
        let cases: [&[&[u8]]; 5] = [
            &[b"ok\xff"],
            &[b"ok", b"\xc0\xaf"],
            &[b"\xe2\x82", b"\x28"],
            &[b"\xf0", b"\x9f", b"\x98", b"x"],
            &[
                b"ab\xce",
                b"\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5",
                b"\xed\xa0\x80",
            ],
        ];
        for (i, fragments) in cases.iter().enumerate() {
            let mut r = FrameReader::new(1 << 20);
            let mut result = Ok(None);
            for (j, fragment) in fragments.iter().enumerate() {
                let opcode = if j == 0 { TEXT } else { CONTINUATION };
                result = r.next(&mut frame(false, opcode, fragment));
                if j + 1 < fragments.len() {
                    assert_eq!(result, Ok(None), "case {i} fragment {j} is still valid");
                }
            }
            assert_eq!(result.map_err(|v| v.code), Err(1007), "case {i}");
        }
        // A character split over every fragment boundary is fine.
        let text = "κόσμε \u{1F600}";
        let mut r = FrameReader::new(1 << 20);
        let bytes = text.as_bytes();
        let mut got = None;
        for (j, byte) in bytes.iter().enumerate() {
            let opcode = if j == 0 { TEXT } else { CONTINUATION };
            got = r
                .next(&mut frame(j + 1 == bytes.len(), opcode, &[*byte]))
                .expect("valid");
        }
        assert_eq!(got, Some(Incoming::Text(text.into())));
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        /// A server frame (unmasked, as Herald encodes it) turned into the client frame a
        /// browser would send for it: mask bit set, `mask` inserted, payload masked.
        fn as_client_frame(server_frame: &[u8], mask: [u8; 4]) -> Vec<u8> {
            let header_len = match server_frame[1] {
                126 => 4,
                127 => 10,
                _ => 2,
            };
            let mut out = server_frame[..header_len].to_vec();
            out[1] |= 0x80;
            out.extend_from_slice(&mask);
            out.extend(
                server_frame[header_len..]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ mask[i % 4]),
            );
            out
        }

        proptest! {
            #[test]
            fn encoded_frames_decode_to_what_was_encoded(
                texts in prop::collection::vec(
                    prop_oneof![
                        6 => ".{0,40}",
                        3 => ".{100,130}",
                        // Around the 16-bit/64-bit length boundary (65535).
                        1 => (65530usize..65545).prop_map(|n| "x".repeat(n)),
                    ],
                    1..4,
                ),
                ping in prop::collection::vec(any::<u8>(), 0..=125),
                mask in any::<[u8; 4]>(),
                chunk in 1usize..5000,
            ) {
                let mut stream = Vec::new();
                for text in &texts {
                    stream.extend(as_client_frame(&super::super::text(text), mask));
                }
                stream.extend(as_client_frame(&websocket_frame(PING, &ping), mask));
                stream.extend(as_client_frame(&close(1000, "bye"), mask));
                let mut reader = FrameReader::new(1 << 20);
                let mut buf = Vec::new();
                let mut got = Vec::new();
                for piece in stream.chunks(chunk) {
                    buf.extend_from_slice(piece);
                    while let Some(incoming) = reader.next(&mut buf).expect("valid frames") {
                        got.push(incoming);
                    }
                }
                prop_assert!(buf.is_empty());
                let mut expected: Vec<Incoming> =
                    texts.iter().map(|t| Incoming::Text(t.clone())).collect();
                expected.push(Incoming::Ping(ping));
                expected.push(Incoming::Close(Some((1000, "bye".into()))));
                prop_assert_eq!(got, expected);
            }

            #[test]
            fn the_reader_never_panics_on_any_bytes(
                bytes in prop::collection::vec(any::<u8>(), 0..300),
                chunk in 1usize..20,
            ) {
                let mut reader = FrameReader::new(100);
                let mut buf = Vec::new();
                'outer: for piece in bytes.chunks(chunk) {
                    buf.extend_from_slice(piece);
                    loop {
                        match reader.next(&mut buf) {
                            Ok(Some(_)) => {}
                            Ok(None) => break,
                            Err(_) => break 'outer,
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn binary_messages_are_reported_as_they_are() {
        let mut r = FrameReader::new(100);
        assert_eq!(
            read_all(&mut r, frame(true, BINARY, &[0xff])).expect("valid"),
            [Incoming::Binary(vec![0xff])]
        );
    }

    #[test]
    fn server_frames() {
        assert_eq!(
            &close(1001, "bye")[..],
            &[0x88, 5, 0x03, 0xe9, b'b', b'y', b'e']
        );
        assert_eq!(close(1000, &"é".repeat(100)).len(), 2 + 2 + 122);
        assert_eq!(&ping()[..], &[0x89, 0]);
        assert_eq!(&pong(b"ab")[..], &[0x8a, 2, b'a', b'b']);
        assert_eq!(&text("hi")[..], &[0x81, 2, b'h', b'i']);
    }
}
