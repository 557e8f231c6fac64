//! The never-ending HTTP response body behind SSE and the forever iframe.
//!
//! [`EventStream`] is polled directly by the connection's hyper task: there is no extra task
//! and no channel per stream. Each poll drains everything waiting in the session's outbox and
//! returns it as one chunk (one write). A lone message on a single-channel stream is returned
//! as the shared bytes encoded at publish time, without a copy. The server's keep-alive ticker
//! and shutdown arrive as outbox signals: a keep-alive goes out on a tick only if nothing was
//! written since the previous one, and `CLOSE` ends the stream with a disconnect notice, as
//! does `EXPIRE` once the stream's token has expired. The
//! [`StreamFormat`] decides the bytes.
//!
//! A stream the connection front serves on plain TCP ([`EventStream::with_socket`]) frames its
//! own chunks (`PreFramed`), and the publisher may write to its socket directly, as it does for
//! an idle WebSocket: when nothing is queued and the stream is not writing, an in-order message
//! with bytes shared by every subscriber goes out as one chunk in one non-blocking write from
//! the publishing thread, with no task wake-up. The rest of a write the socket did not take
//! comes back through the outbox and is written first. The outbox's `busy` mark keeps the two
//! writers apart: draining sets it, and the next poll — the front polls only once the previous
//! chunk is written — clears it.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::Frame;
use parking_lot::Mutex;
use tokio::net::TcpStream;

use herald_core::{
    in_sequence, Accept, DirectDelivery, DirectOutcome, Gap, Message, RunOutcome, Signals,
    Subscriptions,
};

use crate::front::{self, DirectSocket};

use super::session::{Event, Session};

/// The wire format of a stream.
pub trait StreamFormat: Send + Unpin + 'static {
    /// Appends one message; `subscriptions` already stands at this message.
    fn message(&self, message: &Message, subscriptions: &Subscriptions, out: &mut BytesMut);
    /// The message as shared bytes, when the format can send them without a copy; they are
    /// sent only if `message` turns out to be the next one of its channel. `subscriptions` has
    /// not advanced to it yet.
    fn shared(&self, message: &Message, subscriptions: &Subscriptions) -> Option<Bytes>;
    /// Appends a gap signal.
    fn gap(&self, gap: &Gap, out: &mut BytesMut);
    /// A keep-alive that clients ignore.
    fn keepalive(&self) -> Bytes;
    /// The last chunk of a stream the server ends.
    fn disconnect(&self, reason: &str, reconnect: bool) -> Bytes;
}

/// A streaming response body. See the module documentation.
pub struct EventStream<F> {
    session: Session,
    format: F,
    first: Option<Bytes>,
    batch: Vec<Arc<Message>>,
    wrote_since_tick: bool,
    finished: bool,
    /// Set when the stream frames its own chunks and the publisher may write to its socket
    /// (see the module documentation).
    direct: Option<Arc<DirectWriter<F>>>,
}

impl<F: StreamFormat> EventStream<F> {
    /// A stream that starts with `prelude` then the `backlog`, then live messages.
    pub fn new(mut session: Session, format: F, prelude: Bytes, backlog: Vec<Event>) -> Self {
        let mut first = BytesMut::from(&prelude[..]);
        for event in backlog {
            match event {
                Event::Gap(gap) => format.gap(&gap, &mut first),
                Event::Message(m) => encode(&mut session, &format, &m, &mut first),
            }
        }
        Self {
            session,
            format,
            first: Some(first.freeze()),
            batch: Vec::new(),
            wrote_since_tick: true,
            finished: false,
            direct: None,
        }
    }

    /// Makes the stream frame its own chunks for the connection front, and lets the publisher
    /// write in-order messages straight to `socket` once the first chunk is out.
    pub fn with_socket(mut self, socket: &DirectSocket) -> Self
    where
        F: Clone + Sync,
    {
        self.first = self.first.take().map(|first| {
            let mut framed = BytesMut::new();
            front::frame_chunk(&mut framed, &first);
            framed.freeze()
        });
        // The first poll must return a chunk, or it would clear the busy mark below before the
        // front has written the head.
        debug_assert!(self.first.as_ref().is_some_and(|first| !first.is_empty()));
        let outbox = self.session.outbox();
        // Busy until the front has written the head and the first chunk (the next poll).
        let pending = outbox.begin_write();
        debug_assert!(pending.is_none(), "nothing written directly yet");
        let writer = Arc::new(DirectWriter {
            socket: Arc::clone(&socket.0),
            subscriptions: self.session.shared_subscriptions(),
            format: self.format.clone(),
            wrote: AtomicBool::new(false),
        });
        outbox.set_direct(Some(Arc::clone(&writer) as Arc<dyn DirectDelivery>));
        self.direct = Some(writer);
        self
    }

    /// True if the publisher wrote to the socket since the last call.
    fn wrote_directly(&self) -> bool {
        self.direct
            .as_ref()
            .is_some_and(|writer| writer.wrote.swap(false, Ordering::Relaxed))
    }

    /// What goes out for `pending` (raw bytes of a direct write) and `chunk` (a chunk of the
    /// stream), framed if this stream frames itself; `last` ends the body.
    fn emit(&self, pending: Option<Bytes>, chunk: Option<Bytes>, last: bool) -> Option<Bytes> {
        if self.direct.is_none() {
            return chunk;
        }
        let mut out = BytesMut::new();
        if let Some(pending) = pending {
            out.extend_from_slice(&pending);
        }
        if let Some(chunk) = chunk {
            front::frame_chunk(&mut out, &chunk);
        }
        if last {
            out.extend_from_slice(front::LAST_CHUNK);
        }
        (!out.is_empty()).then(|| out.freeze())
    }

    fn encode_batch(&mut self) -> Option<Bytes> {
        let batch = std::mem::take(&mut self.batch);
        // A lone in-order message goes out as the bytes shared by every subscriber, if the
        // format has them; everything else through the one encoding path below.
        let shared = match &batch[..] {
            [only] => {
                // One lock, and one lookup of the channel, for the encoding choice, the check
                // and the position update; a format without shared bytes needs no lookup.
                let mut subscriptions = self.session.subscriptions();
                self.format.shared(only, &subscriptions).and_then(|bytes| {
                    *subscriptions.next_position(only)? = only.position();
                    Some(bytes)
                })
            }
            _ => None,
        };
        let chunk = shared.or_else(|| {
            let mut out = BytesMut::new();
            for m in &batch {
                encode(&mut self.session, &self.format, m, &mut out);
            }
            (!out.is_empty()).then(|| out.freeze())
        });
        self.batch = batch;
        self.batch.clear();
        chunk
    }
}

fn encode<F: StreamFormat>(
    session: &mut Session,
    format: &F,
    message: &Message,
    out: &mut BytesMut,
) {
    match session.accept(message) {
        Accept::Deliver => format.message(message, &session.subscriptions(), out),
        Accept::GapThenDeliver(gap) => {
            format.gap(&gap, out);
            format.message(message, &session.subscriptions(), out);
        }
        Accept::Duplicate | Accept::NotSubscribed => {}
    }
}

fn data(bytes: Bytes) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
    Poll::Ready(Some(Ok(Frame::data(bytes))))
}

fn data_or_end(bytes: Option<Bytes>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
    match bytes {
        Some(bytes) => data(bytes),
        None => Poll::Ready(None),
    }
}

impl<F> Drop for EventStream<F> {
    fn drop(&mut self) {
        if self.direct.is_some() {
            // The socket goes with the stream: no more direct writes to it.
            self.session.outbox().set_direct(None);
        }
    }
}

/// Writes an in-order message's shared bytes, as one chunk, to a stream's socket from the
/// publisher's thread; see the module documentation.
struct DirectWriter<F> {
    socket: Arc<TcpStream>,
    subscriptions: Arc<Mutex<Subscriptions>>,
    format: F,
    /// Set on each direct write; the stream's keep-alive ticks read and clear it.
    wrote: AtomicBool,
}

impl<F: StreamFormat + Sync> DirectDelivery for DirectWriter<F> {
    fn deliver(&self, message: &Arc<Message>) -> DirectOutcome {
        let mut subscriptions = self.subscriptions.lock();
        let Some(bytes) = self
            .format
            .shared(message, &subscriptions)
            .filter(|bytes| !bytes.is_empty())
        else {
            // An empty chunk would end the body.
            return DirectOutcome::Queue;
        };
        let Some(position) = subscriptions.next_position(message) else {
            // Duplicates, gaps and unknown channels need the stream's judgement.
            return DirectOutcome::Queue;
        };
        let (line, line_len) = front::size_line(bytes.len());
        let size_line = &line[..line_len];
        let parts = [
            io::IoSlice::new(size_line),
            io::IoSlice::new(&bytes),
            io::IoSlice::new(b"\r\n"),
        ];
        let total = size_line.len() + bytes.len() + 2;
        let written = match self.socket.try_write_vectored(&parts) {
            Ok(written) => written,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            // A broken socket: the stream's task finds out on its side and ends.
            Err(_) => return DirectOutcome::Queue,
        };
        *position = message.position();
        self.wrote.store(true, Ordering::Relaxed);
        if written == total {
            return DirectOutcome::Done;
        }
        DirectOutcome::Partial(framed(&bytes).slice(written..))
    }

    /// One vectored write for the run's chunks, as far as its messages follow each other.
    fn deliver_run(&self, messages: &[Arc<Message>]) -> RunOutcome {
        let Some(first) = messages.first() else {
            return RunOutcome::default();
        };
        let mut subscriptions = self.subscriptions.lock();
        // Anything but the channel's next messages, sent as shared bytes, is left to the
        // stream's judgement (an empty chunk would end the body).
        let chunks: Vec<(([u8; 18], usize), Bytes)> = messages[..in_sequence(messages)]
            .iter()
            .map_while(|m| self.format.shared(m, &subscriptions))
            .take_while(|bytes| !bytes.is_empty())
            .map(|bytes| (front::size_line(bytes.len()), bytes))
            .collect();
        if chunks.is_empty() {
            return RunOutcome::default();
        }
        let Some(position) = subscriptions.next_position(first) else {
            return RunOutcome::default();
        };
        let parts: Vec<io::IoSlice<'_>> = chunks
            .iter()
            .flat_map(|((line, len), bytes)| {
                [
                    io::IoSlice::new(&line[..*len]),
                    io::IoSlice::new(bytes),
                    io::IoSlice::new(b"\r\n"),
                ]
            })
            .collect();
        let written = match self.socket.try_write_vectored(&parts) {
            Ok(written) => written,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            // A broken socket: the stream's task finds out on its side and ends.
            Err(_) => return RunOutcome::default(),
        };
        let lens = chunks.iter().map(|((_, len), bytes)| len + bytes.len() + 2);
        let (taken, cut) = RunOutcome::after_write(lens, written);
        *position = messages[taken - 1].position();
        self.wrote.store(true, Ordering::Relaxed);
        RunOutcome {
            taken,
            rest: cut.map(|at| framed(&chunks[taken - 1].1).slice(at..)),
        }
    }
}

/// `bytes` as one chunk of a chunked body.
fn framed(bytes: &[u8]) -> Bytes {
    let mut chunk = BytesMut::with_capacity(bytes.len() + 20);
    front::frame_chunk(&mut chunk, bytes);
    chunk.freeze()
}

impl<F: StreamFormat> http_body::Body for EventStream<F> {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        if let Some(first) = this.first.take() {
            if !first.is_empty() {
                return data(first);
            }
        }
        if this.direct.is_some() {
            // Polled again: what this stream returned last is written. The publisher may
            // write directly again.
            this.session.outbox().end_write();
        }
        loop {
            let polled = this.session.outbox().poll_drain(cx, &mut this.batch);
            match polled {
                Poll::Ready(Ok(drained)) => {
                    let signals = drained.signals;
                    let pending = drained.pending;
                    let end = if signals.contains(Signals::CLOSE) {
                        Some("server shutting down")
                    } else if signals.contains(Signals::EXPIRE) && this.session.token_expired() {
                        Some("token expired")
                    } else {
                        None
                    };
                    if let Some(reason) = end {
                        this.finished = true;
                        let notice = this.format.disconnect(reason, true);
                        return data_or_end(this.emit(pending, Some(notice), true));
                    }
                    let chunk = this.encode_batch();
                    if chunk.is_some() || pending.is_some() {
                        this.wrote_since_tick = true;
                        if let Some(out) = this.emit(pending, chunk, false) {
                            return data(out);
                        }
                    }
                    if signals.contains(Signals::TICK) {
                        let wrote = this.wrote_directly() || this.wrote_since_tick;
                        this.wrote_since_tick = false;
                        if !wrote {
                            let keepalive = this.format.keepalive();
                            return data_or_end(this.emit(None, Some(keepalive), false));
                        }
                    }
                    if this.direct.is_some() {
                        // Nothing to write after all (a tick, duplicates): the drain marked the
                        // stream as writing; it is not.
                        this.session.outbox().end_write();
                    }
                }
                Poll::Ready(Err(overflow)) => {
                    tracing::info!(%overflow, "disconnecting a slow stream consumer");
                    this.finished = true;
                    // The rest of a direct write, if any, completes its chunk first.
                    let pending = if this.direct.is_some() {
                        this.session.outbox().begin_write()
                    } else {
                        None
                    };
                    let notice = this.format.disconnect("slow consumer", true);
                    return data_or_end(this.emit(pending, Some(notice), true));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::sse::SseFormat;
    use crate::transport::test_support::{at_start, connected_pair};
    use herald_core::{ChannelId, Epoch, Payload, Position};
    use tokio::io::AsyncReadExt;

    fn message(offset: u64) -> Arc<Message> {
        let position = Position {
            epoch: Epoch::from_u64(3),
            offset,
        };
        let payload = Payload::from_text(format!("event {offset}").as_bytes()).expect("payload");
        Message::new(
            ChannelId::parse("feed").expect("cid"),
            position,
            0,
            &payload,
        )
    }

    #[tokio::test]
    async fn a_run_goes_out_as_one_write_of_chunks_as_far_as_its_messages_follow_each_other() {
        let (server, mut client) = connected_pair().await;
        let subscriptions = at_start("feed", 3);
        let writer = DirectWriter {
            socket: Arc::new(server),
            subscriptions: Arc::new(Mutex::new(subscriptions)),
            format: SseFormat,
            wrote: AtomicBool::new(false),
        };
        // 5 does not follow 2: the run stops before it.
        let run = [message(1), message(2), message(5)];
        assert_eq!(
            writer.deliver_run(&run),
            RunOutcome {
                taken: 2,
                rest: None
            }
        );
        assert!(writer.wrote.load(Ordering::Relaxed));
        let expected: Vec<u8> = run[..2]
            .iter()
            .flat_map(|m| framed(&m.sse_event()).to_vec())
            .collect();
        let mut received = vec![0; expected.len()];
        client.read_exact(&mut received).await.expect("read");
        assert_eq!(received, expected);
        // The stream stands at 2: a run from 5 is the stream's to judge.
        assert_eq!(writer.deliver_run(&run[2..]), RunOutcome::default());
        assert_eq!(writer.deliver_run(&[message(3), message(4)]).taken, 2);
    }
}
