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

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::Frame;

use herald_core::{Accept, Gap, Message, Signals, Subscriptions};

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
        }
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
        loop {
            let polled = this.session.outbox().poll_drain(cx, &mut this.batch);
            match polled {
                Poll::Ready(Ok(drained)) => {
                    let signals = drained.signals;
                    if signals.contains(Signals::CLOSE) {
                        this.finished = true;
                        return data(this.format.disconnect("server shutting down", true));
                    }
                    if signals.contains(Signals::EXPIRE) && this.session.token_expired() {
                        this.finished = true;
                        return data(this.format.disconnect("token expired", true));
                    }
                    if let Some(chunk) = this.encode_batch() {
                        this.wrote_since_tick = true;
                        return data(chunk);
                    }
                    if signals.contains(Signals::TICK) {
                        if !this.wrote_since_tick {
                            return data(this.format.keepalive());
                        }
                        this.wrote_since_tick = false;
                    }
                }
                Poll::Ready(Err(overflow)) => {
                    tracing::info!(%overflow, "disconnecting a slow stream consumer");
                    this.finished = true;
                    return data(this.format.disconnect("slow consumer", true));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
