//! WebSocket (RFC 6455) on `GET /listen` with `Upgrade: websocket`: full duplex.
//!
//! The handshake is answered by hyper; channels named in the URL are subscribed *before* the
//! `101`, so a bad cid, cursor or token is a plain HTTP error. A handshake may also name no
//! channel at all: the client then sends `auth` and `subscribe` commands. After the upgrade
//! the raw socket is taken back from hyper and one task per connection runs [`connection`]:
//! pre-built frames out, the JSON command protocol (docs/protocol.md) in, pings on the
//! server's shared ticker. The socket is plain TCP or, with TLS configured, the TLS stream
//! over it (see `socket`).

pub mod commands;
pub mod connection;
#[cfg(feature = "conformance")]
pub mod echo;
pub mod frame;
pub mod publish_rate;
pub mod socket;

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;

use crate::access::Identity;
use crate::admission::ConnectionSlot;
use crate::app::App;
use crate::http::{boxed, ApiError, Body};
use crate::prefixed::Prefixed;
use crate::query::SubscribeQuery;
use crate::registry::Kind;
use crate::tls::TlsStream;

use super::session::Session;
use socket::WsSocket;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    use base64::Engine as _;
    use sha1::Digest as _;
    let mut sha = sha1::Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// A `Sec-WebSocket-Key` is the base64 encoding of 16 bytes (RFC 6455 §4.1), so exactly 24
/// characters of which the last two are padding.
fn is_valid_key(key: &[u8]) -> bool {
    use base64::Engine as _;
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|bytes| bytes.len() == 16)
}

/// Validates the handshake, subscribes, answers `101` and spawns the connection task.
pub async fn upgrade<B: Send>(
    app: &Arc<App>,
    mut request: Box<Request<B>>,
    query: SubscribeQuery,
    identity: Option<Arc<Identity>>,
    peer: IpAddr,
) -> Result<Response<Body>, ApiError> {
    let accept = match check_handshake(request.headers()) {
        Ok(accept) => accept,
        Err(refusal) => return refusal.into_result(),
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
    let listen = Listen {
        app: Arc::clone(app),
        session,
        opening,
    };
    spawn_upgraded(app, &mut request, peer, listen);
    Ok(switching_protocols(&accept))
}

/// A subscriber connection on `/listen`, ready to run once the socket is taken back.
struct Listen {
    app: Arc<App>,
    session: Session,
    opening: Vec<Bytes>,
}

impl Serve for Listen {
    fn serve<S: WsSocket>(
        self,
        socket: S,
        leftover: Vec<u8>,
        slot: ConnectionSlot,
    ) -> impl Future<Output = ()> + Send {
        connection::run_on(self.app, socket, leftover, self.session, self.opening, slot)
    }
}

/// Why a handshake is refused.
enum Refusal {
    /// A malformed handshake: 400.
    Bad(ApiError),
    /// A WebSocket version other than 13: 426 naming 13 (RFC 6455 §4.4).
    Version,
}

impl Refusal {
    fn into_result(self) -> Result<Response<Body>, ApiError> {
        match self {
            Self::Bad(error) => Err(error),
            Self::Version => {
                let mut response =
                    ApiError::BadRequest("unsupported WebSocket version; use 13".into())
                        .into_response();
                *response.status_mut() = StatusCode::UPGRADE_REQUIRED;
                response.headers_mut().insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
                Ok(response)
            }
        }
    }
}

/// Checks the upgrade handshake's headers (RFC 6455 §4.2.1); the `Sec-WebSocket-Accept` value.
fn check_handshake(headers: &HeaderMap) -> Result<String, Refusal> {
    if !super::wants_websocket(headers) {
        return Err(Refusal::Bad(ApiError::BadRequest(
            "the WebSocket transport needs an `Upgrade: websocket` handshake".into(),
        )));
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
        return Err(Refusal::Bad(ApiError::BadRequest(
            "WebSocket handshake needs `Connection: Upgrade`".into(),
        )));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(Refusal::Version);
    }
    match headers.get(header::SEC_WEBSOCKET_KEY) {
        Some(key) if is_valid_key(key.as_bytes()) => Ok(accept_key(key.as_bytes())),
        _ => Err(Refusal::Bad(ApiError::BadRequest(
            "WebSocket handshake needs a valid Sec-WebSocket-Key".into(),
        ))),
    }
}

/// The `101` answering a valid handshake.
fn switching_protocols(accept: &str) -> Response<Body> {
    let mut response = Response::new(boxed(http_body_util::Empty::<Bytes>::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(value) = HeaderValue::from_str(accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}

/// What runs on an upgraded connection, whichever stream (plain TCP or TLS) it came on.
trait Serve: Send + 'static {
    /// Runs on `socket`, starting with the bytes the client sent after its handshake, and
    /// holds the connection's `slot` until it ends.
    fn serve<S: WsSocket>(
        self,
        socket: S,
        leftover: Vec<u8>,
        slot: ConnectionSlot,
    ) -> impl Future<Output = ()> + Send;
}

/// Once hyper has sent the `101`, takes the socket back (plain TCP, else TLS) and runs
/// `service` on it, with the bytes the client sent after its handshake, as a tracked task
/// that holds a connection slot (counted for `peer`) until it ends.
fn spawn_upgraded<B>(app: &Arc<App>, request: &mut Request<B>, peer: IpAddr, service: impl Serve) {
    let on_upgrade = hyper::upgrade::on(&mut *request);
    // Counted from now until the WebSocket closes (its HTTP connection ends with the upgrade).
    let slot = app.track_connection_from(Some(peer));
    app.tasks
        .spawn(run_upgraded(app.tasks.clone(), on_upgrade, slot, service));
}

/// Waits for hyper to finish the upgrade, takes the socket back and starts `service` on it as
/// a task of its own. This short-lived task then ends, so an idle WebSocket holds only the
/// connection's own future — not this one's state, which the compiler would keep beside it
/// (moved-out arguments keep their slots in an `async fn`'s state).
async fn run_upgraded(
    tasks: TaskTracker,
    on_upgrade: OnUpgrade,
    slot: ConnectionSlot,
    service: impl Serve,
) {
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(error) => {
            tracing::debug!(%error, "WebSocket upgrade failed");
            return;
        }
    };
    match take_socket(upgraded) {
        Some(Taken::Tcp(socket, leftover)) => {
            tasks.spawn(service.serve(socket, leftover, slot));
        }
        Some(Taken::Tls(socket, leftover)) => {
            tasks.spawn(service.serve(socket, leftover, slot));
        }
        None => tracing::error!("WebSocket upgrade on a connection of an unknown kind"),
    }
}

/// The socket taken back from hyper after the upgrade, with the bytes the client sent after
/// its handshake.
enum Taken {
    /// Plain TCP, shared with the connection's direct writer (see `socket`).
    Tcp(Arc<TcpStream>, Vec<u8>),
    /// TLS, boxed so that the idle connection future stays as small as the TCP one.
    Tls(Box<TlsStream>, Vec<u8>),
}

/// Takes the socket back from hyper: no buffers kept from the handshake. What the client sent
/// after its handshake is copied and hyper's read buffer (8 KiB) released at once: `read_buf`
/// points into it.
///
/// A plain function, not part of the task's `async` block: a TLS stream is over a kilobyte,
/// and a local of that size in the block would stay in every connection's task state (the
/// compiler keeps its slot across the `await` that follows), costing each idle WebSocket about
/// 1.5 KB more (measured with the idle scenario of `bench/compare.sh`).
fn take_socket(upgraded: hyper::upgrade::Upgraded) -> Option<Taken> {
    let upgraded = match upgraded.downcast::<TokioIo<Prefixed<TcpStream>>>() {
        Ok(hyper::upgrade::Parts { io, read_buf, .. }) => {
            // hyper read from the front's prefix first: what it left of that comes after its
            // own read buffer.
            let (unread, socket) = io.into_inner().into_parts();
            let mut leftover = read_buf.to_vec();
            leftover.extend_from_slice(&unread);
            return Some(Taken::Tcp(Arc::new(socket), leftover));
        }
        Err(upgraded) => upgraded,
    };
    match upgraded.downcast::<TokioIo<TlsStream>>() {
        Ok(hyper::upgrade::Parts { io, read_buf, .. }) => {
            let leftover = read_buf.to_vec();
            Some(Taken::Tls(Box::new(io.into_inner()), leftover))
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    /// Every idle WebSocket holds the connection task started by `run_upgraded`; the memory
    /// budget per idle connection (BENCHMARKS.md) depends on it staying small. This measures
    /// plain TCP; `connection`'s TLS tests measure the TLS stream's state.
    #[tokio::test]
    async fn idle_websocket_tasks_stay_small() {
        use super::Serve as _;
        let app = crate::app::App::new(crate::config::Config::default()).expect("default settings");
        let (_client, socket) = super::connection::connected_pair().await;
        let listen = || super::Listen {
            app: app.clone(),
            session: super::Session::new(&app, crate::registry::Kind::WebSocket),
            opening: Vec::new(),
        };
        let slot = || app.track_connection_from(None);
        let tcp = listen().serve(std::sync::Arc::new(socket), Vec::new(), slot());
        let size = std::mem::size_of_val(&tcp);
        assert!(size <= 768, "TCP connection task future is {size} bytes");
        let mut request = http::Request::new(());
        let upgrade = super::run_upgraded(
            app.tasks.clone(),
            hyper::upgrade::on(&mut request),
            slot(),
            listen(),
        );
        let size = std::mem::size_of_val(&upgrade);
        assert!(size <= 512, "upgrade task future is {size} bytes");
    }

    #[test]
    fn accept_key_matches_rfc6455_example() {
        assert_eq!(
            super::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn keys_must_be_base64_of_16_bytes() {
        assert!(super::is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        for bad in [
            &b"!!!!!!!!!!!!!!!!!!!!!!=="[..],
            b"dGhlIHNhbXBsZSBub25jZQ=A",
            b"dGhlIHNhbXBsZSBub25jZQ",
            b"dGhlIHNhbXBsZSBub25jZSE=",
            b"",
        ] {
            assert!(
                !super::is_valid_key(bad),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
