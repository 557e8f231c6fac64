//! `GET /echo`: a WebSocket echo endpoint for conformance testing only, compiled with the
//! `conformance` cargo feature and never in production builds.
//!
//! The Autobahn|Testsuite (see conformance/) drives an echo server: every text and binary
//! message must come back unchanged. Herald's `/listen` speaks a JSON command protocol
//! instead, so this endpoint exists to put Herald's OWN codec under the suite: the same
//! handshake checks, the same [`FrameReader`], the same frame writers and the same closing
//! handshake as a subscriber connection (see `connection`), with an echo in place of the
//! command protocol. Messages are limited by `max-body` like every WebSocket message. It runs
//! on plain TCP and on TLS alike (the same [`WsSocket`] as `connection`), and holds a
//! connection slot like any WebSocket.

use std::sync::Arc;

use crate::app::App;
use crate::http::{ApiError, Body};
use http::{Request, Response};

use super::connection::{await_peer_close, CLOSE_TIMEOUT};
use super::frame::{self, close_code, FrameReader, Incoming};
use super::socket::WsSocket;

/// Validates the handshake, answers `101` and echoes on the upgraded connection.
pub async fn upgrade<B: Send>(
    app: &Arc<App>,
    mut request: Box<Request<B>>,
    peer: std::net::IpAddr,
) -> Result<Response<Body>, ApiError> {
    let accept = match super::check_handshake(request.headers()) {
        Ok(accept) => accept,
        Err(refusal) => return refusal.into_result(),
    };
    let echo = Echo {
        max_body: app.config.max_body,
    };
    super::spawn_upgraded(app, &mut request, peer, echo);
    Ok(super::switching_protocols(&accept))
}

/// An echo connection, ready to run once the socket is taken back.
struct Echo {
    max_body: usize,
}

impl super::Serve for Echo {
    fn serve<S: WsSocket>(
        self,
        socket: S,
        leftover: Vec<u8>,
        slot: crate::admission::ConnectionSlot,
    ) -> impl std::future::Future<Output = ()> + Send {
        echo(socket, leftover, self.max_body, slot)
    }
}

/// Echoes messages until the peer closes, vanishes or breaks the protocol.
async fn echo<S: WsSocket>(
    mut socket: S,
    mut inbox: Vec<u8>,
    max_body: usize,
    _slot: crate::admission::ConnectionSlot,
) {
    let mut reader = FrameReader::new(max_body);
    let close = loop {
        let incoming = match reader.next(&mut inbox) {
            Ok(Some(incoming)) => incoming,
            Ok(None) => match socket.read_some(&mut inbox).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
            Err(violation) => break Some((frame::close(violation.code, violation.reason), true)),
        };
        let reply = match incoming {
            Incoming::Text(text) => frame::text(&text),
            Incoming::Binary(data) => frame::binary(&data),
            Incoming::Ping(payload) => frame::pong(&payload),
            Incoming::Pong => continue,
            Incoming::Close(close) => {
                let code = close.map_or(close_code::NORMAL, |(code, _)| code);
                break Some((frame::close(code, ""), false));
            }
        };
        if socket.write_all(reply).await.is_err() {
            return;
        }
    };
    if let Some((close, await_peer)) = close {
        let sent = tokio::time::timeout(CLOSE_TIMEOUT, socket.write_all(close)).await;
        if matches!(sent, Ok(Ok(()))) && await_peer {
            let _ = tokio::time::timeout(
                CLOSE_TIMEOUT,
                await_peer_close(&mut socket, &mut inbox, max_body),
            )
            .await;
        }
    }
    socket.shutdown_write().await;
}
