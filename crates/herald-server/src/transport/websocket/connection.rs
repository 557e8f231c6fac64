//! One WebSocket connection after the handshake.
//!
//! A single task waits on two things of its own: the socket's read side and the session's
//! outbox, which also carries the server's ping ticks and shutdown as signals (see
//! `registry`), so no shared notifier is touched per message. While idle it holds no buffer:
//! reads go to a stack buffer and only a partial frame is kept on the heap.
//!
//! Outgoing messages mostly do not pass through this task at all. The connection installs a
//! [`DirectWriter`] on its outbox: when nothing is queued and the task is not writing, the
//! publisher writes the message's shared frame to the socket itself with one non-blocking
//! `write` — no wake-up, no scheduling. Whatever that cannot finish (a full socket buffer, a
//! message that is not simply the next one of its channel) goes through the outbox to this
//! task, which writes it in order. The outbox's busy flag keeps the two writers from ever
//! interleaving bytes.

use std::future::poll_fn;
use std::io;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use herald_core::{DirectDelivery, DirectOutcome, Message, Signals, Subscriptions};
use parking_lot::Mutex;
use tokio::net::TcpStream;

use crate::app::App;
use crate::transport::session::Session;

use super::commands;
use super::frame::{self, close_code, FrameReader, Incoming};

/// How long the closing handshake may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Size of the on-stack read buffer.
const READ_CHUNK: usize = 4096;

/// Why the connection ends.
enum End {
    /// The peer closed or vanished; nothing more to send.
    Gone,
    /// Send a close frame with this code and reason, then wait briefly for the peer's.
    Close(u16, &'static str),
    /// The peer sent a close frame; echo it and end.
    Echo(Option<u16>),
}

/// Writes a message's frame from the publisher's thread; see the module documentation.
struct DirectWriter {
    socket: Arc<TcpStream>,
    subscriptions: Arc<Mutex<Subscriptions>>,
}

impl DirectDelivery for DirectWriter {
    fn deliver(&self, message: &Arc<Message>) -> DirectOutcome {
        let mut subscriptions = self.subscriptions.lock();
        if !subscriptions.is_next(message) {
            // Duplicates, gaps and unknown channels need the connection's judgement.
            return DirectOutcome::Queue;
        }
        let frame = message.websocket_frame();
        let outcome = match self.socket.try_write(&frame) {
            Ok(n) if n == frame.len() => DirectOutcome::Done,
            Ok(n) => DirectOutcome::Partial(frame.slice(n..)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => DirectOutcome::Partial(frame),
            // A broken socket: the task finds out on its side and ends the connection.
            Err(_) => return DirectOutcome::Queue,
        };
        subscriptions.accept(message);
        outcome
    }
}

/// Serves the connection until it ends.
pub async fn run(
    app: Arc<App>,
    socket: TcpStream,
    leftover: Vec<u8>,
    session: Session,
    opening: Vec<Bytes>,
) {
    let reader = FrameReader::new(app.config.max_body);
    let mut connection = Connection {
        app,
        socket: Arc::new(socket),
        inbox: leftover,
        reader,
        session,
        batch: Vec::new(),
    };
    let pending = connection.session.outbox().begin_write();
    let end = match connection.write(pending, opening).await {
        Ok(()) => {
            let direct = DirectWriter {
                socket: Arc::clone(&connection.socket),
                subscriptions: connection.session.shared_subscriptions(),
            };
            connection
                .session
                .outbox()
                .set_direct(Some(Arc::new(direct)));
            connection.serve().await
        }
        Err(end) => end,
    };
    connection.session.outbox().set_direct(None);
    // Boxed: it runs once, at the end, and would otherwise enlarge every idle connection.
    Box::pin(connection.finish(end)).await;
}

struct Connection {
    app: Arc<App>,
    socket: Arc<TcpStream>,
    inbox: Vec<u8>,
    reader: FrameReader,
    session: Session,
    batch: Vec<Arc<Message>>,
}

impl Connection {
    async fn serve(&mut self) -> End {
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
                            Err(end) => return end,
                        };
                        if let Err(end) = self.write(pending, frames).await {
                            return end;
                        }
                    }
                    Ok(None) => break,
                    Err(violation) => return End::Close(violation.code, violation.reason),
                }
            }
            if self.inbox.is_empty() && self.inbox.capacity() > 0 {
                self.inbox = Vec::new();
            }

            let (pending, frames) = tokio::select! {
                read = read_some(&self.socket, &mut self.inbox) => match read {
                    Ok(0) | Err(_) => return End::Gone,
                    Ok(_) => continue,
                },
                // A successful drain marks this task as writing until `write` ends.
                drained = self.session.outbox().drain(&mut self.batch) => {
                    let Ok(drained) = drained else {
                        tracing::info!("closing a slow WebSocket consumer");
                        return End::Close(close_code::SLOW_CONSUMER, "slow consumer");
                    };
                    if drained.signals.contains(Signals::CLOSE) {
                        return End::Close(close_code::GOING_AWAY, "server shutting down");
                    }
                    let mut frames = Vec::with_capacity(self.batch.len() + 1);
                    for message in self.batch.drain(..) {
                        commands::encode_message(&mut self.session, &message, &mut frames);
                    }
                    if drained.signals.contains(Signals::TICK) {
                        if !heard_from_peer {
                            return End::Close(close_code::POLICY, "ping timeout");
                        }
                        heard_from_peer = false;
                        frames.push(frame::ping());
                    }
                    (drained.pending, frames)
                }
            };
            if let Err(end) = self.write(pending, frames).await {
                return end;
            }
        }
    }

    async fn on_incoming(&mut self, incoming: Incoming) -> Result<Vec<Bytes>, End> {
        match incoming {
            // Boxed: commands are rare, and inlining their future would enlarge every idle
            // connection's task by its size.
            Incoming::Text(text) => {
                let frames = Box::pin(commands::execute(&self.app, &mut self.session, &text)).await;
                if self
                    .session
                    .publish_rate()
                    .is_flood(self.app.config.client_publish_rate)
                {
                    return Err(End::Close(
                        close_code::PUBLISH_FLOOD,
                        "publish rate exceeded again and again",
                    ));
                }
                Ok(frames)
            }
            Incoming::Binary => Err(End::Close(
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

    async fn write_bytes(&self, bytes: Bytes, limit: Duration) -> Result<(), End> {
        if bytes.is_empty() {
            return Ok(());
        }
        // Fast path: the socket almost always takes the whole batch at once, with no timer.
        let written = match self.socket.try_write(&bytes) {
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => return Err(End::Gone),
        };
        // Slow path, boxed so its timer does not enlarge every idle connection's state.
        let rest = bytes.slice(written..);
        match Box::pin(tokio::time::timeout(limit, write_all(&self.socket, rest))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(End::Gone),
        }
    }

    async fn finish(&mut self, end: End) {
        // Whatever a direct delivery left half-written must go out before a close frame.
        let pending = self.session.outbox().begin_write();
        let close = match end {
            End::Gone => None,
            End::Echo(code) => Some(frame::close(code.unwrap_or(close_code::NORMAL), "")),
            End::Close(code, reason) => Some(frame::close(code, reason)),
        };
        if let Some(close) = close {
            let mut bytes = BytesMut::new();
            if let Some(pending) = pending {
                bytes.extend_from_slice(&pending);
            }
            bytes.extend_from_slice(&close);
            let sent = self.write_bytes(bytes.freeze(), CLOSE_TIMEOUT).await;
            if sent.is_ok() && matches!(end, End::Close(..)) {
                // Give the peer a moment to answer with its close frame.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.await_close()).await;
            }
        }
        let _ = socket2::SockRef::from(&*self.socket).shutdown(std::net::Shutdown::Write);
    }

    async fn await_close(&mut self) {
        self.inbox.clear();
        let mut reader = FrameReader::new(self.app.config.max_body);
        loop {
            match read_some(&self.socket, &mut self.inbox).await {
                Ok(0) | Err(_) => return,
                Ok(_) => loop {
                    match reader.next(&mut self.inbox) {
                        Ok(Some(Incoming::Close(_))) | Err(_) => return,
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                    }
                },
            }
        }
    }
}

/// Writes all of `bytes`, waiting for the socket to become writable as needed.
async fn write_all(socket: &TcpStream, mut bytes: Bytes) -> io::Result<()> {
    while !bytes.is_empty() {
        socket.writable().await?;
        match socket.try_write(&bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                let _ = bytes.split_to(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads what is available into `inbox` through a stack buffer, so nothing is allocated while
/// waiting. Resolves to the number of bytes read (0 at end of stream).
fn read_some<'a>(
    socket: &'a TcpStream,
    inbox: &'a mut Vec<u8>,
) -> impl std::future::Future<Output = io::Result<usize>> + 'a {
    poll_fn(move |cx| loop {
        if let Err(e) = std::task::ready!(socket.poll_read_ready(cx)) {
            return Poll::Ready(Err(e));
        }
        let mut stack = [0u8; READ_CHUNK];
        match socket.try_read(&mut stack) {
            Ok(n) => {
                inbox.extend_from_slice(&stack[..n]);
                return Poll::Ready(Ok(n));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Poll::Ready(Err(e)),
        }
    })
}

#[cfg(test)]
mod tests {
    /// Every idle WebSocket holds this future; the memory budget per idle connection
    /// (BENCHMARKS.md) depends on it staying small. Rare paths (commands, closing) are boxed.
    #[tokio::test]
    async fn idle_connection_state_stays_small() {
        let app = crate::app::App::new(crate::config::Config::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let _client = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (socket, _) = listener.accept().await.expect("accept");
        let session =
            crate::transport::session::Session::new(&app, crate::registry::Kind::WebSocket);
        let future = super::run(app.clone(), socket, Vec::new(), session, Vec::new());
        let size = std::mem::size_of_val(&future);
        assert!(size <= 768, "connection future is {size} bytes");
    }
}
