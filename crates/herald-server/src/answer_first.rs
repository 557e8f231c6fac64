//! Answering a publish before its fan-out.
//!
//! The publisher's own thread writes the idle subscribers of a small channel (see
//! `herald_core::Load`), and when a connection thread has fallen far behind with the shares of
//! large channels, the publish waits for it before the publisher's next request is read (see
//! `herald_core::Hub::room`). The backend that published has no reason to wait for either: once
//! the message has its position and is in history, its answer is known. So for a publish the
//! connection front answers, the front lends the handler an [`AnswerFirst`] (`front::Lent`);
//! the publish handler gives it the answer from the engine's before-fan-out hook
//! (`herald_core::BeforeFanOut`), and the answer goes to the socket at once, as far as the
//! socket takes it without waiting. The front then writes whatever is left and does not write
//! the handler's own response (the same answer) again.
//!
//! Requests served by hyper (TLS, a chunked body, …) get no [`AnswerFirst`] and are answered
//! after the fan-out, as before.

use std::io;
use std::sync::Arc;

use bytes::{BufMut as _, Bytes};
use http::{Response, StatusCode};
use http_body_util::Empty;
use parking_lot::Mutex;
use tokio::net::TcpStream;

use crate::front::json_head;
use crate::http::{boxed, Body};

/// Lets the handler of a request answered by the front write its answer before it returns.
/// Cheap to clone; only the first answer given counts.
pub struct AnswerFirst(Arc<Inner>);

struct Inner {
    socket: Arc<TcpStream>,
    keep_alive: bool,
    state: Mutex<State>,
}

enum State {
    /// No answer yet.
    Waiting,
    /// Answered; the front has not collected it yet.
    Sent(Sent),
    /// Answered and collected.
    Collected,
}

/// An answer given early: what the socket did not take at once, and how the connection goes on.
#[derive(Debug)]
pub struct Sent {
    /// Bytes of the answer still to be written.
    pub rest: Bytes,
    /// Whether the answer kept the connection open.
    pub keep_alive: bool,
    /// The write failed: the connection is broken.
    pub error: Option<io::Error>,
}

impl AnswerFirst {
    /// An early answer to a request on `socket`; `keep_alive`: the connection stays open after
    /// it (else the answer says `connection: close`).
    pub fn new(socket: Arc<TcpStream>, keep_alive: bool) -> Self {
        Self(Arc::new(Inner {
            socket,
            keep_alive,
            state: Mutex::new(State::Waiting),
        }))
    }

    /// Writes a JSON answer with `status` and `body` now, as far as the socket takes it without
    /// waiting (the front writes the rest). Never blocks; only the first answer is written.
    /// Returns what the handler returns in place of the answer: a stand-in with the same
    /// status, which the front never writes (it writes what is left of this answer instead;
    /// see [`AnswerFirst::collect`]).
    pub fn send_json(&self, status: StatusCode, body: &str) -> Response<Body> {
        let mut state = self.0.state.lock();
        if matches!(*state, State::Waiting) {
            let mut answer = json_head(status, body.len(), self.0.keep_alive);
            answer.put_slice(body.as_bytes());
            let answer = answer.freeze();
            let (written, error) = match self.0.socket.try_write(&answer) {
                Ok(written) => (written, None),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => (0, None),
                Err(e) => (0, Some(e)),
            };
            *state = State::Sent(Sent {
                rest: answer.slice(written..),
                keep_alive: self.0.keep_alive,
                error,
            });
        }
        let mut stand_in = Response::new(boxed(Empty::new()));
        *stand_in.status_mut() = status;
        stand_in
    }

    /// The answer given early, if one was; collected once.
    pub fn collect(&self) -> Option<Sent> {
        let mut state = self.0.state.lock();
        match std::mem::replace(&mut *state, State::Collected) {
            State::Sent(sent) => Some(sent),
            State::Waiting => {
                *state = State::Waiting;
                None
            }
            State::Collected => None,
        }
    }
}
