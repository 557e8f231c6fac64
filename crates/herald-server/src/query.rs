//! The query string of subscribe and poll requests, parsed and validated once.
//!
//! Every parameter these endpoints accept is read here into a [`SubscribeQuery`], and every
//! problem becomes a 400 naming the parameter, before any channel is touched.

use std::borrow::Cow;

use herald_core::{parse_cursor, ChannelCursor, ChannelId};

use crate::http::ApiError;

/// The transport a `/listen` request asks for with `transport=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportParam {
    /// `transport=ws` / `websocket`.
    WebSocket,
    /// `transport=sse` / `eventsource`.
    Sse,
    /// `transport=iframe`.
    Iframe,
    /// `transport=longpoll` / `long-polling` / `comet`.
    LongPoll,
}

/// Parsed parameters of `/listen`, `/messages` and `/publish`.
#[derive(Debug, Default)]
pub struct SubscribeQuery {
    /// The channels, in request order, without duplicates.
    pub cids: Vec<ChannelId>,
    /// `since`, as given.
    pub since: Option<String>,
    /// `last_event_id`, as given.
    pub last_event_id: Option<String>,
    /// `limit`.
    pub limit: Option<usize>,
    /// `transport`.
    pub transport: Option<TransportParam>,
    /// `callback` (iframe).
    pub callback: Option<String>,
    /// `token`: a subscriber token (JWT), for clients that cannot set `Authorization`.
    pub token: Option<String>,
}

/// Longest query string accepted.
const MAX_QUERY_LEN: usize = 64 * 1024;

impl SubscribeQuery {
    /// Parses a raw query string; `max_channels` bounds the number of `cid`s.
    pub fn parse(raw: Option<&str>, max_channels: usize) -> Result<Self, ApiError> {
        let raw = raw.unwrap_or("");
        if raw.len() > MAX_QUERY_LEN {
            return Err(ApiError::BadRequest("query string too long".into()));
        }
        let mut query = Self::default();
        for (key, value) in pairs(raw) {
            match &*key {
                "cid" => {
                    let cid = ChannelId::parse(&value)
                        .map_err(|e| ApiError::BadRequest(format!("invalid cid: {e}")))?;
                    if query.cids.contains(&cid) {
                        return Err(ApiError::BadRequest(format!("duplicate cid {cid}")));
                    }
                    if query.cids.len() == max_channels {
                        return Err(ApiError::BadRequest(format!(
                            "too many cids: at most {max_channels} per request"
                        )));
                    }
                    query.cids.push(cid);
                }
                "since" => set_once(&mut query.since, "since", value.into_owned())?,
                "last_event_id" => {
                    set_once(
                        &mut query.last_event_id,
                        "last_event_id",
                        value.into_owned(),
                    )?;
                }
                "limit" => {
                    let limit =
                        value
                            .parse::<usize>()
                            .ok()
                            .filter(|&n| n >= 1)
                            .ok_or_else(|| {
                                ApiError::BadRequest(format!(
                                    "invalid limit {value:?}: expected a positive integer"
                                ))
                            })?;
                    set_once(&mut query.limit, "limit", limit)?;
                }
                "transport" => {
                    let transport = match &*value {
                        "ws" | "websocket" => TransportParam::WebSocket,
                        "sse" | "eventsource" => TransportParam::Sse,
                        "iframe" => TransportParam::Iframe,
                        "longpoll" | "long-polling" | "comet" => TransportParam::LongPoll,
                        other => {
                            return Err(ApiError::BadRequest(format!(
                                "unknown transport {other:?}: use ws, sse, iframe or longpoll"
                            )))
                        }
                    };
                    set_once(&mut query.transport, "transport", transport)?;
                }
                "callback" => set_once(&mut query.callback, "callback", value.into_owned())?,
                "token" => set_once(&mut query.token, "token", value.into_owned())?,
                // Cache busters (`_=…`, as jQuery adds) and other unknown parameters are
                // ignored, as browsers and proxies add their own.
                _ => {}
            }
        }
        Ok(query)
    }

    /// The channels, or a 400 when there are none.
    pub fn require_cids(&self) -> Result<&[ChannelId], ApiError> {
        if self.cids.is_empty() {
            return Err(ApiError::BadRequest("missing cid parameter".into()));
        }
        Ok(&self.cids)
    }

    /// The per-channel cursors from the first present of `header` (SSE `Last-Event-ID`),
    /// `last_event_id` and `since`; all [`ChannelCursor::Latest`] when none is given.
    pub fn cursors(&self, header: Option<&str>) -> Result<Vec<ChannelCursor>, ApiError> {
        let (name, text) = match (header, &self.last_event_id, &self.since) {
            (Some(h), _, _) => ("Last-Event-ID", h),
            (None, Some(l), _) => ("last_event_id", l.as_str()),
            (None, None, Some(s)) => ("since", s.as_str()),
            (None, None, None) => return Ok(vec![ChannelCursor::Latest; self.cids.len()]),
        };
        parse_cursor(text, self.cids.len())
            .map_err(|e| ApiError::BadRequest(format!("invalid {name}: {e}")))
    }
}

/// The query's name/value pairs, as `form_urlencoded::parse` reads them (the test below holds
/// the two equal), but borrowed where nothing needs decoding and decoded in one pass into a
/// buffer of the right size where something does. That crate decodes every name and value
/// it meets; this runs for every long poll, whose `since` cursor has an encoded `:`.
fn pairs(raw: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    raw.split('&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| {
            let (key, value) = piece.split_once('=').unwrap_or((piece, ""));
            (decode(key), decode(value))
        })
}

/// One form-encoded name or value: `+` is a space, `%` and two hex digits a byte (a `%`
/// without them stays as it is), then UTF-8 with invalid sequences replaced.
///
/// Written here rather than taken from `percent-encoding`: that crate's decoder is an
/// iterator that a `Vec` extends byte by byte, and with the `+` pass in front of it a
/// `since` of 8 bytes cost about 800 instructions (callgrind) of a long poll's 23,000.
fn decode(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    if !bytes.iter().any(|&b| b == b'%' || b == b'+') {
        return Cow::Borrowed(text);
    }
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        decoded.push(match bytes[i] {
            b'+' => b' ',
            b'%' => match (hex_digit(bytes.get(i + 1)), hex_digit(bytes.get(i + 2))) {
                (Some(high), Some(low)) => {
                    i += 2;
                    high << 4 | low
                }
                _ => b'%',
            },
            other => other,
        });
        i += 1;
    }
    Cow::Owned(match String::from_utf8(decoded) {
        Ok(text) => text,
        Err(invalid) => String::from_utf8_lossy(invalid.as_bytes()).into_owned(),
    })
}

fn hex_digit(byte: Option<&u8>) -> Option<u8> {
    let digit = char::from(*byte?).to_digit(16)?;
    u8::try_from(digit).ok()
}

fn set_once<T>(slot: &mut Option<T>, name: &str, value: T) -> Result<(), ApiError> {
    if slot.is_some() {
        return Err(ApiError::BadRequest(format!("{name} given more than once")));
    }
    *slot = Some(value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repeated_cids_and_cursors() {
        let q = SubscribeQuery::parse(Some("cid=a&cid=b%3A1&since=5&_=123"), 64).expect("valid");
        assert_eq!(q.cids.len(), 2);
        assert_eq!(q.cids[1].as_str(), "b:1");
        assert_eq!(
            q.cursors(None).expect("cursor"),
            vec![ChannelCursor::Offset(5); 2]
        );
        assert_eq!(
            q.cursors(Some("1,2")).expect("header wins"),
            vec![ChannelCursor::Offset(1), ChannelCursor::Offset(2)]
        );
    }

    #[test]
    fn rejects_bad_parameters() {
        for bad in [
            "cid=a%20b",
            "cid=a&cid=a",
            "cid=a&limit=0",
            "cid=a&limit=x",
            "cid=a&transport=carrier-pigeon",
            "cid=a&since=1&since=2",
            "cid=a&token=x&token=y",
        ] {
            assert!(SubscribeQuery::parse(Some(bad), 64).is_err(), "{bad}");
        }
        assert!(SubscribeQuery::parse(Some("cid=a&cid=b"), 1).is_err());
        let q = SubscribeQuery::parse(Some("cid=a&since=x"), 64).expect("parses");
        assert!(q.cursors(None).is_err());
        let none = SubscribeQuery::parse(None, 64).expect("parses");
        assert!(none.require_cids().is_err());
    }

    #[test]
    fn pairs_read_a_query_as_form_urlencoded_does() {
        let same = |raw: &str| {
            let ours: Vec<_> = pairs(raw).collect();
            let theirs: Vec<_> = form_urlencoded::parse(raw.as_bytes()).collect();
            assert_eq!(ours, theirs, "{raw:?}");
        };
        for raw in [
            "",
            "&",
            "cid=a&&since=k3f9%3A4",
            "cid",
            "cid=",
            "=x",
            "a=b=c",
            "c%69d=x+y",
            "x=%zz&y=%e2%82%ac&z=%ff",
            "é=ü&+=+",
            "a=%+4&b=%4+1&c=%2B&d=%%41&e=%4",
        ] {
            same(raw);
        }
        let config = proptest::test_runner::Config::with_cases(4096);
        proptest::proptest!(config, |(raw in "[a-z%+=&0-9A-Fa-f\\x{e9}\\x{80}-\\x{ff}]{0,40}")| same(&raw));
    }
}
