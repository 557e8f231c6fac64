//! The forever iframe: `<iframe src="/listen?cid=C&transport=iframe&callback=NAME">`.
//!
//! An HTML page that never ends. It opens with padding so browsers start rendering at once,
//! then calls `parent.NAME(…)` in a `<script>` element for each message. The JSON inside is
//! made script-safe once per message (see `Message::script_safe_envelope`), so published data
//! cannot close the element; the callback name is checked to be a plain identifier path.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderValue, Response, StatusCode};

use herald_core::{Gap, Message, Subscriptions};

use crate::access::Identity;
use crate::app::App;
use crate::http::{boxed, ApiError, Body};
use crate::query::SubscribeQuery;
use crate::registry::Kind;

use super::session::Session;
use super::stream::{EventStream, StreamFormat};

/// Longest callback name accepted.
const MAX_CALLBACK_LEN: usize = 128;
/// Bytes of padding after the page head (browsers buffer the first 1–2 KiB before rendering).
const PADDING: usize = 2048;
/// The callback used when none is given: the lecture's `parent.handle(…)`.
const DEFAULT_CALLBACK: &str = "handle";

/// The iframe wire format for one callback.
pub struct IframeFormat {
    open: Bytes,
}

impl IframeFormat {
    fn new(callback: &str) -> Self {
        Self {
            open: Bytes::from(format!("<script>parent.{callback}(")),
        }
    }

    fn call(&self, json: &[u8], out: &mut BytesMut) {
        out.put_slice(&self.open);
        out.put_slice(json);
        out.put_slice(b")</script>\n");
    }
}

impl StreamFormat for IframeFormat {
    fn message(&self, message: &Message, _: &Subscriptions, out: &mut BytesMut) {
        self.call(&message.script_safe_envelope(), out);
    }

    fn shared(&self, _: &Message, _: &Subscriptions) -> Option<Bytes> {
        None
    }

    fn gap(&self, gap: &Gap, out: &mut BytesMut) {
        // Gap JSON holds only ids and digits: nothing to escape.
        self.call(gap.to_json().as_bytes(), out);
    }

    fn keepalive(&self) -> Bytes {
        Bytes::from_static(b"<!-- -->\n")
    }

    fn disconnect(&self, reason: &str, reconnect: bool) -> Bytes {
        let object =
            serde_json::json!({"type": "disconnect", "reason": reason, "reconnect": reconnect});
        let mut out = BytesMut::new();
        self.call(object.to_string().as_bytes(), &mut out);
        out.put_slice(b"</body></html>\n");
        out.freeze()
    }
}

/// True for `name` or `a.b.c` where each part is a JavaScript identifier (ASCII).
pub fn is_valid_callback(name: &str) -> bool {
    name.len() <= MAX_CALLBACK_LEN
        && name.split('.').all(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        })
}

/// Opens a forever-iframe stream.
pub async fn handle(
    app: &Arc<App>,
    query: &SubscribeQuery,
    identity: Option<Arc<Identity>>,
) -> Result<Response<Body>, ApiError> {
    let callback = query.callback.as_deref().unwrap_or(DEFAULT_CALLBACK);
    if !is_valid_callback(callback) {
        return Err(ApiError::BadRequest(format!(
            "invalid callback {:?}: expected a JavaScript identifier path such as `handle` or `app.onMessage` (at most {MAX_CALLBACK_LEN} bytes)",
            callback.chars().take(MAX_CALLBACK_LEN + 1).collect::<String>()
        )));
    }
    let cursors = query.cursors(None)?;
    let (session, backlog) =
        Session::open(app, Kind::Stream, identity, &query.cids, &cursors).await?;
    let mut prelude = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>herald</title></head><body>\n<!--",
    );
    prelude.push_str(&" ".repeat(PADDING));
    prelude.push_str("-->\n");
    let stream = EventStream::new(
        session,
        IframeFormat::new(callback),
        Bytes::from(prelude),
        backlog,
    );
    let mut response = Response::new(boxed(stream));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    // Only the server's own pages and allowed origins may embed the stream.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        app.browser.frame_ancestors().clone(),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_names() {
        for ok in ["handle", "app.push.onMessage", "_x", "$", "a1.b2"] {
            assert!(is_valid_callback(ok), "{ok}");
        }
        for bad in [
            "",
            "1a",
            "a..b",
            "a.",
            "alert(1)",
            "a;b",
            "a b",
            "a[0]",
            "é",
            &"a".repeat(129),
        ] {
            assert!(!is_valid_callback(bad), "{bad}");
        }
    }
}
