//! Short polling, `GET /messages?cid=C&since=ID`: the lecture's first transport.
//!
//! No subscription: each request reads history after the cursor and answers at once with a JSON
//! array of envelopes. The array is assembled from the envelopes encoded at publish time. The
//! `X-Herald-Cursor` header tells the client where to continue; `X-Herald-Gap` lists gaps.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};

use herald_core::{format_cursor, ChannelCursor, Gap, Message, Position};

use crate::app::App;
use crate::http::{json, ApiError, Body};
use crate::query::SubscribeQuery;

use super::session::merge_oldest_first;

/// Default and largest `limit` of one poll.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest `limit` accepted.
pub const MAX_LIMIT: usize = 1000;

/// Header carrying the composite cursor to pass as the next `since`.
pub const CURSOR_HEADER: &str = "x-herald-cursor";
/// Header carrying the gap objects as a JSON array.
pub const GAP_HEADER: &str = "x-herald-gap";

// The two names made once: a name made from text is checked (and a custom one like these
// allocated) each time, and every long-poll answer carries a cursor.
static CURSOR_NAME: HeaderName = HeaderName::from_static(CURSOR_HEADER);
static GAP_NAME: HeaderName = HeaderName::from_static(GAP_HEADER);

/// Handles one short poll.
pub async fn handle<B>(app: &Arc<App>, request: &Request<B>) -> Result<Response<Body>, ApiError> {
    let query = SubscribeQuery::parse(
        request.uri().query(),
        app.config.max_channels_per_connection,
    )?;
    let cids = query.require_cids()?;
    // No session: the token is checked on every poll.
    let identity = app
        .access
        .identify(query.token.as_deref(), request.headers())?;
    for cid in cids {
        app.access.may_subscribe(identity.as_deref(), cid)?;
    }
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if limit > MAX_LIMIT {
        return Err(ApiError::BadRequest(format!(
            "limit {limit} is too large: at most {MAX_LIMIT}"
        )));
    }
    // Without a cursor a poll returns what history holds; that is not a gap.
    let from_start = query.since.is_none() && query.last_event_id.is_none();
    let cursors = if from_start {
        vec![ChannelCursor::Offset(0); cids.len()]
    } else {
        query.cursors(None)?
    };
    let mut reads = Vec::with_capacity(cids.len());
    let mut gaps = Vec::new();
    for (cid, cursor) in cids.iter().zip(cursors) {
        let mut read = app.engine.read(cid, cursor, limit).await?;
        if !from_start {
            gaps.extend(read.gap.take());
        }
        reads.push(read);
    }
    // `limit` bounds the whole answer: take the oldest messages over all channels, and give
    // each channel the position of the last of its messages that made it in.
    let messages = merge_oldest_first(reads.iter().map(|r| r.messages.clone()).collect(), limit);
    let mut taken = vec![0usize; cids.len()];
    for message in &messages {
        if let Some(index) = cids.iter().position(|c| c == message.cid()) {
            taken[index] += 1;
        }
    }
    let positions: Vec<Position> = reads
        .iter()
        .zip(taken)
        .map(|(read, taken)| {
            let last_taken = taken.checked_sub(1).and_then(|i| read.messages.get(i));
            match (last_taken, read.messages.first()) {
                (Some(last), _) => last.position(),
                (None, Some(first)) => Position {
                    epoch: first.epoch(),
                    offset: first.offset() - 1,
                },
                (None, None) => read.position,
            }
        })
        .collect();
    Ok(array_response(&messages, &format_cursor(&positions), &gaps))
}

/// `200` with the messages as a JSON array and the cursor and gap headers.
pub fn array_response(messages: &[Arc<Message>], cursor: &str, gaps: &[Gap]) -> Response<Body> {
    let mut response = json(StatusCode::OK, json_array(messages));
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(cursor) {
        headers.insert(CURSOR_NAME.clone(), value);
    }
    if !gaps.is_empty() {
        let list = gaps.iter().map(Gap::to_json).collect::<Vec<_>>().join(",");
        if let Ok(value) = HeaderValue::from_str(&format!("[{list}]")) {
            headers.insert(GAP_NAME.clone(), value);
        }
    }
    response
}

/// The envelopes as one JSON array, copied once from their shared encodings.
pub fn json_array(messages: &[Arc<Message>]) -> Bytes {
    let len = messages
        .iter()
        .map(|m| m.envelope().len() + 1)
        .sum::<usize>()
        + 2;
    let mut out = BytesMut::with_capacity(len);
    out.put_u8(b'[');
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(m.envelope());
    }
    out.put_u8(b']');
    out.freeze()
}
