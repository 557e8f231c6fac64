//! `POST /publish`: the backend's way in.
//!
//! Checks who is publishing (loopback, or a configured key: `access::keys`) and that every
//! channel's namespace exists, reads the body within the size
//! limit, validates it once into a payload and publishes it to each named channel. The answer
//! reports each message's position and how many local subscribers it is handed to; it never
//! waits for subscribers to read. A publish to one channel that the connection front serves
//! is answered before its fan-out, as soon as the message has its position (see
//! `answer_first`); any other publish once every channel has had its fan-out.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};

use herald_core::{ChannelId, Payload, Published};

use crate::answer_first::AnswerFirst;
use crate::app::App;
use crate::http::{json, ApiError, Body, RequestBody};
use crate::query::SubscribeQuery;

/// Handles one publish request.
pub async fn handle<B: RequestBody>(
    app: &Arc<App>,
    request: Box<Request<B>>,
    peer: SocketAddr,
    answer_first: Option<&AnswerFirst>,
) -> Result<Response<Body>, ApiError> {
    app.access.keys.authorize(request.headers(), peer)?;
    let query = SubscribeQuery::parse(
        request.uri().query(),
        app.config.max_channels_per_connection,
    )?;
    query.require_cids()?;
    let cids = query.cids;
    // Every channel's namespace must exist before anything is published.
    for cid in &cids {
        app.access.namespace(cid)?;
    }
    let max = app.config.max_body;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(ApiError::PayloadTooLarge(max));
    }
    let is_json = is_json(request.headers());
    let body = Limited::new((*request).into_body(), max)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::PayloadTooLarge(max)
            } else {
                ApiError::BadRequest(format!("could not read body: {e}"))
            }
        })?
        .to_bytes();
    let payload = if is_json {
        Payload::from_json(&body)
    } else {
        Payload::from_text(&body)
    }
    .map_err(|e| ApiError::BadRequest(e.to_string()))?;

    if let (Some(answer), [cid]) = (answer_first, cids.as_slice()) {
        // Answered as soon as the message has its position, before its fan-out.
        let mut answered = None;
        let outcome = app
            .engine
            .publish_answering_first(cid, &payload, &mut |outcome: &Published| {
                let body = answer_body([(cid, outcome)]);
                answered = Some(answer.send_json(StatusCode::OK, &body));
            })
            .await?;
        return Ok(answered.unwrap_or_else(|| json(StatusCode::OK, answer_body([(cid, &outcome)]))));
    }
    let mut outcomes = Vec::with_capacity(cids.len());
    for cid in &cids {
        outcomes.push(app.engine.publish(cid, &payload).await?);
    }
    Ok(json(
        StatusCode::OK,
        answer_body(cids.iter().zip(&outcomes)),
    ))
}

/// The answer to a publish: each channel's message position and subscriber count.
fn answer_body<'a>(outcomes: impl IntoIterator<Item = (&'a ChannelId, &'a Published)>) -> String {
    // Written by hand: this is the publish hot path, and every field is a number or a string
    // that never needs escaping (channel ids and epochs have safe alphabets).
    let outcomes = outcomes.into_iter();
    let mut body = String::with_capacity(32 + outcomes.size_hint().0 * 112);
    body.push_str("{\"published\":[");
    for (i, (cid, outcome)) in outcomes.enumerate() {
        let position = outcome.message.position();
        if i > 0 {
            body.push(',');
        }
        body.push_str("{\"cid\":\"");
        body.push_str(cid.as_str());
        body.push_str("\",\"id\":");
        body.push_str(itoa::Buffer::new().format(position.offset));
        body.push_str(",\"epoch\":\"");
        body.push_str(position.epoch.text().as_str());
        body.push_str("\",\"time\":");
        body.push_str(itoa::Buffer::new().format(outcome.message.time_ms()));
        body.push_str(",\"subscribers\":");
        body.push_str(itoa::Buffer::new().format(outcome.subscribers));
        body.push('}');
    }
    body.push_str("]}");
    body
}

/// `application/json` or any `…+json` media type, in any case, parameters ignored.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return false;
    };
    let media = value.as_bytes().split(|&b| b == b';').next().unwrap_or(b"");
    let media = media.trim_ascii();
    media.eq_ignore_ascii_case(b"application/json")
        || media
            .len()
            .checked_sub(5)
            .is_some_and(|start| media[start..].eq_ignore_ascii_case(b"+json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn json_media_types() {
        let mut h = HeaderMap::new();
        for (value, expected) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/vnd.api+json", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
            ("APPLICATION/LD+JSON ; profile=x", true),
            ("+json", true),
            ("json", false),
            ("", false),
            ("application/jsonx", false),
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_json(&h), expected, "{value}");
        }
    }
}
