//! Messages and their wire encodings.
//!
//! A published body becomes a [`Payload`] (compact JSON text, validated once), then a
//! [`Message`] once the channel gives it a position. The message owns the JSON envelope every
//! transport delivers, built once at publish time, and builds each other wire form (SSE event,
//! script-safe JSON for the iframe) at most once, on first use, shared by every subscriber.

use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};

use crate::channel::ChannelId;
use crate::position::{Epoch, Position};

/// The data of a message: one JSON value as compact, single-line, valid UTF-8 text.
#[derive(Clone, PartialEq, Eq)]
pub struct Payload(Bytes);

/// Why a publish body cannot become a payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The body is not valid UTF-8.
    #[error("body is not valid UTF-8 (at byte {0})")]
    NotUtf8(usize),
    /// The body was declared JSON but does not parse.
    #[error("body is not valid JSON: {0}")]
    BadJson(String),
}

impl Payload {
    /// A JSON body: must be exactly one valid JSON value. Insignificant whitespace is removed,
    /// so the envelope stays on one line (SSE `data:` lines cannot contain newlines).
    pub fn from_json(body: &[u8]) -> Result<Self, PayloadError> {
        let text = std::str::from_utf8(body).map_err(|e| PayloadError::NotUtf8(e.valid_up_to()))?;
        serde_json::from_str::<StrictJson>(text)
            .map_err(|e| PayloadError::BadJson(e.to_string()))?;
        Ok(Self(compact_json(body)))
    }

    /// A text body: must be UTF-8; delivered as a JSON string.
    pub fn from_text(body: &[u8]) -> Result<Self, PayloadError> {
        let text = std::str::from_utf8(body).map_err(|e| PayloadError::NotUtf8(e.valid_up_to()))?;
        // Sized for the quotes from the start: `to_string` starts at 128 bytes and doubles,
        // copying a large body up to eight times. A buffer filled exactly becomes `Bytes`
        // without another allocation.
        let mut quoted = Vec::with_capacity(text.len() + 2);
        if needs_no_escape(body) {
            // What serde_json writes for such a text (the tests hold the two equal), without
            // its byte-by-byte escape loop: about ten instructions per byte.
            quoted.push(b'"');
            quoted.extend_from_slice(body);
            quoted.push(b'"');
        } else {
            serde_json::to_writer(&mut quoted, text)
                .map_err(|e| PayloadError::BadJson(e.to_string()))?;
        }
        Ok(Self(Bytes::from(quoted)))
    }

    /// The compact JSON text.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Length of the JSON text in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for an empty payload (never produced by the constructors).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Payload({})", String::from_utf8_lossy(&self.0))
    }
}

/// True if no byte of `text` must be escaped in a JSON string: no control character, no `"`
/// and no backslash (serde_json escapes exactly these, and leaves the rest of UTF-8 as it is).
/// Checked 16 bytes at a time, with no early exit inside a block, so that the check is a few
/// wide operations per block rather than a branch per byte.
fn needs_no_escape(text: &[u8]) -> bool {
    let escapes = |chunk: &[u8]| {
        chunk.iter().fold(false, |any, &b| {
            any | (b < 0x20) | (b == b'"') | (b == b'\\')
        })
    };
    let mut chunks = text.chunks_exact(16);
    !(chunks.any(escapes) || escapes(chunks.remainder()))
}

/// A JSON value read the way a strict parser reads it, keeping nothing: every string is
/// decoded, so a lone UTF-16 surrogate escape (`"\ud800"`) is an error, and every number must
/// fit a double. Both are valid JSON grammar that `IgnoredAny` would let through, but strict
/// parsers (serde, many others) refuse the whole envelope that carries them, so one such
/// publish would break every strict subscriber of the channel.
struct StrictJson;

impl<'de> serde::Deserialize<'de> for StrictJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictJsonVisitor)
    }
}

struct StrictJsonVisitor;

impl<'de> serde::de::Visitor<'de> for StrictJsonVisitor {
    type Value = StrictJson;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }

    fn visit_i64<E>(self, _: i64) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }

    fn visit_u64<E>(self, _: u64) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }

    fn visit_f64<E>(self, _: f64) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }

    fn visit_str<E>(self, _: &str) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }

    fn visit_unit<E>(self) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<StrictJson, A::Error> {
        while seq.next_element::<StrictJson>()?.is_some() {}
        Ok(StrictJson)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<StrictJson, A::Error> {
        while map.next_entry::<StrictJson, StrictJson>()?.is_some() {}
        Ok(StrictJson)
    }
}

/// Removes whitespace outside strings from already-validated JSON.
fn compact_json(json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(json.len());
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            if b == b'"' {
                in_string = true;
            }
            out.push(b);
        }
    }
    Bytes::from(out)
}

/// A published message with its position, shared (`Arc`) by history and all subscribers.
pub struct Message {
    cid: ChannelId,
    position: Position,
    time_ms: u64,
    envelope: Bytes,
    data_range: std::ops::Range<usize>,
    sse_event: OnceLock<(Bytes, usize)>,
    script_safe: OnceLock<Bytes>,
    websocket_frame: OnceLock<Bytes>,
}

impl Message {
    /// Builds the message and its JSON envelope
    /// `{"cid":…,"id":…,"epoch":…,"data":…,"time":…}`.
    pub fn new(cid: ChannelId, position: Position, time_ms: u64, data: &Payload) -> Arc<Self> {
        // Built in one buffer of the exact size: this runs once per publish.
        let mut offset = itoa::Buffer::new();
        let offset = offset.format(position.offset);
        let epoch = position.epoch.text();
        let mut time = itoa::Buffer::new();
        let time = time.format(time_ms);
        // Channel ids and epochs never need JSON escaping (see `channel`, `position`).
        let parts_before_data: [&[u8]; 7] = [
            b"{\"cid\":\"",
            cid.as_str().as_bytes(),
            b"\",\"id\":",
            offset.as_bytes(),
            b",\"epoch\":\"",
            epoch.as_str().as_bytes(),
            b"\",\"data\":",
        ];
        let parts_after_data: [&[u8]; 3] = [b",\"time\":", time.as_bytes(), b"}"];
        let before: usize = parts_before_data.iter().map(|part| part.len()).sum();
        let after: usize = parts_after_data.iter().map(|part| part.len()).sum();
        let mut bytes = BytesMut::with_capacity(before + data.len() + after);
        for part in parts_before_data {
            bytes.put_slice(part);
        }
        let data_range = bytes.len()..bytes.len() + data.len();
        bytes.put_slice(data.as_bytes());
        for part in parts_after_data {
            bytes.put_slice(part);
        }
        Arc::new(Self {
            cid,
            position,
            time_ms,
            envelope: bytes.freeze(),
            data_range,
            sse_event: OnceLock::new(),
            script_safe: OnceLock::new(),
            websocket_frame: OnceLock::new(),
        })
    }

    /// The channel the message was published to.
    pub fn cid(&self) -> &ChannelId {
        &self.cid
    }

    /// The message's position (its `epoch` and `id`).
    pub fn position(&self) -> Position {
        self.position
    }

    /// The message's offset (`id`).
    pub fn offset(&self) -> u64 {
        self.position.offset
    }

    /// The message's epoch.
    pub fn epoch(&self) -> Epoch {
        self.position.epoch
    }

    /// Server time of publication, in milliseconds since the Unix epoch.
    pub fn time_ms(&self) -> u64 {
        self.time_ms
    }

    /// The JSON envelope; valid UTF-8, one line.
    pub fn envelope(&self) -> &Bytes {
        &self.envelope
    }

    /// The JSON `data` value as it appears inside the envelope.
    pub fn data(&self) -> &[u8] {
        &self.envelope[self.data_range.clone()]
    }

    /// The SSE event for a subscriber of this channel alone:
    /// `id: EPOCH:ID\ndata: ENVELOPE\n\n`.
    pub fn sse_event(&self) -> Bytes {
        self.sse_parts().0.clone()
    }

    /// The SSE event without its `id:` line, for connections that write their own
    /// (multi-channel) id: `data: ENVELOPE\n\n`.
    pub fn sse_data(&self) -> Bytes {
        let (event, data_start) = self.sse_parts();
        event.slice(*data_start..)
    }

    fn sse_parts(&self) -> &(Bytes, usize) {
        self.sse_event.get_or_init(|| {
            let id = format!("id: {}\n", self.position);
            let mut out = BytesMut::with_capacity(id.len() + self.envelope.len() + 9);
            out.put_slice(id.as_bytes());
            out.put_slice(b"data: ");
            out.put_slice(&self.envelope);
            out.put_slice(b"\n\n");
            (out.freeze(), id.len())
        })
    }

    /// The envelope as a complete, unmasked WebSocket text frame (RFC 6455 §5.2): the same
    /// bytes go to every WebSocket subscriber. Lent, not cloned: a direct write borrows it, and
    /// only a connection that keeps it (a queue, a partial write) pays for a reference count,
    /// an atomic on a cache line every thread writing this message touches.
    pub fn websocket_frame(&self) -> &Bytes {
        self.websocket_frame
            .get_or_init(|| websocket_frame(OPCODE_TEXT, &self.envelope))
    }

    /// The envelope made safe to embed in an HTML `<script>` element: `<`, `>`, `&`, U+2028 and
    /// U+2029 are written as `\u` escapes. They can only occur inside JSON strings, where the
    /// escape means the same character, so the value is unchanged.
    pub fn script_safe_envelope(&self) -> Bytes {
        self.script_safe
            .get_or_init(|| script_safe_json(&self.envelope))
            .clone()
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("cid", &self.cid)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

/// WebSocket opcode of a text frame.
pub const OPCODE_TEXT: u8 = 0x1;

/// How many of `messages`, from the first, are one channel's consecutive messages (same
/// epoch, each offset one more than the one before): a run a connection standing just before
/// the first can take without judging each.
pub fn in_sequence(messages: &[Arc<Message>]) -> usize {
    if messages.is_empty() {
        return 0;
    }
    1 + messages
        .windows(2)
        .take_while(|pair| {
            let (a, b) = (pair[0].position(), pair[1].position());
            a.epoch == b.epoch
                && pair[0].cid() == pair[1].cid()
                && a.offset.checked_add(1) == Some(b.offset)
        })
        .count()
}

/// A complete, final, unmasked server-to-client WebSocket frame with `opcode` and `payload`.
pub fn websocket_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    out.put_u8(0x80 | (opcode & 0x0f));
    match payload.len() {
        n if n < 126 => out.put_u8(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.put_u8(126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(127);
            out.put_u64(n as u64);
        }
    }
    out.put_slice(payload);
    out.freeze()
}

/// Escapes the characters that could end or confuse a `<script>` element.
pub fn script_safe_json(json: &Bytes) -> Bytes {
    if !json.iter().any(|b| matches!(b, b'<' | b'>' | b'&' | 0xE2)) {
        return json.clone();
    }
    let mut out = BytesMut::with_capacity(json.len() + 32);
    let mut i = 0;
    while i < json.len() {
        let b = json[i];
        match b {
            b'<' => out.put_slice(b"\\u003c"),
            b'>' => out.put_slice(b"\\u003e"),
            b'&' => out.put_slice(b"\\u0026"),
            0xE2 if is_line_separator(&json[i..]) => {
                out.put_slice(if json[i + 2] == 0xA8 {
                    b"\\u2028"
                } else {
                    b"\\u2029"
                });
                i += 3;
                continue;
            }
            _ => out.put_u8(b),
        }
        i += 1;
    }
    out.freeze()
}

/// U+2028 and U+2029 in UTF-8: E2 80 A8 / E2 80 A9.
fn is_line_separator(w: &[u8]) -> bool {
    w.len() >= 3 && w[0] == 0xE2 && w[1] == 0x80 && (w[2] == 0xA8 || w[2] == 0xA9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_sequence_counts_a_channels_consecutive_messages() {
        let at = |cid: &str, epoch: u64, offset: u64| {
            let position = Position {
                epoch: Epoch::from_u64(epoch),
                offset,
            };
            let payload = Payload::from_text(b"x").expect("payload");
            Message::new(ChannelId::parse(cid).expect("cid"), position, 0, &payload)
        };
        assert_eq!(in_sequence(&[]), 0);
        assert_eq!(in_sequence(&[at("a", 1, 9)]), 1);
        let run = [at("a", 1, 1), at("a", 1, 2), at("a", 1, 3), at("a", 1, 5)];
        assert_eq!(in_sequence(&run), 3, "5 does not follow 3");
        assert_eq!(
            in_sequence(&[at("a", 1, 1), at("a", 2, 2)]),
            1,
            "another epoch"
        );
        assert_eq!(
            in_sequence(&[at("a", 1, 1), at("b", 1, 2)]),
            1,
            "another channel"
        );
    }

    fn msg(data: &Payload) -> Arc<Message> {
        Message::new(
            ChannelId::parse("chat:5").expect("cid"),
            Position {
                epoch: Epoch::parse("k3f9").expect("epoch"),
                offset: 17,
            },
            1_764_167_000_123,
            data,
        )
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;
        use serde_json::{json, Value};

        /// Arbitrary JSON values, nested a few levels.
        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(Value::from),
                any::<String>().prop_map(Value::from),
            ];
            leaf.prop_recursive(4, 64, 8, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                    prop::collection::btree_map(any::<String>(), inner, 0..8)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #[test]
            fn text_payloads_are_what_serde_json_writes(
                text in prop_oneof![
                    any::<String>(),
                    "[ -~]{0,80}",
                    "[a-z \"\\\\\u{0}-\u{1f}\u{7f}é€😀]{0,80}",
                ],
            ) {
                let payload = Payload::from_text(text.as_bytes()).expect("UTF-8 is accepted");
                let expected = serde_json::to_vec(&text).expect("a string serialises");
                prop_assert_eq!(payload.as_bytes(), expected.as_slice());
            }

            #[test]
            fn envelopes_carry_json_bodies_exactly(
                value in json_value(),
                pretty in any::<bool>(),
                cid in "[a-z0-9_.@=-]{1,40}",
                epoch in 1u64..(1 << 40),
                offset in any::<u64>(),
                time in any::<u64>(),
            ) {
                let body = if pretty {
                    serde_json::to_vec_pretty(&value).expect("json")
                } else {
                    serde_json::to_vec(&value).expect("json")
                };
                let payload = Payload::from_json(&body).expect("valid JSON is accepted");
                let position = Position { epoch: Epoch::from_u64(epoch), offset };
                let cid = ChannelId::parse(&cid).expect("cid");
                let message = Message::new(cid.clone(), position, time, &payload);
                prop_assert!(!message.envelope().contains(&b'\n'));
                // The data is the body's JSON text, compacted: byte for byte what a compact
                // serializer writes (comparing parsed floats would test serde's float parser).
                let compact = serde_json::to_vec(&value).expect("json");
                prop_assert_eq!(message.data(), compact.as_slice());
                let mut envelope: Value =
                    serde_json::from_slice(message.envelope()).expect("envelope");
                envelope["data"] = Value::Null;
                prop_assert_eq!(
                    envelope,
                    json!({
                        "cid": cid.as_str(),
                        "id": offset,
                        "epoch": Epoch::from_u64(epoch).to_string(),
                        "data": null,
                        "time": time,
                    })
                );
            }

            #[test]
            fn text_bodies_become_the_same_string(text in any::<String>()) {
                let payload = Payload::from_text(text.as_bytes()).expect("UTF-8");
                let back: Value = serde_json::from_slice(payload.as_bytes()).expect("JSON");
                prop_assert_eq!(back, Value::String(text));
            }

            #[test]
            fn script_safe_envelopes_mean_the_same(text in any::<String>()) {
                let payload = Payload::from_text(text.as_bytes()).expect("UTF-8");
                let position = Position { epoch: Epoch::from_u64(7), offset: 1 };
                let message = Message::new(ChannelId::parse("c").expect("cid"), position, 0, &payload);
                let safe = message.script_safe_envelope();
                prop_assert!(!safe.iter().any(|b| matches!(b, b'<' | b'>' | b'&')));
                let a: Value = serde_json::from_slice(&safe).expect("JSON");
                let b: Value = serde_json::from_slice(message.envelope()).expect("JSON");
                prop_assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn envelope_has_the_documented_shape() {
        let m = msg(&Payload::from_json(br#" { "text" : "hi there" } "#).expect("json"));
        assert_eq!(
            &m.envelope()[..],
            br#"{"cid":"chat:5","id":17,"epoch":"k3f9","data":{"text":"hi there"},"time":1764167000123}"#
        );
        assert_eq!(m.data(), br#"{"text":"hi there"}"#);
        let parsed: serde_json::Value = serde_json::from_slice(m.envelope()).expect("valid JSON");
        assert_eq!(parsed["data"]["text"], "hi there");
    }

    #[test]
    fn json_bodies_are_validated_and_compacted() {
        let p = Payload::from_json(b"[1,\n 2,\t{\"a b\": \"c\\\" d\\n\"}]\r\n").expect("json");
        assert_eq!(p.as_bytes(), br#"[1,2,{"a b":"c\" d\n"}]"#);
        assert!(matches!(
            Payload::from_json(b""),
            Err(PayloadError::BadJson(_))
        ));
        assert!(matches!(
            Payload::from_json(b"{"),
            Err(PayloadError::BadJson(_))
        ));
        assert!(matches!(
            Payload::from_json(b"1 2"),
            Err(PayloadError::BadJson(_))
        ));
        assert!(matches!(
            Payload::from_json(b"\"\xff\""),
            Err(PayloadError::NotUtf8(1))
        ));
        for strictly_invalid in [
            &br#""\ud800""#[..],
            br#"{"k\udfff":1}"#,
            br#"["a\ud83d"]"#,
            b"1e400",
            b"-1e309",
        ] {
            assert!(
                matches!(
                    Payload::from_json(strictly_invalid),
                    Err(PayloadError::BadJson(_))
                ),
                "{}",
                String::from_utf8_lossy(strictly_invalid)
            );
        }
        assert!(Payload::from_json(br#"["\ud83d\ude00",1e308,true,null]"#).is_ok());
        let deep = "[".repeat(10_000);
        assert!(
            Payload::from_json(deep.as_bytes()).is_err(),
            "deep nesting is refused"
        );
    }

    #[test]
    fn text_bodies_become_json_strings() {
        let p = Payload::from_text("line1\nquote\" ✓".as_bytes()).expect("text");
        assert_eq!(p.as_bytes(), "\"line1\\nquote\\\" ✓\"".as_bytes());
        assert_eq!(Payload::from_text(b"").expect("empty").as_bytes(), b"\"\"");
        assert!(matches!(
            Payload::from_text(b"ok\xc3"),
            Err(PayloadError::NotUtf8(2))
        ));
    }

    #[test]
    fn sse_forms_share_one_buffer() {
        let m = msg(&Payload::from_text(b"x").expect("text"));
        let event = m.sse_event();
        assert!(event.starts_with(b"id: k3f9:17\ndata: {\"cid\""));
        assert!(event.ends_with(b"}\n\n"));
        assert_eq!(&m.sse_data()[..], &event[12..]);
        assert_eq!(m.sse_event().as_ptr(), event.as_ptr(), "encoded once");
    }

    #[test]
    fn websocket_frames_have_rfc6455_headers() {
        let m = msg(&Payload::from_text(b"x").expect("text"));
        let frame = m.websocket_frame();
        assert_eq!(frame[0], 0x81, "FIN + text");
        assert_eq!(usize::from(frame[1]), m.envelope().len());
        assert_eq!(&frame[2..], &m.envelope()[..]);
        assert_eq!(m.websocket_frame().as_ptr(), frame.as_ptr(), "encoded once");
        let medium = websocket_frame(0x2, &[7; 300]);
        assert_eq!(&medium[..4], &[0x82, 126, 1, 44]);
        let large = websocket_frame(0x1, &vec![b'a'; 70_000]);
        assert_eq!(&large[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        assert_eq!(large.len(), 70_010);
    }

    #[test]
    fn script_breakouts_are_escaped() {
        let m = msg(
            &Payload::from_text("</script><script>alert(1)</script>&\u{2028}".as_bytes())
                .expect("text"),
        );
        let safe = m.script_safe_envelope();
        let text = std::str::from_utf8(&safe).expect("utf8");
        assert!(!text.contains('<') && !text.contains('>') && !text.contains('&'));
        assert!(!text.contains('\u{2028}'));
        let back: serde_json::Value = serde_json::from_str(text).expect("still JSON");
        assert_eq!(back["data"], "</script><script>alert(1)</script>&\u{2028}");
        let plain = msg(&Payload::from_text(b"plain").expect("text"));
        assert_eq!(
            plain.script_safe_envelope().as_ptr(),
            plain.envelope().as_ptr()
        );
    }
}
