//! The byte stream a WebSocket connection runs on, plain TCP or TLS, behind one small trait.
//!
//! [`connection`](super::connection) is written once against [`WsSocket`] and compiled for each
//! stream, so the plain-TCP path keeps its exact code: reads through a stack buffer with
//! `poll_read_ready` + `try_read`, writes with `try_write`, and a `DirectWriter` that lets
//! the publisher write frames straight into an idle socket from its own thread.
//!
//! A TLS stream cannot do that last part: rustls needs `&mut` access for every record it
//! encrypts and may hold encrypted bytes in its own buffer. So a TLS connection installs no
//! direct writer: messages go through the outbox and the connection's task writes them (the
//! delivery path SSE and iframe streams use). Its reads still go through a stack buffer. The
//! stream is boxed, so the idle connection future stays as small as the TCP one; rustls' state
//! and buffers live on the heap beside it: about 7 KiB per idle connection (1.2 KiB of
//! connection state, rustls' 4 KiB record buffer, its queues), where a plain socket costs none.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use herald_core::{in_sequence, DirectDelivery, DirectOutcome, Message, RunOutcome, Subscriptions};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::tls::TlsStream;

/// Size of the on-stack read buffer.
const READ_CHUNK: usize = 4096;

/// The most frames one direct write of a run takes (the rest go through the connection's
/// queue): as many as a thread puts in one run (`herald_core`'s shares).
const RUN_SLICES: usize = 64;

/// What a WebSocket connection needs from its stream.
pub trait WsSocket: Send + Sync + 'static {
    /// Reads what is available into `inbox` through a stack buffer, so nothing is allocated
    /// while waiting. Resolves to the number of bytes read (0 at end of stream). Dropping the
    /// future loses nothing.
    fn read_some<'a>(
        &'a mut self,
        inbox: &'a mut Vec<u8>,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a;

    /// Writes as much of `bytes` as the stream takes without waiting; returns how much.
    /// Taken bytes may still wait in the stream's own buffer; see [`Self::has_unflushed`].
    fn try_write(&mut self, bytes: &[u8]) -> io::Result<usize>;

    /// True when bytes taken by [`Self::try_write`] still wait to reach the socket.
    fn has_unflushed(&self) -> bool;

    /// Writes all of `bytes` and everything still buffered, waiting as needed.
    fn write_all(&mut self, bytes: Bytes) -> impl Future<Output = io::Result<()>> + Send + '_;

    /// Ends the sending direction (after a TLS `close_notify`); waits at most briefly.
    fn shutdown_write(&mut self) -> impl Future<Output = ()> + Send + '_;

    /// The direct writer for the publisher's thread, if this stream supports one.
    fn direct_writer(
        &self,
        subscriptions: Arc<Mutex<Subscriptions>>,
    ) -> Option<Arc<dyn DirectDelivery>>;
}

/// Writes a message's frame from the publisher's thread; see `connection`'s module
/// documentation.
struct DirectWriter {
    socket: Arc<TcpStream>,
    subscriptions: Arc<Mutex<Subscriptions>>,
}

impl DirectDelivery for DirectWriter {
    fn deliver(&self, message: &Arc<Message>) -> DirectOutcome {
        let mut subscriptions = self.subscriptions.lock();
        let Some(position) = subscriptions.next_position(message) else {
            // Duplicates, gaps and unknown channels need the connection's judgement.
            return DirectOutcome::Queue;
        };
        let frame = message.websocket_frame();
        let outcome = match TcpStream::try_write(&self.socket, frame) {
            Ok(n) if n == frame.len() => DirectOutcome::Done,
            Ok(n) => DirectOutcome::Partial(frame.slice(n..)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                DirectOutcome::Partial(frame.clone())
            }
            // A broken socket: the task finds out on its side and ends the connection.
            Err(_) => return DirectOutcome::Queue,
        };
        *position = message.position();
        outcome
    }

    /// One vectored write for the run's frames, as far as they follow each other.
    fn deliver_run(&self, messages: &[Arc<Message>]) -> RunOutcome {
        let Some(first) = messages.first() else {
            return RunOutcome::default();
        };
        let mut subscriptions = self.subscriptions.lock();
        let Some(position) = subscriptions.next_position(first) else {
            return RunOutcome::default();
        };
        // Anything but the channel's next messages is left to the connection's judgement.
        // Borrowed frames on the stack: this runs once per subscriber of every run.
        let run = &messages[..in_sequence(messages).min(RUN_SLICES)];
        let mut slices = [io::IoSlice::new(&[]); RUN_SLICES];
        for (slice, message) in slices.iter_mut().zip(run) {
            *slice = io::IoSlice::new(message.websocket_frame());
        }
        let written = match self.socket.try_write_vectored(&slices[..run.len()]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            // A broken socket: the task finds out on its side and ends the connection.
            Err(_) => return RunOutcome::default(),
        };
        let lens = run.iter().map(|m| m.websocket_frame().len());
        let (taken, cut) = RunOutcome::after_write(lens, written);
        let last = &run[taken - 1];
        *position = last.position();
        RunOutcome {
            taken,
            rest: cut.map(|at| last.websocket_frame().slice(at..)),
        }
    }
}

/// Plain TCP, shared with the `DirectWriter`.
impl WsSocket for Arc<TcpStream> {
    fn read_some<'a>(
        &'a mut self,
        inbox: &'a mut Vec<u8>,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        let socket: &'a TcpStream = self;
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

    fn try_write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match TcpStream::try_write(self, bytes) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            other => other,
        }
    }

    fn has_unflushed(&self) -> bool {
        false
    }

    async fn write_all(&mut self, mut bytes: Bytes) -> io::Result<()> {
        while !bytes.is_empty() {
            self.writable().await?;
            match TcpStream::try_write(self, &bytes) {
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

    async fn shutdown_write(&mut self) {
        let _ = socket2::SockRef::from(&**self).shutdown(std::net::Shutdown::Write);
    }

    fn direct_writer(
        &self,
        subscriptions: Arc<Mutex<Subscriptions>>,
    ) -> Option<Arc<dyn DirectDelivery>> {
        Some(Arc::new(DirectWriter {
            socket: Arc::clone(self),
            subscriptions,
        }))
    }
}

/// TLS over TCP, owned by the connection's task alone.
impl WsSocket for Box<TlsStream> {
    fn read_some<'a>(
        &'a mut self,
        inbox: &'a mut Vec<u8>,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        poll_fn(move |cx| {
            let mut stack = [0u8; READ_CHUNK];
            let mut buf = ReadBuf::new(&mut stack);
            std::task::ready!(Pin::new(&mut **self).poll_read(cx, &mut buf))?;
            inbox.extend_from_slice(buf.filled());
            Poll::Ready(Ok(buf.filled().len()))
        })
    }

    fn try_write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        // Encrypt and send what fits now; rustls registers no wake-up we would rely on, and
        // whatever stays buffered is flushed by `write_all`.
        let mut cx = Context::from_waker(Waker::noop());
        let mut stream = Pin::new(&mut **self);
        let mut written = 0;
        while written < bytes.len() {
            match stream.as_mut().poll_write(&mut cx, &bytes[written..]) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => written += n,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => break,
            }
        }
        match stream.poll_flush(&mut cx) {
            Poll::Ready(Err(e)) => Err(e),
            Poll::Ready(Ok(())) | Poll::Pending => Ok(written),
        }
    }

    fn has_unflushed(&self) -> bool {
        self.get_ref().1.wants_write()
    }

    async fn write_all(&mut self, bytes: Bytes) -> io::Result<()> {
        AsyncWriteExt::write_all(&mut **self, &bytes).await?;
        AsyncWriteExt::flush(&mut **self).await
    }

    async fn shutdown_write(&mut self) {
        // Sends close_notify, flushes, then shuts the TCP sending side.
        let _ = tokio::time::timeout(
            super::connection::CLOSE_TIMEOUT,
            AsyncWriteExt::shutdown(&mut **self),
        )
        .await;
    }

    fn direct_writer(&self, _: Arc<Mutex<Subscriptions>>) -> Option<Arc<dyn DirectDelivery>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::test_support::{at_start, connected_pair};
    use herald_core::{ChannelId, Epoch, Payload, Position};
    use tokio::io::AsyncReadExt;

    fn message(offset: u64, size: usize) -> Arc<Message> {
        let text = format!("\"{}\"", "x".repeat(size));
        Message::new(
            ChannelId::parse("run").expect("cid"),
            Position {
                epoch: Epoch::from_u64(7),
                offset,
            },
            0,
            &Payload::from_text(text.as_bytes()).expect("payload"),
        )
    }

    /// A direct writer on the server side of a real TCP connection whose connection stands at
    /// offset 0 of channel `run`, the client side, and the connection's subscriptions.
    async fn writer() -> (DirectWriter, TcpStream, Arc<Mutex<Subscriptions>>) {
        let (server, client) = connected_pair().await;
        let subscriptions = at_start("run", 7);
        let subscriptions = Arc::new(Mutex::new(subscriptions));
        let writer = DirectWriter {
            socket: Arc::new(server),
            subscriptions: Arc::clone(&subscriptions),
        };
        (writer, client, subscriptions)
    }

    #[tokio::test]
    async fn a_run_is_written_in_one_go_as_far_as_its_messages_follow_each_other() {
        let (writer, mut client, subscriptions) = writer().await;
        // 4 does not follow 2: the run stops before it, for the connection to judge.
        let run = [message(1, 10), message(2, 10), message(4, 10)];
        let outcome = writer.deliver_run(&run);
        assert_eq!(
            outcome,
            RunOutcome {
                taken: 2,
                rest: None
            }
        );
        let expected: Vec<u8> = run[..2]
            .iter()
            .flat_map(|m| m.websocket_frame().to_vec())
            .collect();
        let mut received = vec![0; expected.len()];
        client.read_exact(&mut received).await.expect("read");
        assert_eq!(received, expected);
        let position = run[1].position();
        let stands = subscriptions.lock().next_position(&message(3, 1)).copied();
        assert_eq!(stands, Some(position), "the connection stands at 2");
        // A run that does not start at the next message is left whole to the connection.
        assert_eq!(writer.deliver_run(&run[2..]), RunOutcome::default());
        assert_eq!(writer.deliver_run(&run[..1]), RunOutcome::default());
    }

    #[tokio::test]
    async fn a_run_the_socket_cannot_take_whole_leaves_the_rest_of_the_last_frame_taken() {
        let (writer, _client, _subscriptions) = writer().await;
        // Far more than the socket buffers take while the client reads nothing.
        let run: Vec<_> = (1..=64).map(|offset| message(offset, 256 * 1024)).collect();
        let outcome = writer.deliver_run(&run);
        assert!(
            (1..run.len()).contains(&outcome.taken),
            "part of the run was taken: {}",
            outcome.taken
        );
        let last = run[outcome.taken - 1].websocket_frame();
        let rest = outcome.rest.expect("the last frame taken was cut");
        assert!(!rest.is_empty() && rest.len() <= last.len());
        assert_eq!(rest[..], last[last.len() - rest.len()..]);
    }
}
