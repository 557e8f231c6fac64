//! Server-Sent Events: `GET /listen` with `Accept: text/event-stream` (or `transport=sse`).
//!
//! Each message is an `id:` line with the connection's cursor and a `data:` line with the
//! envelope, so `EventSource`'s automatic reconnect (which sends `Last-Event-ID`) resumes
//! exactly. Single-channel streams send the event bytes encoded once at publish time; streams
//! over several channels write their own composite `id:` line before the shared `data:` part.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderValue, Request, Response, StatusCode};

use herald_core::{Gap, Message, Subscriptions};

use crate::access::Identity;
use crate::app::App;
use crate::front::{DirectSocket, PreFramed};
use crate::http::{boxed, ApiError, Body};
use crate::query::SubscribeQuery;
use crate::registry::Kind;

use super::session::Session;
use super::stream::{EventStream, StreamFormat};

/// The SSE wire format.
#[derive(Clone, Copy)]
pub struct SseFormat;

impl StreamFormat for SseFormat {
    fn message(&self, message: &Message, subscriptions: &Subscriptions, out: &mut BytesMut) {
        if subscriptions.len() == 1 {
            out.put_slice(&message.sse_event());
        } else {
            out.put_slice(b"id: ");
            out.put_slice(subscriptions.cursor().as_bytes());
            out.put_u8(b'\n');
            out.put_slice(&message.sse_data());
        }
    }

    fn shared(&self, message: &Message, subscriptions: &Subscriptions) -> Option<Bytes> {
        (subscriptions.len() == 1).then(|| message.sse_event())
    }

    fn gap(&self, gap: &Gap, out: &mut BytesMut) {
        out.put_slice(b"event: gap\ndata: ");
        out.put_slice(gap.to_json().as_bytes());
        out.put_slice(b"\n\n");
    }

    fn keepalive(&self) -> Bytes {
        Bytes::from_static(b":\n\n")
    }

    fn disconnect(&self, reason: &str, reconnect: bool) -> Bytes {
        let object =
            serde_json::json!({"type": "disconnect", "reason": reason, "reconnect": reconnect});
        Bytes::from(format!("event: disconnect\ndata: {object}\n\n"))
    }
}

/// Opens an SSE stream.
pub async fn handle<B>(
    app: &Arc<App>,
    request: &Request<B>,
    query: &SubscribeQuery,
    identity: Option<Arc<Identity>>,
    direct: Option<&DirectSocket>,
) -> Result<Response<Body>, ApiError> {
    let last_event_id = request
        .headers()
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::BadRequest("invalid Last-Event-ID: not ASCII".into()))
        })
        .transpose()?;
    let cursors = query.cursors(last_event_id)?;
    let (session, backlog) =
        Session::open(app, Kind::Stream, identity, &query.cids, &cursors).await?;
    let prelude = format!(
        "retry: {}\nid: {}\n\n",
        app.config.sse_retry.as_millis(),
        session.cursor()
    );
    let mut stream = EventStream::new(session, SseFormat, Bytes::from(prelude), backlog);
    if let Some(socket) = direct {
        stream = stream.with_socket(socket);
    }
    let mut response = Response::new(boxed(stream));
    if direct.is_some() {
        response.extensions_mut().insert(PreFramed);
    }
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}
