//! WebSocket (RFC 6455) on `GET /listen` with `Upgrade: websocket`: full duplex.
//!
//! The handshake is answered by hyper; channels named in the URL are subscribed *before* the
//! `101`, so a bad cid, cursor or token is a plain HTTP error. A handshake may also name no
//! channel at all: the client then sends `auth` and `subscribe` commands. After the upgrade the raw socket is
//! taken back from hyper and one task per connection runs [`connection`]: pre-built frames out,
//! the JSON command protocol (docs/protocol.md) in, pings on the server's shared ticker.
//! The socket is plain TCP or, with TLS configured, the TLS stream over it (see `socket`).

pub mod commands;
pub mod connection;
pub mod frame;
pub mod publish_rate;
pub mod socket;

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::access::Identity;
use crate::app::App;
use crate::http::{boxed, ApiError, Body};
use crate::query::SubscribeQuery;
use crate::registry::Kind;
use crate::tls::TlsStream;

use super::session::Session;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    use base64::Engine as _;
    use sha1::Digest as _;
    let mut sha = sha1::Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Validates the handshake, subscribes, answers `101` and spawns the connection task.
pub async fn upgrade(
    app: &Arc<App>,
    mut request: Request<Incoming>,
    query: SubscribeQuery,
    identity: Option<Arc<Identity>>,
) -> Result<Response<Body>, ApiError> {
    let headers = request.headers();
    if !super::wants_websocket(headers) {
        return Err(ApiError::BadRequest(
            "the WebSocket transport needs an `Upgrade: websocket` handshake".into(),
        ));
    }
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    if !connection_upgrade {
        return Err(ApiError::BadRequest(
            "WebSocket handshake needs `Connection: Upgrade`".into(),
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        let mut response =
            ApiError::BadRequest("unsupported WebSocket version; use 13".into()).into_response();
        *response.status_mut() = StatusCode::UPGRADE_REQUIRED;
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Ok(response);
    }
    let accept = match headers.get(header::SEC_WEBSOCKET_KEY) {
        Some(key) if key.len() == 24 => accept_key(key.as_bytes()),
        _ => {
            return Err(ApiError::BadRequest(
                "WebSocket handshake needs a valid Sec-WebSocket-Key".into(),
            ))
        }
    };
    if query.cids.is_empty() && (query.since.is_some() || query.last_event_id.is_some()) {
        return Err(ApiError::BadRequest(
            "a cursor without cid: name the channels, or send it with each subscribe command"
                .into(),
        ));
    }
    let cursors = query.cursors(None)?;
    let mut session = Session::new(app, Kind::WebSocket);
    if let Some(identity) = identity {
        session.authenticate(identity, Some(&app.access.expiry));
    }
    let mut opening = Vec::new();
    for (cid, cursor) in query.cids.iter().zip(cursors) {
        let (start, backlog) = session.subscribe(app, cid, cursor).await?;
        opening.push(commands::subscribed(cid, start, None));
        commands::encode_events(&mut session, backlog, &mut opening);
    }

    let on_upgrade = hyper::upgrade::on(&mut request);
    // Counted from now until the WebSocket closes (its HTTP connection ends with the upgrade).
    let peer_ip = request
        .extensions()
        .get::<crate::router::ClientAddr>()
        .map(|addr| addr.0.ip());
    let slot = app.track_connection_from(peer_ip);
    let task_app = Arc::clone(app);
    app.tasks.spawn(async move {
        let _slot = slot;
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(%error, "WebSocket upgrade failed");
                return;
            }
        };
        // Take the socket back from hyper: no boxing, no buffers kept from the handshake.
        // Copy what the client sent after its handshake and release hyper's read buffer
        // (8 KiB) at once: `read_buf` points into it.
        let upgraded = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(hyper::upgrade::Parts { io, read_buf, .. }) => {
                let leftover = read_buf.to_vec();
                drop(read_buf);
                connection::run(task_app, io.into_inner(), leftover, session, opening).await;
                return;
            }
            Err(upgraded) => upgraded,
        };
        match upgraded.downcast::<TokioIo<TlsStream>>() {
            Ok(hyper::upgrade::Parts { io, read_buf, .. }) => {
                let leftover = read_buf.to_vec();
                drop(read_buf);
                connection::run_tls(task_app, io.into_inner(), leftover, session, opening).await;
            }
            Err(_) => tracing::error!("WebSocket upgrade on a connection of an unknown kind"),
        }
    });

    let mut response = Response::new(boxed(http_body_util::Empty::<Bytes>::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(value) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    #[test]
    fn accept_key_matches_rfc6455_example() {
        assert_eq!(
            super::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
