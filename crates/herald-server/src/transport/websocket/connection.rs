//! One WebSocket connection after the handshake.
//!
//! A single task waits on two things of its own: the socket's read side and the session's
//! outbox, which also carries the server's ping ticks and shutdown as signals (see
//! `registry`), so no shared notifier is touched per message. While idle it holds no buffer:
//! reads go to a stack buffer and only a partial frame is kept on the heap.
//!
//! Outgoing messages mostly do not pass through this task at all. The connection installs a
//! `DirectWriter` (see `socket`) on its outbox: when nothing is queued and the task is not
//! writing, the publisher writes the message's shared frame to the socket itself with one
//! non-blocking `write` — no wake-up, no scheduling. Whatever that cannot finish (a full
//! socket buffer, a message that is not simply the next one of its channel) goes through the
//! outbox to this task, which writes it in order. The outbox's busy flag keeps the two writers
//! from ever interleaving bytes.
//!
//! The connection is written against [`WsSocket`] and runs on plain TCP (`Arc<TcpStream>`) or
//! TLS (`Box<TlsStream>`); only TCP has the direct writer (see `socket`).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use herald_core::{Message, Signals};

use crate::admission::ConnectionSlot;
use crate::app::App;
use crate::transport::session::Session;

use super::commands;
use super::frame::{self, close_code, FrameReader, Incoming};
use super::publish_rate::PublishRate;
use super::socket::WsSocket;

/// How long the closing handshake may take.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the connection ends.
enum End {
    /// The peer closed or vanished; nothing more to send.
    Gone,
    /// Send a close frame with this code and reason, then wait briefly for the peer's.
    Close(u16, &'static str),
    /// The peer sent a close frame; echo it and end.
    Echo(Option<u16>),
}

/// Serves a connection on any [`WsSocket`] until it ends (`take_socket` in the module above
/// picks the socket type once the upgrade is done: the shared TCP stream, or the boxed TLS
/// stream).
pub(super) async fn run_on<S: WsSocket>(
    app: Arc<App>,
    socket: S,
    leftover: Vec<u8>,
    session: Session,
    opening: Vec<Bytes>,
    slot: ConnectionSlot,
) {
    let reader = FrameReader::new(app.config.max_body);
    let mut connection = Connection {
        app,
        socket,
        inbox: leftover,
        reader,
        session,
        publish_rate: PublishRate::default(),
        batch: Vec::new(),
        _slot: slot,
    };
    let pending = connection.session.outbox().begin_write();
    let (end, unsent) = match connection.write(pending, opening).await {
        Ok(()) => {
            let direct = connection
                .socket
                .direct_writer(connection.session.shared_subscriptions());
            if direct.is_some() {
                connection.session.outbox().set_direct(direct);
            }
            connection.serve().await
        }
        Err(end) => (end, None),
    };
    connection.session.outbox().set_direct(None);
    // Boxed: it runs once, at the end, and would otherwise enlarge every idle connection.
    Box::pin(connection.finish(end, unsent)).await;
}

struct Connection<S> {
    app: Arc<App>,
    socket: S,
    inbox: Vec<u8>,
    reader: FrameReader,
    session: Session,
    /// This client's publishes, against `client-publish-rate`.
    publish_rate: PublishRate,
    batch: Vec<Arc<Message>>,
    /// Counts the connection against the connection limits until it ends.
    _slot: ConnectionSlot,
}

impl<S: WsSocket> Connection<S> {
    /// Serves until the connection ends. Returns why, and the rest of a direct delivery that
    /// was taken to be written but was not (the connection ended first): it must still go out
    /// before a close frame, or the peer would read the close frame inside a torn message.
    async fn serve(&mut self) -> (End, Option<Bytes>) {
        let mut heard_from_peer = true;
        loop {
            // Everything already received first (the handshake may have carried frames).
            loop {
                match self.reader.next(&mut self.inbox) {
                    Ok(Some(incoming)) => {
                        heard_from_peer = true;
                        // Busy before the command runs: a subscribe changes positions, and
                        // its reply and backlog must reach the socket before any direct
                        // delivery on the new channel.
                        let pending = self.session.outbox().begin_write();
                        let frames = match self.on_incoming(incoming).await {
                            Ok(frames) => frames,
                            Err(end) => return (end, pending),
                        };
                        if let Err(end) = self.write(pending, frames).await {
                            return (end, None);
                        }
                    }
                    Ok(None) => break,
                    Err(violation) => {
                        return (End::Close(violation.code, violation.reason), None);
                    }
                }
            }
            if self.inbox.is_empty() && self.inbox.capacity() > 0 {
                self.inbox = Vec::new();
            }

            let (pending, frames) = tokio::select! {
                read = self.socket.read_some(&mut self.inbox) => match read {
                    Ok(0) | Err(_) => return (End::Gone, None),
                    Ok(_) => continue,
                },
                // A successful drain marks this task as writing until `write` ends.
                drained = self.session.outbox().drain(&mut self.batch) => {
                    let Ok(drained) = drained else {
                        tracing::info!("closing a slow WebSocket consumer");
                        return (End::Close(close_code::SLOW_CONSUMER, "slow consumer"), None);
                    };
                    if drained.signals.contains(Signals::CLOSE) {
                        let end = End::Close(close_code::GOING_AWAY, "server shutting down");
                        return (end, drained.pending);
                    }
                    if drained.signals.contains(Signals::EXPIRE) && self.session.token_expired() {
                        let end = End::Close(close_code::TOKEN_EXPIRED, "token expired");
                        return (end, drained.pending);
                    }
                    let mut frames = Vec::with_capacity(self.batch.len() + 1);
                    for message in self.batch.drain(..) {
                        commands::encode_message(&mut self.session, &message, &mut frames);
                    }
                    if drained.signals.contains(Signals::TICK) {
                        if !heard_from_peer {
                            let end = End::Close(close_code::POLICY, "ping timeout");
                            return (end, drained.pending);
                        }
                        heard_from_peer = false;
                        frames.push(frame::ping());
                    }
                    (drained.pending, frames)
                }
            };
            if let Err(end) = self.write(pending, frames).await {
                return (end, None);
            }
        }
    }

    async fn on_incoming(&mut self, incoming: Incoming) -> Result<Vec<Bytes>, End> {
        match incoming {
            // Boxed: commands are rare, and inlining their future would enlarge every idle
            // connection's task by its size.
            Incoming::Text(text) => Box::pin(commands::execute(
                &self.app,
                &mut self.session,
                &mut self.publish_rate,
                &text,
            ))
            .await
            .map_err(|(code, reason)| End::Close(code, reason)),
            Incoming::Binary(_) => Err(End::Close(
                close_code::UNSUPPORTED,
                "binary frames are not supported; send JSON text commands",
            )),
            Incoming::Ping(payload) => Ok(vec![frame::pong(&payload)]),
            Incoming::Pong => Ok(Vec::new()),
            Incoming::Close(close) => Err(End::Echo(close.map(|(code, _)| code))),
        }
    }

    /// Writes the `pending` rest of a direct delivery, then `frames`, with one write call, and
    /// then lets direct delivery resume. The caller has marked the outbox busy. A peer that
    /// cannot take the bytes within the ping interval is dropped.
    async fn write(&mut self, pending: Option<Bytes>, frames: Vec<Bytes>) -> Result<(), End> {
        let bytes = match (pending, frames.len()) {
            (None, 0) => Bytes::new(),
            (None, 1) => frames.into_iter().next().unwrap_or_default(),
            (pending, _) => {
                let size = pending.as_ref().map_or(0, Bytes::len)
                    + frames.iter().map(Bytes::len).sum::<usize>();
                let mut joined = BytesMut::with_capacity(size);
                for part in pending.iter().chain(&frames) {
                    joined.extend_from_slice(part);
                }
                joined.freeze()
            }
        };
        let result = self
            .write_bytes(bytes, self.app.config.ws_ping_interval)
            .await;
        self.session.outbox().end_write();
        result
    }

    async fn write_bytes(&mut self, bytes: Bytes, limit: Duration) -> Result<(), End> {
        if bytes.is_empty() {
            return Ok(());
        }
        // Fast path: the socket almost always takes the whole batch at once, with no timer.
        let written = match self.socket.try_write(&bytes) {
            Ok(n) if n == bytes.len() && !self.socket.has_unflushed() => return Ok(()),
            Ok(n) => n,
            Err(_) => return Err(End::Gone),
        };
        // Slow path, boxed so its timer does not enlarge every idle connection's state.
        let rest = bytes.slice(written..);
        match Box::pin(tokio::time::timeout(limit, self.socket.write_all(rest))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(End::Gone),
        }
    }

    async fn finish(&mut self, end: End, unsent: Option<Bytes>) {
        // Whatever a direct delivery left half-written must go out before a close frame:
        // the rest `serve` had already taken (`unsent`), then anything still in the outbox.
        let pending = self.session.outbox().begin_write();
        let close = match end {
            End::Gone => None,
            End::Echo(code) => Some(frame::close(code.unwrap_or(close_code::NORMAL), "")),
            End::Close(code, reason) => Some(frame::close(code, reason)),
        };
        if let Some(close) = close {
            let mut bytes = BytesMut::new();
            for part in unsent.iter().chain(&pending) {
                bytes.extend_from_slice(part);
            }
            bytes.extend_from_slice(&close);
            let sent = self.write_bytes(bytes.freeze(), CLOSE_TIMEOUT).await;
            if sent.is_ok() && matches!(end, End::Close(..)) {
                // Give the peer a moment to answer with its close frame.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.await_close()).await;
            }
        }
        self.socket.shutdown_write().await;
    }

    async fn await_close(&mut self) {
        await_peer_close(&mut self.socket, &mut self.inbox, self.app.config.max_body).await;
    }
}

/// After sending a close frame: reads (and ignores) what the peer still sends until its close
/// frame, a violation or the end of the stream.
pub(super) async fn await_peer_close<S: WsSocket>(
    socket: &mut S,
    inbox: &mut Vec<u8>,
    max_body: usize,
) {
    inbox.clear();
    let mut reader = FrameReader::new(max_body);
    loop {
        match socket.read_some(inbox).await {
            Ok(0) | Err(_) => return,
            Ok(_) => loop {
                match reader.next(inbox) {
                    Ok(Some(Incoming::Close(_))) | Err(_) => return,
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                }
            },
        }
    }
}

/// A connected loopback TCP pair, (client end, server end), for the tests that measure a
/// connection's state.
#[cfg(test)]
pub(crate) async fn connected_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let client = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (server, _) = listener.accept().await.expect("accept");
    (client, server)
}

#[cfg(test)]
mod tls_tests {
    use std::sync::Arc;

    use tokio_rustls::rustls;

    /// The TLS connection's future holds its stream boxed, so it stays within the same bound
    /// as the TCP one; the TLS state beside it (rustls' connection, read and write buffers) is
    /// reported too, as the extra memory a WSS connection costs.
    #[tokio::test]
    async fn idle_tls_connection_state_is_measured() {
        let dir = tempfile::tempdir().expect("tempdir");
        let generated =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
        let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert_path, generated.cert.pem()).expect("write cert");
        std::fs::write(&key_path, generated.signing_key.serialize_pem()).expect("write key");
        let acceptor = crate::tls::acceptor(&cert_path, &key_path).expect("acceptor");

        let mut roots = rustls::RootCertStore::empty();
        roots.add(generated.cert.der().clone()).expect("root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));

        let (client_tcp, server_tcp) = super::connected_pair().await;
        let client = async {
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            connector
                .connect(name, client_tcp)
                .await
                .expect("client handshake")
        };
        let server = async { acceptor.accept(server_tcp).await.expect("server handshake") };
        let (_client, socket) = tokio::join!(client, server);

        let app = crate::app::App::new(crate::config::Config::default()).expect("default settings");
        let session =
            crate::transport::session::Session::new(&app, crate::registry::Kind::WebSocket);
        let tls_state = std::mem::size_of_val(&socket);
        let slot = app.track_connection_from(None);
        let future = super::run_on(
            app.clone(),
            Box::new(socket),
            Vec::new(),
            session,
            Vec::new(),
            slot,
        );
        let size = std::mem::size_of_val(&future);
        eprintln!("idle WSS connection: future {size} bytes + boxed TLS stream {tls_state} bytes");
        assert!(size <= 768, "TLS connection future is {size} bytes");
    }
}
