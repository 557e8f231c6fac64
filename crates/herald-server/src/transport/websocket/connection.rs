//! One WebSocket connection after the handshake.
//!
//! A single task waits on two things of its own: the socket's read side and the session's
//! outbox, which also carries the server's ping ticks and shutdown as signals (see
//! `registry`), so no shared notifier is touched per message. While idle it holds no buffer: reads go to a stack
//! buffer and only a partial frame is kept on the heap; outgoing frames are the shared bytes
//! built at publish time, and a batch of them is written with one `write` call. A write that
//! cannot complete within the ping interval (a peer that stopped reading) ends the connection.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use herald_core::Signals;

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

/// Serves the connection until it ends.
pub async fn run<S>(app: Arc<App>, io: S, leftover: Vec<u8>, session: Session, opening: Vec<Bytes>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _guard = app.track_connection();
    let reader = FrameReader::new(app.config.max_body);
    let mut connection = Connection {
        app,
        io,
        inbox: leftover,
        reader,
        session,
        batch: Vec::new(),
    };
    let end = match connection.write(opening).await {
        Ok(()) => connection.serve().await,
        Err(end) => end,
    };
    // Boxed for the same reason: it runs once, at the end.
    Box::pin(connection.finish(end)).await;
}

struct Connection<S> {
    app: Arc<App>,
    io: S,
    inbox: Vec<u8>,
    reader: FrameReader,
    session: Session,
    batch: Vec<Arc<herald_core::Message>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    async fn serve(&mut self) -> End {
        let mut heard_from_peer = true;
        loop {
            // Everything already received first (the handshake may have carried frames).
            loop {
                match self.reader.next(&mut self.inbox) {
                    Ok(Some(incoming)) => {
                        heard_from_peer = true;
                        let frames = match self.on_incoming(incoming).await {
                            Ok(frames) => frames,
                            Err(end) => return end,
                        };
                        if let Err(end) = self.write(frames).await {
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

            // Two things to wait on, both this connection's own: its socket and its outbox
            // (messages, and the server's ping ticks and shutdown as signals).
            let frames = tokio::select! {
                read = read_some(&mut self.io, &mut self.inbox) => match read {
                    Ok(0) | Err(_) => return End::Gone,
                    Ok(_) => continue,
                },
                drained = self.session.outbox().drain(&mut self.batch) => {
                    let Ok(signals) = drained else {
                        tracing::info!("closing a slow WebSocket consumer");
                        return End::Close(close_code::SLOW_CONSUMER, "slow consumer");
                    };
                    if signals.contains(Signals::CLOSE) {
                        return End::Close(close_code::GOING_AWAY, "server shutting down");
                    }
                    let mut frames = Vec::with_capacity(self.batch.len() + 1);
                    for message in self.batch.drain(..) {
                        commands::encode_message(&mut self.session, &message, &mut frames);
                    }
                    if signals.contains(Signals::TICK) {
                        if !heard_from_peer {
                            return End::Close(close_code::POLICY, "ping timeout");
                        }
                        heard_from_peer = false;
                        frames.push(frame::ping());
                    }
                    frames
                }
            };
            if let Err(end) = self.write(frames).await {
                return end;
            }
        }
    }

    async fn on_incoming(&mut self, incoming: Incoming) -> Result<Vec<Bytes>, End> {
        match incoming {
            // Boxed: commands are rare, and inlining their future would enlarge every idle
            // connection's task by its size.
            Incoming::Text(text) => {
                Ok(Box::pin(commands::execute(&self.app, &mut self.session, &text)).await)
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

    /// Writes `frames` with one write call; a peer that cannot take them within the ping
    /// interval is dropped.
    async fn write(&mut self, frames: Vec<Bytes>) -> Result<(), End> {
        let bytes = match frames.len() {
            0 => return Ok(()),
            1 => frames.into_iter().next().unwrap_or_default(),
            _ => {
                let mut joined = BytesMut::with_capacity(frames.iter().map(Bytes::len).sum());
                for f in &frames {
                    joined.extend_from_slice(f);
                }
                joined.freeze()
            }
        };
        // Fast path: the socket almost always takes the whole batch at once, with no timer.
        let io = &mut self.io;
        let first = poll_fn(|cx| match Pin::new(&mut *io).poll_write(cx, &bytes) {
            Poll::Ready(result) => Poll::Ready(Some(result)),
            Poll::Pending => Poll::Ready(None),
        })
        .await;
        let written = match first {
            Some(Ok(n)) if n == bytes.len() => return Ok(()),
            Some(Ok(0)) | Some(Err(_)) => return Err(End::Gone),
            Some(Ok(n)) => n,
            None => 0,
        };
        // Slow path, boxed so its timer does not enlarge every idle connection's state.
        let limit = self.app.config.ws_ping_interval;
        let rest = bytes.slice(written..);
        match Box::pin(tokio::time::timeout(limit, self.io.write_all(&rest))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(End::Gone),
        }
    }

    async fn finish(&mut self, end: End) {
        match end {
            End::Gone => {}
            End::Echo(code) => {
                let reply = match code {
                    Some(code) => frame::close(code, ""),
                    None => frame::close(close_code::NORMAL, ""),
                };
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.io.write_all(&reply)).await;
            }
            End::Close(code, reason) => {
                let sent = tokio::time::timeout(
                    CLOSE_TIMEOUT,
                    self.io.write_all(&frame::close(code, reason)),
                )
                .await;
                if matches!(sent, Ok(Ok(()))) {
                    // Give the peer a moment to answer with its close frame.
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.await_close()).await;
                }
            }
        }
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.io.shutdown()).await;
    }

    async fn await_close(&mut self) {
        self.inbox.clear();
        let mut reader = FrameReader::new(self.app.config.max_body);
        loop {
            match read_some(&mut self.io, &mut self.inbox).await {
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

/// Reads what is available into `inbox` through a stack buffer, so nothing is allocated while
/// waiting. Resolves to the number of bytes read (0 at end of stream).
fn read_some<'a, S: AsyncRead + Unpin>(
    io: &'a mut S,
    inbox: &'a mut Vec<u8>,
) -> impl std::future::Future<Output = std::io::Result<usize>> + 'a {
    poll_fn(move |cx| {
        let mut stack = [0u8; READ_CHUNK];
        let mut buf = ReadBuf::new(&mut stack);
        ready!(Pin::new(&mut *io).poll_read(cx, &mut buf))?;
        inbox.extend_from_slice(buf.filled());
        Poll::Ready(Ok(buf.filled().len()))
    })
}

#[cfg(test)]
mod tests {
    /// Every idle WebSocket holds this future; the memory budget per idle connection
    /// (BENCHMARKS.md) depends on it staying small. Rare paths (commands, closing) are boxed.
    #[tokio::test]
    async fn idle_connection_state_stays_small() {
        let app = crate::app::App::new(crate::config::Config::default());
        let (io, _peer) = tokio::io::duplex(64);
        let session =
            crate::transport::session::Session::new(&app, crate::registry::Kind::WebSocket);
        let future = super::run(app.clone(), io, Vec::new(), session, Vec::new());
        let size = std::mem::size_of_val(&future);
        assert!(size <= 768, "connection future is {size} bytes");
    }
}
