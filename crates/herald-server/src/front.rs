//! The connection front: long-held subscriber requests served without hyper's buffers.
//!
//! A connection served by hyper keeps two 8 KiB buffers (its read buffer and its response-head
//! buffer) and its dispatcher for as long as a response is in flight. For an SSE stream, a
//! forever iframe or a waiting long poll that is for the whole life of the connection: about
//! 10 KiB of resident memory per subscriber, more than everything else Herald keeps for it.
//! WebSockets give hyper's state back when they upgrade; these transports cannot, as their
//! answer is an ordinary `200`.
//!
//! So a plain-TCP connection starts here. The front reads the first request head into a buffer
//! on the stack of its poll and parses it with `httparse`. A complete, well-formed HTTP/1.1
//! `GET /listen` that is not a WebSocket upgrade and has no body is answered here, by the same
//! router as every other request: the response head is written, then the body — with
//! `Content-Length` when it is complete (long polling), chunked when it streams (SSE, iframe).
//! Between requests the connection holds no buffer at all (bytes of a pipelined request read
//! with the previous one are kept until they are answered). A streamed response ends the
//! connection; after a complete one the front waits for the next head (`idle-timeout`; the
//! first one within `header-read-timeout`, as hyper does).
//!
//! A `POST /publish` is answered here too when its whole body came with its head (one plain
//! `Content-Length`, no `Expect`, head and body within [`READ_LIMIT`]): that is how a
//! backend's keep-alive publisher sends small messages, and it spares every publish hyper's
//! dispatcher, buffers and head timer (measured in BENCHMARKS.md: about 1 µs of server CPU per
//! delivery in the many-channels scenario, where a publish feeds 5 deliveries).
//!
//! A request not all there at the first read — a head cut by a read boundary, a publish body
//! that follows its head in later segments (bodies above about 1.4 KB do on a real network) —
//! is read on by the front, within the same head timeout, up to [`READ_LIMIT`] for a head and
//! `max-body` for a body; a connection is not handed to hyper for being cut.
//!
//! Everything else — a WebSocket upgrade, any other method or path, HTTP/1.0, a publish whose
//! body is chunked or larger than `max-body`, a head larger than [`READ_LIMIT`], anything
//! `httparse` or the `http` types refuse — goes to hyper for the rest of the connection's
//! life, through [`Prefixed`]: hyper reads first every byte the front read,
//! so it sees the connection exactly as the client sent it, and gives every malformed request
//! its usual answer. TLS connections always go to hyper.
//!
//! A request the front answers costs one `recvfrom`: a read that does not fill the buffer has
//! drained the socket, so its readiness is cleared at once and the next wait goes straight to
//! the event loop (an earlier design peeked, read, then peeked again: three per request).
//!
//! While a response is in flight the front watches the socket for the client going away
//! (end of stream or reset), as hyper does, and drops the request when it does. Bytes the client
//! sends meanwhile (a pipelined request) are left in the socket for the next head.
//!
//! An SSE stream served here gets the socket too ([`DirectSocket`], lent to the handler with
//! [`Lent`]): it frames its own chunks ([`PreFramed`]) and lets the publisher write to the
//! socket directly while it is idle (see `transport::stream`).

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::{poll_fn, Future as _};
use std::io::{self, Read as _};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{ready, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt as _;
use http::{header, HeaderName, HeaderValue, Method, Request, StatusCode, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::admission::ConnectionSlot;
use crate::answer_first::AnswerFirst;
use crate::app::App;
use crate::deadlines::{deadline_after, Bell};
use crate::http::Body;
use crate::prefixed::Prefixed;
use crate::router;
use crate::server;

/// Largest request head the front reads; a larger one goes to hyper.
pub const READ_LIMIT: usize = 8 * 1024;
/// Bytes of the first read of a request head, on the stack of a poll.
const STACK_READ: usize = 2048;
/// Headers parsed without allocating (hyper's default `max-headers`).
const STACK_HEADERS: usize = 100;
/// Most bytes one read of a request not all there at once reserves (see `read_more`).
const READ_CHUNK: usize = 16 * 1024;
/// The least time hyper is given to read a head the front handed over.
const MIN_HEAD_WAIT: Duration = Duration::from_millis(10);

/// Serves a plain-TCP connection: subscriber requests here, the rest by hyper.
pub async fn serve(app: Arc<App>, stream: TcpStream, peer: SocketAddr, slot: ConnectionSlot) {
    // Shared: an SSE stream's direct writer writes to it from the publishing thread.
    let stream = Arc::new(stream);
    // Bytes read but not yet used: the start of a pipelined request, or (for hyper) all of it.
    let mut buffered = BytesMut::new();
    let mut wait = app.config.header_read_timeout;
    // Rung when a wait for a request head outlasts its timeout, or at shutdown.
    let bell = Arc::new(Bell::default());
    loop {
        let deadline = deadline_after(tokio::time::Instant::now(), wait);
        let Some(head) = head_within(&app, &stream, &mut buffered, &bell, deadline).await else {
            // Like hyper's header-read timeout: close without an answer.
            return;
        };
        let request = match head {
            Err(error) => {
                tracing::debug!(%peer, %error, "connection ended while reading a request");
                return;
            }
            Ok(Head::Closed) => return,
            Ok(Head::ForHyper) => {
                // hyper's own head timer gets what is left of this wait, so a head dribbled
                // in byte by byte has no more time in all than with hyper alone.
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let Ok(stream) = Arc::try_unwrap(stream) else {
                    // Cannot happen: only a stream shares the socket, and it ends the connection.
                    tracing::warn!(%peer, "socket still shared at the hand-over to hyper");
                    return;
                };
                let io = TokioIo::new(Prefixed::new(buffered.freeze(), stream));
                // Boxed: hyper's connection state is large, and only this branch needs it.
                Box::pin(server::serve_http(
                    app,
                    io,
                    peer,
                    slot,
                    left.max(MIN_HEAD_WAIT),
                ))
                .await;
                return;
            }
            Ok(Head::Native(request)) => request,
        };
        let keep_alive = wants_keep_alive(request.headers());
        // The front answers two requests, each given the socket its own way: a `POST /publish`
        // may be answered before its fan-out (see `answer_first`), a `GET /listen` stream may
        // be written by the publisher directly (`DirectSocket`).
        let lent = if request.method() == Method::POST {
            Lent::AnswerFirst(AnswerFirst::new(
                Arc::clone(&stream),
                keep_alive && !app.shutdown.is_cancelled(),
            ))
        } else {
            Lent::Socket(DirectSocket(Arc::clone(&stream)))
        };
        // Boxed: a request's state is needed only while it is answered, not while the
        // connection waits idle for the next one.
        let answering = respond(&app, &stream, request, &peer, keep_alive, &lent);
        match Box::pin(answering).await {
            Ok(Next::Request) if !app.shutdown.is_cancelled() => {}
            Ok(Next::Request | Next::Close) => return,
            Ok(Next::Stream { head, body, framed }) => {
                let stream = Stream {
                    socket: stream,
                    framed,
                };
                app.tasks.spawn(run_stream(stream, head, body, peer, slot));
                return;
            }
            Err(error) => {
                tracing::debug!(%peer, %error, "connection ended while answering");
                return;
            }
        }
        wait = app.config.idle_timeout;
    }
}

/// Reads the next request head ([`next_head`]) before `deadline`; `None` if the deadline
/// passes first or the server shuts down. The wait is on the registry's wheel of deadlines,
/// not a timer of its own (see `deadlines`), and only when the head is not already there.
async fn head_within(
    app: &Arc<App>,
    stream: &Arc<TcpStream>,
    buffered: &mut BytesMut,
    bell: &Arc<Bell>,
    deadline: tokio::time::Instant,
) -> Option<io::Result<Head>> {
    let mut reading = std::pin::pin!(next_head(stream, app, buffered));
    let mut registration = None;
    // The head first, each time the task wakes; the deadline is registered at the first
    // time the head is not there, and only then. (One poll of the socket per wake: a
    // `select!` after a first look would poll it twice.)
    poll_fn(|cx| {
        if let Poll::Ready(head) = reading.as_mut().poll(cx) {
            return Poll::Ready(Some(head));
        }
        if registration.is_none() {
            // A ring from the last wait's deadline, passing as its head came, is not for
            // this one.
            bell.clear();
            registration = Some(app.registry.register_until(bell.clone(), deadline));
            // Shutdown rings what is registered; a wait registered after that sees it here.
            if app.shutdown.is_cancelled() {
                return Poll::Ready(None);
            }
        }
        bell.poll_rung(cx).map(|_| None)
    })
    .await
}

/// What the next request on a connection is.
enum Head {
    /// A request the front answers, read off the connection (its head, a publish's body too).
    Native(Box<Request<Full<Bytes>>>),
    /// Anything else: hyper serves the connection from here on.
    ForHyper,
    /// The client closed the connection before sending a request.
    Closed,
}

/// What a connection does after a response.
enum Next {
    /// Waits for the next request.
    Request,
    /// Ends.
    Close,
    /// Streams `body` after `head` (the response head, not yet written), then ends; `framed`
    /// if the body frames its own chunks (see [`PreFramed`]).
    Stream {
        head: BytesMut,
        body: Body,
        framed: bool,
    },
}

/// Reads the next request head and decides who answers it. A request the front answers is
/// taken out of `buffered` (or never enters it); for hyper, everything read stays there, to be
/// read again through [`Prefixed`].
///
/// The first read goes into a buffer on the stack of the poll itself, so a connection waiting
/// for its next request holds none, and a request that arrives whole (most do) costs one
/// system call; bytes after it (a pipelined request) are kept in `buffered`. A request that
/// is not all there at once — a head cut by a read boundary, a publish whose body follows its
/// head in later segments — is read on into `buffered` until the front can tell: a head up to
/// [`READ_LIMIT`], a publish's body up to `max-body`. The caller bounds the whole wait (the
/// head timeouts).
async fn next_head(stream: &TcpStream, app: &App, buffered: &mut BytesMut) -> io::Result<Head> {
    let config = &app.config;
    let parse = |bytes: &[u8]| parse_request(bytes, config.max_headers, config.max_header_size);
    if buffered.is_empty() {
        let first = poll_fn(|cx| {
            let mut buf = [0u8; STACK_READ];
            let n = match ready!(poll_read_some(stream, cx, &mut buf)) {
                Ok(n) => n,
                Err(error) => return Poll::Ready(Err(error)),
            };
            if n == 0 {
                return Poll::Ready(Ok(Some(Head::Closed)));
            }
            // Parsed where the bytes are, on the stack; only what is left is kept.
            Poll::Ready(Ok(match parse(&buf[..n]) {
                Parsed::Request(request, used) => {
                    buffered.extend_from_slice(&buf[used..n]);
                    Some(Head::Native(request))
                }
                Parsed::NotOurs => {
                    buffered.extend_from_slice(&buf[..n]);
                    Some(Head::ForHyper)
                }
                Parsed::HeadIncomplete | Parsed::BodyIncomplete { .. } => {
                    buffered.extend_from_slice(&buf[..n]);
                    None
                }
            }))
        })
        .await?;
        if let Some(head) = first {
            return Ok(head);
        }
    }
    loop {
        let wanted = match parse(buffered) {
            Parsed::Request(request, used) => {
                consume(buffered, used);
                return Ok(Head::Native(request));
            }
            Parsed::HeadIncomplete if buffered.len() < READ_LIMIT => READ_LIMIT,
            Parsed::BodyIncomplete { total, body } if body <= config.max_body => total,
            // Too large for the front, or not for it: hyper's, with every byte read so far.
            _ => return Ok(Head::ForHyper),
        };
        // Read until there is something new to parse: a line end that may end the head, or
        // the whole body.
        loop {
            let start = buffered.len();
            if read_more(stream, buffered, wanted - start).await? == 0 {
                // The client stopped sending mid-request: hyper answers that as it does.
                return Ok(Head::ForHyper);
            }
            if buffered.len() >= wanted || may_end_head(&buffered[start.saturating_sub(2)..]) {
                break;
            }
        }
    }
}

/// True if `bytes` hold an empty line's end (`\n\n` or `\n\r\n`): where a head may end.
fn may_end_head(bytes: &[u8]) -> bool {
    bytes
        .windows(2)
        .enumerate()
        .any(|(i, w)| w[0] == b'\n' && (w[1] == b'\n' || bytes[i + 1..].starts_with(b"\r\n")))
}

/// Waits until the socket is readable and appends what it holds to `buffered`, up to the
/// `room` still wanted and at most [`READ_CHUNK`]; `0` at its end. Memory is taken only once
/// there are bytes to read, so a client that declares a large body and stalls holds no buffer
/// for it. Each poll leaves `buffered` whole (cancel-safe).
async fn read_more(stream: &TcpStream, buffered: &mut BytesMut, room: usize) -> io::Result<usize> {
    poll_fn(|cx| {
        ready!(stream.poll_read_ready(cx))?;
        let start = buffered.len();
        buffered.resize(start + room.clamp(1, READ_CHUNK), 0);
        let read = poll_read_some(stream, cx, &mut buffered[start..]);
        let n = match &read {
            Poll::Ready(Ok(n)) => *n,
            _ => 0,
        };
        buffered.truncate(start + n);
        read
    })
    .await
}

/// Drops the first `len` bytes of `buffered`, and its allocation once nothing is left, so an
/// idle connection keeps no buffer.
fn consume(buffered: &mut BytesMut, len: usize) {
    buffered.advance(len);
    if buffered.is_empty() {
        *buffered = BytesMut::new();
    }
}

/// Waits until the socket is readable and reads what it holds into `buf`; `0` at its end.
fn poll_read_some(
    stream: &TcpStream,
    cx: &mut std::task::Context<'_>,
    buf: &mut [u8],
) -> Poll<io::Result<usize>> {
    loop {
        ready!(stream.poll_read_ready(cx))?;
        if let Some(n) = read_now(stream, buf)? {
            return Poll::Ready(Ok(n));
        }
    }
}

/// Reads what the socket holds into `buf` without waiting: `None` if it holds nothing. A read
/// that does not fill `buf` has drained the socket, so its readiness is cleared at once, as
/// tokio's own reads do: the next wait goes straight to the event loop instead of first
/// making a read that would block. (Only readiness seen before this read is cleared; data that
/// arrives after it is a new event.)
fn read_now(stream: &TcpStream, buf: &mut [u8]) -> io::Result<Option<usize>> {
    let mut read = 0;
    let outcome = stream.try_io(Interest::READABLE, || {
        let mut socket: &socket2::Socket = &socket2::SockRef::from(stream);
        read = socket.read(buf)?;
        if read > 0 && read < buf.len() {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(())
        }
    });
    match outcome {
        Ok(()) => Ok(Some(read)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok((read > 0).then_some(read)),
        Err(e) => Err(e),
    }
}

/// A request the front answers, parsed from the start of `bytes`, and how many bytes it takes
/// (its head, and a publish's body); `None` for anything else, including a request not all
/// there yet (see [`parse_request`]). Public for the fuzz target.
pub fn parse_head(
    bytes: &[u8],
    max_headers: usize,
    max_header_size: usize,
) -> Option<(Request<Full<Bytes>>, usize)> {
    match parse_request(bytes, max_headers, max_header_size) {
        Parsed::Request(request, len) => Some((*request, len)),
        _ => None,
    }
}

/// What the start of a connection's unread bytes is, to the front.
#[derive(Debug)]
pub enum Parsed {
    /// A request the front answers, and how many bytes it takes (its head, and a publish's
    /// body).
    Request(Box<Request<Full<Bytes>>>, usize),
    /// The start of a head that has not ended yet, within `max-header-size`.
    HeadIncomplete,
    /// A publish the front answers once its body is here: `total` bytes in all, `body` of
    /// them its body.
    BodyIncomplete {
        /// Head and body.
        total: usize,
        /// The body's declared length.
        body: usize,
    },
    /// Anything hyper must serve (see the module documentation).
    NotOurs,
}

/// Reads the start of `bytes` as the front does (see [`Parsed`]). Public for the fuzz target.
pub fn parse_request(bytes: &[u8], max_headers: usize, max_header_size: usize) -> Parsed {
    parse_complete(bytes, max_headers, max_header_size).unwrap_or(Parsed::NotOurs)
}

fn parse_complete(bytes: &[u8], max_headers: usize, max_header_size: usize) -> Option<Parsed> {
    // Room for hyper's default header count on the stack, left uninitialised: httparse writes
    // only the headers it finds, and filling all 100 first took about 60 ns of a publish's
    // 480 (`cargo bench -p herald-server --bench request`). Only a larger configured limit
    // allocates.
    let mut on_stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
    let mut on_heap = Vec::new();
    let headers = if max_headers <= STACK_HEADERS {
        &mut on_stack[..max_headers]
    } else {
        on_heap.resize_with(max_headers, MaybeUninit::uninit);
        &mut on_heap[..]
    };
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(bytes, headers) {
        Ok(httparse::Status::Complete(len)) if len <= max_header_size => len,
        Ok(httparse::Status::Partial) if bytes.len() < max_header_size => {
            return Some(Parsed::HeadIncomplete)
        }
        _ => return None,
    };
    if parsed.version != Some(1) {
        return None;
    }
    let target = parsed.path?;
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    let method = match (parsed.method?, path) {
        ("GET", "/listen" | "/listen/") => Method::GET,
        ("POST", "/publish" | "/publish/") => Method::POST,
        _ => return None,
    };
    let mut request = Request::new(Full::new(Bytes::new()));
    *request.version_mut() = Version::HTTP_11;
    let uri: http::Uri = target.parse().ok()?;
    // A target the URI type reads differently from its bytes (a `#fragment`, say) is not one
    // to second-guess here.
    if uri.path_and_query().map(|p| p.as_str()) != Some(target) {
        return None;
    }
    *request.uri_mut() = uri;
    let map = request.headers_mut();
    map.reserve(parsed.headers.len());
    // The headers that decide who reads the request are looked at as they go into the map,
    // not looked up in it afterwards.
    let mut length: Option<&[u8]> = None;
    let mut lengths = 0usize;
    let mut nonzero_length = false;
    for h in parsed.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return None;
        };
        if name == header::TRANSFER_ENCODING || name == header::UPGRADE || name == header::EXPECT {
            return None;
        }
        if name == header::CONTENT_LENGTH {
            lengths += 1;
            nonzero_length |= h.value != b"0";
            length = Some(h.value);
        }
        map.append(name, value);
    }
    let end = if method == Method::POST {
        // Exactly one length, in digits: anything else (repeated lengths) is hyper's to read.
        let (Some(length), 1) = (length, lengths) else {
            return None;
        };
        // Digits only: `parse` alone would take a sign. Overflow and "" fail to parse.
        if !length.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let body_len: usize = std::str::from_utf8(length).ok()?.parse().ok()?;
        let end = len.checked_add(body_len)?;
        if end > bytes.len() {
            return Some(Parsed::BodyIncomplete {
                total: end,
                body: body_len,
            });
        }
        *request.body_mut() = Full::new(Bytes::copy_from_slice(&bytes[len..end]));
        end
    } else {
        if nonzero_length {
            return None;
        }
        len
    };
    *request.method_mut() = method;
    Some(Parsed::Request(Box::new(request), end))
}

/// False if the HTTP/1.1 request asks to close the connection after its answer.
fn wants_keep_alive(headers: &http::HeaderMap) -> bool {
    !headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("close"))
}

/// Answers one request: runs the router (dropping the request if the client goes away), then
/// writes the response — or, if the handler answered early through the [`AnswerFirst`] it was
/// lent, what is left of that answer.
async fn respond(
    app: &Arc<App>,
    stream: &TcpStream,
    request: Box<Request<Full<Bytes>>>,
    peer: &SocketAddr,
    keep_alive: bool,
    lent: &Lent,
) -> io::Result<Next> {
    let response = tokio::select! {
        // In this order, without drawing a random number on every poll: a response that is
        // ready goes out even if the client has meanwhile closed its side.
        biased;
        response = router::handle(app, request, peer, Some(lent)) => response,
        () = client_gone(stream) => return Ok(Next::Close),
    };
    if let Some(sent) = lent.answer_first().and_then(AnswerFirst::collect) {
        if let Some(error) = sent.error {
            return Err(error);
        }
        write_all(stream, &mut [sent.rest]).await?;
        return Ok(if sent.keep_alive {
            Next::Request
        } else {
            Next::Close
        });
    }
    let (parts, body) = response.into_parts();
    let no_body = parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    let length = if no_body {
        Some(0)
    } else {
        body.size_hint().exact()
    };
    match length {
        Some(length) => {
            let keep_alive = keep_alive && !app.shutdown.is_cancelled();
            // 204 and 304 carry no body and no length (RFC 9110 §8.6).
            let framing = if no_body {
                Framing::None
            } else {
                Framing::Length(length)
            };
            let content = if no_body {
                Bytes::new()
            } else {
                collect(body).await
            };
            let mut head = response_head(&parts, framing, keep_alive);
            if content.len() <= MAX_INLINE_BODY {
                // A small body (every long-poll answer) goes out in the head's buffer: one
                // slice to write, no shared copy of the head made, and nothing else held
                // while the socket takes it.
                head.extend_from_slice(&content);
                drop(content);
                write_all(stream, &mut [&head[..]]).await?;
            } else {
                write_all(stream, &mut [head.freeze(), content]).await?;
            }
            Ok(if keep_alive {
                Next::Request
            } else {
                Next::Close
            })
        }
        None => Ok(Next::Stream {
            head: response_head(&parts, Framing::Chunked, false),
            body,
            framed: parts.extensions.get::<PreFramed>().is_some(),
        }),
    }
}

/// Runs a streamed response as a task of its own, holding the connection's slot until it ends.
/// The task that read the request ends instead of waiting on it: an idle stream then holds
/// only this small future, not the request phase's state beside it.
async fn run_stream(
    stream: Stream,
    head: BytesMut,
    mut body: Body,
    peer: SocketAddr,
    slot: ConnectionSlot,
) {
    if let Err(error) = stream_body(&stream, head, &mut body).await {
        tracing::debug!(%peer, %error, "stream ended with an error");
    }
    drop(slot);
}

/// Writes a streamed response: the head (with the first chunk if it is ready), then each
/// chunk as it comes, until the body ends or the client goes away. One write point, so the
/// future (every idle stream's state) stays small.
async fn stream_body(stream: &Stream, head: BytesMut, body: &mut Body) -> io::Result<()> {
    let socket = &*stream.socket;
    // Bytes to write before the next data: the head, then each chunk's size line.
    let mut pending = head;
    let mut first = true;
    loop {
        // The first chunk is usually ready at once (the stream's prelude): it goes out with
        // the head. Otherwise the head goes out alone before waiting.
        let ready = if first {
            first = false;
            body.frame().now_or_never()
        } else {
            None
        };
        let frame = match ready {
            Some(frame) => Some(frame),
            None if !pending.is_empty() => None,
            None => tokio::select! {
                frame = body.frame() => Some(frame),
                () = client_gone(socket) => return Ok(()),
            },
        };
        let mut data = Bytes::new();
        let mut done = false;
        match frame {
            None => {}
            Some(Some(Ok(frame))) => {
                if let Ok(bytes) = frame.into_data() {
                    if !bytes.is_empty() && !stream.framed {
                        chunk_prefix(&mut pending, bytes.len());
                    }
                    data = bytes;
                }
            }
            Some(Some(Err(never))) => match never {},
            Some(None) => {
                if !stream.framed {
                    pending.extend_from_slice(LAST_CHUNK);
                }
                done = true;
            }
        }
        if !pending.is_empty() || !data.is_empty() {
            let end = if data.is_empty() || stream.framed {
                Bytes::new()
            } else {
                CRLF
            };
            let out = std::mem::take(&mut pending).freeze();
            write_all(socket, &mut [out, data, end]).await?;
        }
        if done {
            let _ = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Write);
            return Ok(());
        }
    }
}

const CRLF: Bytes = Bytes::from_static(b"\r\n");
/// The end of a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// How a response body is delimited.
pub(crate) enum Framing {
    Length(u64),
    Chunked,
    /// A status that has no body.
    None,
}

/// The response's status line and headers, as hyper would write them (lower-case names, a
/// `date`).
pub(crate) fn response_head(
    parts: &http::response::Parts,
    framing: Framing,
    keep_alive: bool,
) -> BytesMut {
    let mut head = status_line(parts.status);
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
        {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    end_head(
        &mut head,
        framing,
        keep_alive,
        parts.headers.contains_key(header::DATE),
    );
    head
}

/// The head [`response_head`] writes for a JSON answer of `length` bytes made by
/// `http::json`, written without making the response: the early answer to a publish
/// (`answer_first`) is on the publish hot path.
pub(crate) fn json_head(status: StatusCode, length: usize, keep_alive: bool) -> BytesMut {
    let mut head = status_line(status);
    head.extend_from_slice(b"content-type: application/json\r\ncache-control: no-store\r\n");
    let length = u64::try_from(length).unwrap_or(u64::MAX);
    end_head(&mut head, Framing::Length(length), keep_alive, false);
    head
}

fn status_line(status: StatusCode) -> BytesMut {
    // Room for a head and a small body after it (see `MAX_INLINE_BODY`).
    let mut head = BytesMut::with_capacity(512);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.extend_from_slice(b" ");
    head.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    head.extend_from_slice(b"\r\n");
    head
}

/// The framing, `connection` and `date` headers and the empty line that end a head.
fn end_head(head: &mut BytesMut, framing: Framing, keep_alive: bool, has_date: bool) {
    match framing {
        Framing::Length(length) => {
            head.extend_from_slice(b"content-length: ");
            head.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None => {}
    }
    if !keep_alive {
        head.extend_from_slice(b"connection: close\r\n");
    }
    if !has_date {
        head.extend_from_slice(b"date: ");
        append_date(head);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
}

/// Appends the current time as an HTTP date, formatted at most once a second per thread (as
/// hyper does): every long-poll answer carries one.
fn append_date(out: &mut BytesMut) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(cached_second, text)| {
        if *cached_second != second {
            *cached_second = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

/// Appends a chunk's size line.
pub fn chunk_prefix(out: &mut BytesMut, len: usize) {
    let (line, n) = size_line(len);
    out.extend_from_slice(&line[..n]);
}

/// The size line of a chunk of `len` bytes (hex digits, CRLF), built on the stack: it is
/// written once per delivery.
pub fn size_line(len: usize) -> ([u8; 18], usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut line = [0u8; 18];
    let bits = usize::BITS - len.leading_zeros();
    let digits = (bits.div_ceil(4) as usize).max(1);
    for (i, slot) in line[..digits].iter_mut().enumerate() {
        *slot = HEX[(len >> (4 * (digits - 1 - i))) & 0xf];
    }
    line[digits] = b'\r';
    line[digits + 1] = b'\n';
    (line, digits + 2)
}

/// The whole of a complete body: its one data frame as it is (every body Herald makes whole
/// has one), several joined. (`BodyExt::collect` would queue the frames first, an allocation
/// per answer.)
async fn collect(mut body: Body) -> Bytes {
    let mut whole = Bytes::new();
    let mut joined: Option<BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let frame: Result<_, Infallible> = frame;
        let Ok(Ok(data)) = frame.map(http_body::Frame::into_data) else {
            // Trailers: a complete answer has none to send.
            continue;
        };
        match &mut joined {
            Some(joined) => joined.extend_from_slice(&data),
            None if whole.is_empty() => whole = data,
            None => {
                let mut both = BytesMut::with_capacity(whole.len() + data.len());
                both.extend_from_slice(&whole);
                both.extend_from_slice(&data);
                joined = Some(both);
            }
        }
    }
    joined.map_or(whole, BytesMut::freeze)
}

/// Writes every byte of `parts` (at most [`MAX_PARTS`] of them), in as few system calls as
/// the socket allows. (Any `Buf`: shared `Bytes`, or slices of buffers the caller keeps, so
/// that a response head need not become a `Bytes` to be written.)
async fn write_all<B: Buf>(stream: &TcpStream, parts: &mut [B]) -> io::Result<()> {
    let mut first = 0;
    while first < parts.len() {
        if !parts[first].has_remaining() {
            first += 1;
            continue;
        }
        let mut slices = [io::IoSlice::new(&[]); MAX_PARTS];
        let mut count = 0;
        for part in parts[first..]
            .iter()
            .filter(|p| p.has_remaining())
            .take(MAX_PARTS)
        {
            slices[count] = io::IoSlice::new(part.chunk());
            count += 1;
        }
        poll_fn(|cx| stream.poll_write_ready(cx)).await?;
        let mut written = match stream.try_write_vectored(&slices[..count]) {
            Ok(written) => written,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let part = &mut parts[first];
            let step = written.min(part.chunk().len());
            part.advance(step);
            written -= step;
            if !part.has_remaining() {
                first += 1;
            }
        }
    }
    Ok(())
}

/// A natively served stream's socket, and whether its body frames its own chunks.
struct Stream {
    socket: Arc<TcpStream>,
    framed: bool,
}

/// What the connection front lends the handler of a request it answers (requests hyper serves
/// get nothing): a publish its early answer, a subscriber request the connection's socket.
/// An argument, not an entry in the request's extensions: those are a map allocated for each
/// request.
pub enum Lent {
    /// See `answer_first`.
    AnswerFirst(AnswerFirst),
    /// For an SSE stream's direct writes.
    Socket(DirectSocket),
}

impl Lent {
    /// The early answer, lent to a publish.
    pub fn answer_first(&self) -> Option<&AnswerFirst> {
        match self {
            Lent::AnswerFirst(answer) => Some(answer),
            Lent::Socket(_) => None,
        }
    }

    /// The connection's socket, lent to a subscriber request.
    pub fn socket(&self) -> Option<&DirectSocket> {
        match self {
            Lent::Socket(socket) => Some(socket),
            Lent::AnswerFirst(_) => None,
        }
    }
}

/// The socket of a request the front answers: an SSE stream gives it to the publisher's
/// direct writer (see `transport::stream`).
pub struct DirectSocket(pub Arc<TcpStream>);

/// In a streamed response's extensions: the body's data is already chunk-framed, last chunk
/// included, so the front writes it as it is.
#[derive(Clone, Copy, Debug)]
pub struct PreFramed;

/// Appends the chunked-encoding frame of `data` (size line, data, line end) to `out`.
pub fn frame_chunk(out: &mut BytesMut, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    chunk_prefix(out, data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(&CRLF);
}

/// Most byte slices one write takes (size line, data, line end).
const MAX_PARTS: usize = 3;

/// Largest complete body copied into its head's buffer to be written with it; a larger one
/// is written beside the head, from where it is.
const MAX_INLINE_BODY: usize = 4096;

/// Resolves when the client has closed the connection or reset it. Bytes it sends meanwhile
/// stay in the socket (they are the next request), and the watch stops.
async fn client_gone(stream: &TcpStream) {
    let mut byte = [0u8; 1];
    // `poll_peek`, not `peek`: the future is a few bytes instead of a few hundred, and it is
    // part of every idle stream's state.
    match poll_fn(|cx| stream.poll_peek(cx, &mut ReadBuf::new(&mut byte))).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Response;

    fn parse(head: &str) -> Option<(Request<Full<Bytes>>, usize)> {
        parse_head(head.as_bytes(), 100, 16 * 1024)
    }

    fn is_native(head: &str) -> bool {
        parse(head).is_some()
    }

    #[test]
    fn subscriber_gets_are_answered_here() {
        for head in [
            "GET /listen?cid=a HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /listen/?cid=a&transport=sse HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /listen?cid=a HTTP/1.1\r\nAccept: text/event-stream\r\nContent-Length: 0\r\n\r\n",
            "GET /listen HTTP/1.1\r\n\r\n",
        ] {
            assert!(is_native(head), "{head:?}");
        }
        let head = "GET /listen?cid=a HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-A: 2\r\n\r\nGET /next";
        let (request, len) = parse(head).expect("answered by the front");
        assert_eq!(len, head.find("GET /next").expect("second request"));
        assert_eq!(request.uri(), "/listen?cid=a");
        assert_eq!(request.headers().get_all("x-a").iter().count(), 2);
    }

    #[test]
    fn requests_not_all_here_are_told_apart() {
        let parse = |bytes: &str| parse_request(bytes.as_bytes(), 100, 16 * 1024);
        // Any head that has not ended: the front reads on before it decides.
        for head in [
            "G",
            "GET /listen?cid=a HTTP/1.1\r\nHost: x\r\n",
            "POST /publish?cid=a HTTP/1.1\r\nContent-Len",
            "GET /health HTTP/1.1\r\n",
        ] {
            assert!(matches!(parse(head), Parsed::HeadIncomplete), "{head:?}");
        }
        // A head longer than max-header-size is hyper's (431), ended or not.
        let long = format!("GET /listen?cid=a HTTP/1.1\r\nX: {}", "v".repeat(200));
        assert!(matches!(
            parse_request(long.as_bytes(), 100, 128),
            Parsed::NotOurs
        ));
        // A publish whose head is here and body is not: how much to wait for.
        let head = "POST /publish?cid=a HTTP/1.1\r\nContent-Length: 5\r\n\r\n";
        for body in ["", "hi"] {
            let bytes = format!("{head}{body}");
            match parse(&bytes) {
                Parsed::BodyIncomplete { total, body } => {
                    assert_eq!((total, body), (head.len() + 5, 5));
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            parse(&format!("{head}hello")),
            Parsed::Request(..)
        ));
        assert!(matches!(
            parse("GET /health HTTP/1.1\r\n\r\n"),
            Parsed::NotOurs
        ));
    }

    #[test]
    fn a_head_may_end_only_where_an_empty_line_ends() {
        for bytes in ["\n\n", "\n\r\n", "x\r\n\r\ny", "\r\n\r\n"] {
            assert!(may_end_head(bytes.as_bytes()), "{bytes:?}");
        }
        for bytes in ["", "\n", "\r\n", "a\r\nb\r\n", "\n\r", "\r\n\r"] {
            assert!(!may_end_head(bytes.as_bytes()), "{bytes:?}");
        }
    }

    #[test]
    fn publishes_whose_body_is_here_are_answered_here() {
        let head = "POST /publish?cid=a HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiGET /next";
        let (request, len) = parse(head).expect("answered by the front");
        assert_eq!(len, head.find("GET /next").expect("second request"));
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri(), "/publish?cid=a");
        let body = request.into_body().collect().now_or_never().expect("ready");
        let body = body.expect("infallible").to_bytes();
        assert_eq!(&body[..], b"hi");
        let head = "POST /publish/?cid=a HTTP/1.1\r\ncontent-length: 0\r\n\r\n";
        let (request, len) = parse(head).expect("an empty body");
        assert_eq!(len, head.len());
        assert_eq!(request.uri().path(), "/publish/");
        for head in [
            // The body is not all here yet (the front reads on), or its length is not one
            // plain number.
            "POST /publish?cid=a HTTP/1.1\r\nContent-Length: 3\r\n\r\nhi",
            "POST /publish?cid=a HTTP/1.1\r\n\r\nhi",
            "POST /publish?cid=a HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi",
            "POST /publish?cid=a HTTP/1.1\r\nContent-Length: +2\r\n\r\nhi",
            "POST /publish?cid=a HTTP/1.1\r\nContent-Length: \r\n\r\nhi",
            "POST /publish?cid=a HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "POST /publish?cid=a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            "POST /publish?cid=a HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nhi",
            "POST /publish?cid=a HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi",
            "PUT /publish?cid=a HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
            "POST /listen?cid=a HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
        ] {
            assert!(parse(head).is_none(), "{head:?}");
        }
    }

    #[test]
    fn a_get_whose_lengths_are_all_zero_is_answered_here() {
        for head in [
            "GET /listen?cid=a HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "GET /listen?cid=a HTTP/1.1\r\ncontent-length: 0\r\nCONTENT-LENGTH: 0\r\n\r\n",
        ] {
            let (_, len) = parse(head).expect("answered by the front");
            assert_eq!(len, head.len(), "{head:?}");
        }
        for head in [
            "GET /listen?cid=a HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 1\r\n\r\nx",
            "GET /listen?cid=a HTTP/1.1\r\nTRANSFER-encoding: chunked\r\n\r\n0\r\n\r\n",
        ] {
            assert!(parse(head).is_none(), "{head:?}");
        }
    }

    #[test]
    fn a_complete_body_is_its_frames_joined() {
        use futures_util::stream;
        let data = |bytes: &'static [u8]| Ok(http_body::Frame::data(Bytes::from_static(bytes)));
        let frames = stream::iter([
            data(b"ab"),
            data(b""),
            data(b"c"),
            Ok::<_, Infallible>(http_body::Frame::trailers(http::HeaderMap::new())),
            data(b"d"),
        ]);
        let several = crate::http::boxed(http_body_util::StreamBody::new(frames));
        assert_eq!(
            collect(several).now_or_never(),
            Some(Bytes::from_static(b"abcd"))
        );
        let one = crate::http::boxed(Full::new(Bytes::from_static(b"xyz")));
        assert_eq!(
            collect(one).now_or_never(),
            Some(Bytes::from_static(b"xyz"))
        );
        let none = crate::http::boxed(http_body_util::Empty::new());
        assert_eq!(collect(none).now_or_never(), Some(Bytes::new()));
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        for head in [
            "GET /publish?cid=a HTTP/1.1\r\n\r\n",
            "GET /health HTTP/1.1\r\n\r\n",
            "GET /messages?cid=a HTTP/1.1\r\n\r\n",
            "HEAD /listen?cid=a HTTP/1.1\r\n\r\n",
            "GET /listen?cid=a HTTP/1.0\r\n\r\n",
            "GET /listen?cid=a HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "GET /listen?cid=a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET /listen?cid=a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            "GET /listen?cid=a HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET http://x/listen?cid=a HTTP/1.1\r\n\r\n",
            "GET /listenx HTTP/1.1\r\n\r\n",
            "GET /listen/?#id=a HTTP/1.1\r\n\r\n",
            "GET /listen#x HTTP/1.1\r\n\r\n",
            // Incomplete, malformed, or beyond what the front takes.
            "GET /listen?cid=a HTTP/1.1\r\nHost: x\r\n",
            "GET /listen?cid=a HTTP/1.1\r\nBad Header: x\r\n\r\n",
            "GET /listen?cid=a HTTP/1.1\r\nX: \x01\r\n\r\n",
            "GET /listen?cid=a HTTP/2.0\r\n\r\n",
            "\r\n\r\n",
        ] {
            assert!(parse(head).is_none(), "{head:?}");
        }
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        let head = format!("GET /listen?cid=a HTTP/1.1\r\n{many}\r\n");
        assert!(parse(&head).is_none(), "too many headers");
        // A configured limit above the on-stack room is honoured too.
        assert!(parse_head(head.as_bytes(), 150, 16 * 1024).is_some());
        let head = format!(
            "GET /listen?cid=a HTTP/1.1\r\nX: {}\r\n\r\n",
            "v".repeat(200)
        );
        assert!(parse_head(head.as_bytes(), 100, 128).is_none());
    }

    #[test]
    fn size_lines_are_hex() {
        for (len, line) in [
            (0, "0\r\n"),
            (1, "1\r\n"),
            (15, "f\r\n"),
            (16, "10\r\n"),
            (4096, "1000\r\n"),
            (usize::MAX, "ffffffffffffffff\r\n"),
        ] {
            let (bytes, n) = size_line(len);
            assert_eq!(std::str::from_utf8(&bytes[..n]), Ok(line), "{len}");
        }
    }

    #[test]
    fn connection_close_is_honoured() {
        let headers = |value: &'static str| {
            let mut map = http::HeaderMap::new();
            map.insert(header::CONNECTION, HeaderValue::from_static(value));
            map
        };
        assert!(wants_keep_alive(&http::HeaderMap::new()));
        assert!(wants_keep_alive(&headers("keep-alive")));
        assert!(!wants_keep_alive(&headers("close")));
        assert!(!wants_keep_alive(&headers("TE, Close")));
    }

    #[test]
    fn response_heads_are_framed_as_asked() {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::BAD_REQUEST;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // A framing header set by a handler is replaced by the front's own.
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        let (parts, ()) = response.into_parts();
        let head = response_head(&parts, Framing::Length(12), true);
        let text = std::str::from_utf8(&head).expect("ASCII");
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(
            text.contains("\r\ncontent-type: application/json\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\ncontent-length: 12\r\n"), "{text}");
        assert!(!text.contains("999"), "{text}");
        assert!(text.contains("\r\ndate: "), "{text}");
        assert!(!text.contains("connection: close"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        let head = response_head(&parts, Framing::Chunked, false);
        let text = std::str::from_utf8(&head).expect("ASCII");
        assert!(
            text.contains("\r\ntransfer-encoding: chunked\r\n"),
            "{text}"
        );
        assert!(!text.contains("content-length"), "{text}");
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
        let head = response_head(&parts, Framing::None, true);
        let text = std::str::from_utf8(&head).expect("ASCII");
        assert!(!text.contains("content-length"), "{text}");
        assert!(!text.contains("transfer-encoding"), "{text}");
    }

    #[test]
    fn the_early_json_head_is_the_head_of_a_json_response() {
        // The `date` line is left out of the comparison: the two heads are made at different
        // instants, and a second may pass between them.
        fn without_date(head: &[u8]) -> String {
            std::str::from_utf8(head)
                .expect("ASCII")
                .split("\r\n")
                .filter(|line| !line.starts_with("date: "))
                .collect::<Vec<_>>()
                .join("\r\n")
        }
        let body = r#"{"published":[]}"#;
        for status in [StatusCode::OK, StatusCode::ACCEPTED] {
            for keep_alive in [true, false] {
                let (parts, _) = crate::http::json(status, body).into_parts();
                let expected =
                    response_head(&parts, Framing::Length(body.len() as u64), keep_alive);
                let early = json_head(status, body.len(), keep_alive);
                assert_eq!(without_date(&early), without_date(&expected));
                assert!(std::str::from_utf8(&early).is_ok_and(|t| t.contains("\r\ndate: ")));
            }
        }
    }

    /// Every keep-alive connection waiting for its next request holds this future; the memory
    /// per idle connection depends on it staying small (a request's state is boxed).
    #[tokio::test]
    async fn idle_connection_tasks_stay_small() {
        let app = crate::app::App::new(crate::config::Config::default()).expect("default settings");
        let (_client, stream) = crate::transport::websocket::connection::connected_pair().await;
        let peer = stream.peer_addr().expect("peer");
        let task = serve(app.clone(), stream, peer, app.track_connection_from(None));
        let size = std::mem::size_of_val(&task);
        eprintln!("connection task future: {size} bytes");
        assert!(size <= 640, "connection task future is {size} bytes");
    }

    /// A waiting long poll holds its request's future (boxed by `serve`) for as long as it
    /// waits; the memory per waiting long poll depends on it staying small. (Its arguments are
    /// held by every future they pass through, hence the boxed request.)
    #[tokio::test]
    async fn request_futures_stay_small() {
        let app = crate::app::App::new(crate::config::Config::default()).expect("default settings");
        let (_client, stream) = crate::transport::websocket::connection::connected_pair().await;
        let peer = stream.peer_addr().expect("peer");
        let request = Box::new(Request::new(Full::new(Bytes::new())));
        let socket = Arc::new(stream);
        let lent = Lent::Socket(DirectSocket(Arc::clone(&socket)));
        let answering = respond(&app, &socket, request, &peer, true, &lent);
        let size = std::mem::size_of_val(&answering);
        eprintln!("request future: {size} bytes");
        // 1,280 B is an allocator size class (the next is 1,536 B); the request by value made
        // it 2,568 B.
        assert!(size <= 1280, "request future is {size} bytes");
    }

    /// Every idle SSE or iframe stream holds the task started by `run_stream`; the memory per
    /// streaming connection (BENCHMARKS.md) depends on it staying small.
    #[tokio::test]
    async fn idle_stream_tasks_stay_small() {
        let app = crate::app::App::new(crate::config::Config::default()).expect("default settings");
        let (_client, stream) = crate::transport::websocket::connection::connected_pair().await;
        let peer = stream.peer_addr().expect("peer");
        let body = crate::http::boxed(http_body_util::Empty::<Bytes>::new());
        let stream = Stream {
            socket: Arc::new(stream),
            framed: true,
        };
        let task = run_stream(
            stream,
            BytesMut::new(),
            body,
            peer,
            app.track_connection_from(None),
        );
        let size = std::mem::size_of_val(&task);
        assert!(size <= 1024, "stream task future is {size} bytes");
    }
}
