//! `POST /publish`: the backend's way in.
//!
//! Checks who is publishing (loopback, or a configured key), reads the body within the size
//! limit, validates it once into a payload and publishes it to each named channel. The answer
//! reports each message's position and how many local subscribers it was handed to; it never
//! waits for subscribers to read.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use herald_core::Payload;

use crate::app::App;
use crate::http::{json, ApiError, Body};
use crate::query::SubscribeQuery;

/// Handles one publish request.
pub async fn handle(
    app: &Arc<App>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, ApiError> {
    authorize(&app.config.publish_keys, request.headers(), peer)?;
    let query = SubscribeQuery::parse(
        request.uri().query(),
        app.config.max_channels_per_connection,
    )?;
    let cids = query.require_cids()?.to_vec();
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
    let body = Limited::new(request.into_body(), max)
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

    // Written by hand: this is the publish hot path, and every field is a number or a string
    // that never needs escaping (channel ids and epochs have safe alphabets).
    let mut body = String::with_capacity(32 + cids.len() * 96);
    body.push_str("{\"published\":[");
    for (i, cid) in cids.iter().enumerate() {
        let outcome = app.engine.publish(cid, &payload).await?;
        let position = outcome.message.position();
        if i > 0 {
            body.push(',');
        }
        let _ = write!(
            body,
            r#"{{"cid":"{cid}","id":{},"epoch":"{}","time":{},"subscribers":{}}}"#,
            position.offset,
            position.epoch,
            outcome.message.time_ms(),
            outcome.subscribers
        );
    }
    body.push_str("]}");
    Ok(json(StatusCode::OK, body))
}

/// `application/json` or any `…+json` media type, parameters ignored.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|media| media == "application/json" || media.ends_with("+json"))
}

/// Loopback may publish freely; anyone else needs one of the configured keys. A key that is
/// presented must be valid, from loopback too.
fn authorize(keys: &[String], headers: &HeaderMap, peer: SocketAddr) -> Result<(), ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .ok_or_else(|| ApiError::Unauthorized("Authorization must be `Bearer KEY`".into()))
        })
        .transpose()?;
    match presented {
        Some(key)
            if keys
                .iter()
                .any(|k| constant_time_eq(k.as_bytes(), key.as_bytes())) =>
        {
            Ok(())
        }
        Some(_) => Err(ApiError::Unauthorized("invalid publish key".into())),
        None if peer.ip().to_canonical().is_loopback() => Ok(()),
        None if keys.is_empty() => Err(ApiError::Forbidden(
            "publishing is allowed from loopback only (no publish keys are configured)".into(),
        )),
        None => Err(ApiError::Forbidden(
            "publishing from this address needs `Authorization: Bearer KEY`".into(),
        )),
    }
}

/// Compares secrets without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(auth: Option<&'static str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(a));
        }
        h
    }

    #[test]
    fn loopback_publishes_without_a_key_others_need_one() {
        let local: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:1".parse().expect("addr");
        let remote: SocketAddr = "10.0.0.1:1".parse().expect("addr");
        let keys = vec!["k1".to_string(), "k2".to_string()];
        assert!(authorize(&[], &headers(None), local).is_ok());
        assert!(authorize(&[], &headers(None), mapped).is_ok());
        assert!(matches!(
            authorize(&[], &headers(None), remote),
            Err(ApiError::Forbidden(_))
        ));
        assert!(matches!(
            authorize(&keys, &headers(None), remote),
            Err(ApiError::Forbidden(_))
        ));
        assert!(authorize(&keys, &headers(Some("Bearer k2")), remote).is_ok());
        assert!(matches!(
            authorize(&keys, &headers(Some("Bearer nope")), remote),
            Err(ApiError::Unauthorized(_))
        ));
        assert!(matches!(
            authorize(&keys, &headers(Some("Basic k1")), local),
            Err(ApiError::Unauthorized(_))
        ));
    }

    #[test]
    fn json_media_types() {
        let mut h = HeaderMap::new();
        for (value, expected) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/vnd.api+json", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_json(&h), expected, "{value}");
        }
    }
}
