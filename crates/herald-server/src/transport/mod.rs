//! The delivery transports and the negotiation that picks one.
//!
//! Every transport is a thin adapter with the same shape: open a [`session::Session`] from the
//! request's channels and cursor, write its backlog, stream live messages through
//! `Session::accept`, signal gaps, and end cleanly on shutdown or overflow. Only the bytes on
//! the wire differ.

pub mod iframe;
pub mod longpoll;
pub mod poll;
pub mod session;
pub mod sse;
pub mod stream;
pub mod websocket;

use std::net::IpAddr;
use std::sync::Arc;

use http::{header, HeaderMap, Request, Response};

use crate::app::App;
use crate::front::DirectSocket;
use crate::http::{ApiError, Body, RequestBody};
use crate::query::{SubscribeQuery, TransportParam};

/// `GET /listen` from `peer`: negotiates the transport and hands the request to it.
pub async fn listen<B: RequestBody>(
    app: &Arc<App>,
    request: Box<Request<B>>,
    peer: IpAddr,
    socket: Option<&DirectSocket>,
) -> Result<Response<Body>, ApiError> {
    if app.shutdown.is_cancelled() {
        return Err(ApiError::Unavailable("server is shutting down".into()));
    }
    let query = SubscribeQuery::parse(
        request.uri().query(),
        app.config.max_channels_per_connection,
    )?;
    let headers = request.headers();
    let transport = match query.transport {
        Some(t) => t,
        None if wants_websocket(headers) => TransportParam::WebSocket,
        None if accepts_event_stream(headers) => TransportParam::Sse,
        None if query.callback.is_some() => TransportParam::Iframe,
        None => TransportParam::LongPoll,
    };
    // A WebSocket may start without channels: they come by `subscribe` commands (after an
    // `auth` command, for private ones).
    if transport != TransportParam::WebSocket {
        query.require_cids()?;
    }
    let identity = app.access.identify(query.token.as_deref(), headers)?;
    match transport {
        // Boxed: the handshake's future is the largest here, and a long poll's request future
        // (which lives as long as the poll waits) would otherwise be as large.
        TransportParam::WebSocket => {
            Box::pin(websocket::upgrade(app, request, query, identity, peer)).await
        }
        TransportParam::Sse => sse::handle(app, &request, &query, identity, socket).await,
        TransportParam::Iframe => iframe::handle(app, &query, identity).await,
        TransportParam::LongPoll => {
            // A long poll may wait for a long time: its request's headers need not wait too.
            drop(request);
            longpoll::handle(app, &query, identity).await
        }
    }
}

/// True when the request asks to upgrade to WebSocket.
fn wants_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("websocket"))
        })
}

fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("text/event-stream"))
}

/// What the direct writers' tests need: a real loopback connection and a connection standing
/// at the start of a channel.
#[cfg(test)]
pub(crate) mod test_support {
    use herald_core::{ChannelId, Epoch, Position, Subscriptions};
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair of loopback TCP streams: the server's side, then the client's.
    pub async fn connected_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (server, client)
    }

    /// Subscriptions standing before the first message of `cid` in `epoch`.
    pub fn at_start(cid: &str, epoch: u64) -> Subscriptions {
        let mut subscriptions = Subscriptions::new();
        let start = Position {
            epoch: Epoch::from_u64(epoch),
            offset: 0,
        };
        subscriptions.insert(ChannelId::parse(cid).expect("cid"), start);
        subscriptions
    }
}
