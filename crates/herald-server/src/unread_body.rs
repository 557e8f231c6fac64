//! Whether a request's body was read to its end, for the connections hyper serves.
//!
//! A handler that refuses a request often leaves its body unread: a publish too large or
//! refused before its body is looked at, a request to a path that takes none. hyper then
//! closes the connection after the answer rather than read what nobody wants, without saying
//! so; a client that keeps the connection for its next request sends it into a closing socket
//! and gets a broken pipe. So the body is watched, and an answer given while it is unread says
//! `Connection: close`. A refusal that read the body (invalid JSON) keeps the connection.
//!
//! Not watched: a body of at most [`DRAINED_BY_HYPER`] bytes. hyper reads what is left of an
//! unread body once after the answer, and keeps the connection if that was all of it: a small
//! body sent with its head always is (a `GET` that carries two bytes stays usable).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use http_body::{Body, Frame, SizeHint};

/// Bodies up to this size are left to hyper, which reads them to their end itself.
pub const DRAINED_BY_HYPER: u64 = 1024;

/// A request body that records when it has been read to its end.
pub struct Watched<B> {
    inner: B,
    /// Set once the end was read; `None` for a body not watched (empty or small).
    ended: Option<Arc<AtomicBool>>,
}

/// Tells, after the request was handled, whether its body was read to its end.
pub struct Watch(Option<Arc<AtomicBool>>);

/// Wraps `body` so that [`Watch::close_if_unread`] can tell whether it was read.
pub fn watched<B: Body>(body: B) -> (Watched<B>, Watch) {
    // An empty or small body needs no watching, nor the allocation.
    let small = body.is_end_stream()
        || body
            .size_hint()
            .exact()
            .is_some_and(|length| length <= DRAINED_BY_HYPER);
    let ended = (!small).then(|| Arc::new(AtomicBool::new(false)));
    let watch = Watch(ended.clone());
    (Watched { inner: body, ended }, watch)
}

impl Watch {
    /// Marks `response` as the connection's last if the body was left unread.
    pub fn close_if_unread<T>(&self, response: &mut Response<T>) {
        if self
            .0
            .as_ref()
            .is_some_and(|ended| !ended.load(Ordering::Acquire))
        {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Watched<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || this.inner.is_end_stream() {
            if let Some(ended) = &this.ended {
                ended.store(true, Ordering::Release);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt as _;
    use http_body_util::{BodyExt, Empty, Full};

    fn says_close(watch: &Watch) -> bool {
        let mut response = Response::new(());
        watch.close_if_unread(&mut response);
        response.headers().get(header::CONNECTION).is_some()
    }

    #[test]
    fn an_unread_body_closes_and_a_read_one_does_not() {
        let large = Bytes::from(vec![b'a'; DRAINED_BY_HYPER as usize + 1]);
        let (body, watch) = watched(Full::new(large.clone()));
        assert!(says_close(&watch), "unread");
        let read = body.collect().now_or_never().expect("ready").expect("read");
        assert_eq!(read.to_bytes(), large);
        assert!(!says_close(&watch), "read to its end");
    }

    #[test]
    fn empty_and_small_bodies_are_left_to_hyper() {
        let (_body, watch) = watched(Empty::<Bytes>::new());
        assert!(!says_close(&watch), "empty");
        let small = Bytes::from(vec![b'a'; DRAINED_BY_HYPER as usize]);
        let (_body, watch) = watched(Full::new(small));
        assert!(!says_close(&watch), "small");
    }
}
