//! The listener: accepts connections, serves each one, sweeps history, shuts down.
//!
//! One task per TCP connection, on one of the connection threads (see `threads`), to which
//! the accept loop deals connections in turn. A plain-TCP connection starts in the `front`, which answers
//! SSE, iframe and long-poll requests itself and hands everything else to hyper's HTTP/1 state
//! machine; a TLS connection goes to hyper directly. Streams and upgraded WebSockets get their
//! own task, tracked so shutdown can wait for them. Accept errors (such as running out of file
//! descriptors) are logged and retried after a pause, never in a tight loop. Shutdown: stop
//! accepting, tell every stream to end with a reconnect hint, let in-flight requests finish,
//! and give up after the grace period.
//!
//! With TLS configured, each connection's task first completes the handshake (see `tls`),
//! bounded in time, then serves HTTP over the encrypted stream with hyper.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use herald_core::Signals;

use crate::admission::ConnectionSlot;
use crate::app::App;
use crate::config::Config;
use crate::front;
use crate::registry::Kind;
use crate::router;
use crate::threads::ConnectionThreads;
use crate::timeouts::HeadTimer;
use crate::tls;
use crate::unread_body;

/// hyper's own read buffer limit (it must be at least 8 KiB); a larger `max-header-size`
/// raises it.
const MAX_BUF_SIZE: usize = 64 * 1024;
/// hyper's default header count; another value makes hyper allocate the header array per
/// request, so it is only set when configured.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;
/// How long data we sent may stay unacknowledged (including a zero receive window) before the
/// kernel drops the connection. A subscriber that stops reading cannot hold a socket, its
/// buffers and its subscriptions forever: its outbox overflows, and this ends the socket.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting, or a file a setting names (a token key), cannot be used.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] tls::TlsSetupError),
    /// The connection threads could not be started.
    #[error("cannot start the connection threads: {0}")]
    Threads(io::Error),
    /// The listening socket could not be set up.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// What the system said.
        source: io::Error,
    },
}

impl StartError {
    /// True when the settings are at fault (the `herald` binary exits with status 2), not the
    /// system.
    pub fn is_configuration(&self) -> bool {
        !matches!(self, Self::Listen { .. } | Self::Threads(_))
    }
}

/// A running server.
pub struct RunningServer {
    addr: SocketAddr,
    app: Arc<App>,
    task: JoinHandle<()>,
}

impl RunningServer {
    /// Binds `config.listen` and starts serving in the background. Invalid settings, and a
    /// TLS certificate, TLS key or token key file that cannot be used, are configuration
    /// errors naming the problem ([`StartError::is_configuration`]).
    pub async fn start(config: Config) -> Result<Self, StartError> {
        config.validate()?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
            _ => None,
        };
        let app = App::new(config)?;
        let listen = app.config.listen;
        let listen_error = |source| StartError::Listen {
            addr: listen,
            source,
        };
        let listener = TcpListener::bind(listen).await.map_err(listen_error)?;
        let addr = listener.local_addr().map_err(listen_error)?;
        if let Some(cert) = app.config.tls_cert.as_ref().filter(|_| tls.is_some()) {
            tracing::info!(cert = %cert.display(), "TLS is on: serving https and wss");
        }
        tracing::info!(%addr, max_connections = app.admission.max_total(), "herald listening");
        spawn_sweeper(Arc::clone(&app));
        tokio::spawn(Arc::clone(&app.access.expiry).run(app.shutdown.token()));
        spawn_tickers(&app);
        let threads = ConnectionThreads::start(app.config.workers, app.config.fanout_window)
            .map_err(StartError::Threads)?;
        app.engine.hub().share_with(threads.share_queues());
        let task = tokio::spawn(serve(listener, Arc::clone(&app), tls, threads));
        Ok(Self { addr, app, task })
    }

    /// The address the server listens on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared state (for tests and embedding).
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Begins a graceful shutdown and waits until it is complete (bounded by the configured
    /// shutdown timeout).
    pub async fn shutdown(self) {
        self.app.shutdown.cancel();
        let _ = self.task.await;
    }
}

fn spawn_sweeper(app: Arc<App>) {
    let period =
        (app.config.history_ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = tick.tick() => app.engine.sweep(),
                () = app.shutdown.cancelled() => break,
            }
        }
    });
}

/// One task per periodic signal: WebSocket pings and stream keep-alives reach every connection
/// of the kind through its outbox (see `registry`), and request deadlines ring (see
/// `deadlines`).
fn spawn_tickers(app: &Arc<App>) {
    let deadline_app = Arc::clone(app);
    tokio::spawn(async move {
        let deadlines = deadline_app.registry.deadlines();
        deadlines.run(deadline_app.shutdown.cancelled()).await;
    });
    for (kind, period) in [
        (Kind::WebSocket, app.config.ws_ping_interval),
        (Kind::Stream, app.config.keepalive),
    ] {
        let app = Arc::clone(app);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => app.registry.raise(Some(kind), Signals::TICK),
                    () = app.shutdown.cancelled() => break,
                }
            }
        });
    }
}

async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    tls: Option<TlsAcceptor>,
    threads: ConnectionThreads,
) {
    let mut accept_failures = AcceptFailures::default();
    loop {
        tokio::select! {
            () = app.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match app.admit_connection(peer.ip()) {
                    Ok(slot) => serve_connection(&app, &threads, stream, peer, slot, tls.as_ref()),
                    Err(refusal) => {
                        tracing::debug!(%peer, ?refusal, "connection refused");
                        app.admission.refuse(stream, refusal, tls.as_ref());
                    }
                },
                // One connection that failed before it was accepted: nothing to wait for.
                Err(error) if is_connection_error(&error) => {
                    tracing::debug!(%error, "a connection failed before its accept");
                }
                Err(error) => {
                    // EMFILE/ENFILE and friends: back off instead of spinning. Connections
                    // wait in the listen backlog meanwhile.
                    accept_failures.record(&error);
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                        () = app.shutdown.cancelled() => break,
                    }
                }
            },
        }
    }
    drop(listener);
    tracing::info!("shutting down: no longer accepting connections");
    // Every stream and WebSocket ends itself with a reconnect hint; long polls answer 503.
    app.registry.raise(None, Signals::CLOSE);
    app.tasks.close();
    let grace = app.config.shutdown_timeout;
    match tokio::time::timeout(grace, app.tasks.wait()).await {
        Ok(()) => tracing::info!("shutdown complete"),
        Err(_) => tracing::warn!(?grace, "shutdown timed out; closing remaining connections"),
    }
    // Stops the connection threads; tasks still on them are dropped with their runtimes.
    drop(threads);
}

/// An accept error that concerns one connection (reset or aborted by its client before the
/// accept), not the server: the next accept may well succeed at once. Backing off for these
/// would let any client that resets its connections pause every accept.
fn is_connection_error(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
    )
}

/// How often a spell of failing accepts is reported.
const ACCEPT_FAILURES_REPORTED_EVERY: Duration = Duration::from_secs(10);

/// Failed accepts, logged at most once per [`ACCEPT_FAILURES_REPORTED_EVERY`]: at the
/// open-files limit every retry fails, and connections that come and go make the accepts
/// alternate between failing and succeeding.
#[derive(Default)]
struct AcceptFailures {
    last_report: Option<std::time::Instant>,
    unreported: u64,
}

impl AcceptFailures {
    fn record(&mut self, error: &std::io::Error) {
        self.unreported += 1;
        if self
            .last_report
            .is_some_and(|at| at.elapsed() < ACCEPT_FAILURES_REPORTED_EVERY)
        {
            return;
        }
        tracing::warn!(
            %error,
            failed_accepts = self.unreported,
            "accepting connections fails (at the open-files limit?); retrying every 100 ms"
        );
        self.last_report = Some(std::time::Instant::now());
        self.unreported = 0;
    }
}

fn serve_connection(
    app: &Arc<App>,
    threads: &ConnectionThreads,
    stream: TcpStream,
    peer: SocketAddr,
    slot: ConnectionSlot,
    tls: Option<&TlsAcceptor>,
) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "could not set TCP_NODELAY");
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(error) = socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(TCP_USER_TIMEOUT))
    {
        tracing::debug!(%error, "could not set TCP_USER_TIMEOUT");
    }
    // The socket leaves this runtime's driver for the one of the thread it is placed on.
    let stream = match stream.into_std() {
        Ok(stream) => stream,
        Err(error) => {
            tracing::debug!(%peer, %error, "cannot hand the connection to its thread");
            return;
        }
    };
    let thread = threads.next();
    let task_app = Arc::clone(app);
    // Two tasks of their own sizes: a plain connection's task must not be as large as a TLS
    // one's (which holds hyper's whole connection), or every idle long poll pays for it.
    match tls {
        None => app.tasks.spawn_on(
            async move {
                if let Some(stream) = register(stream, peer) {
                    front::serve(task_app, stream, peer, slot).await;
                }
            },
            thread,
        ),
        Some(acceptor) => {
            let acceptor = acceptor.clone();
            app.tasks.spawn_on(
                async move {
                    if let Some(stream) = register(stream, peer) {
                        serve_tls(task_app, acceptor, stream, peer, slot).await;
                    }
                },
                thread,
            )
        }
    };
}

/// The connection on the runtime of the thread it was handed to.
fn register(stream: std::net::TcpStream, peer: SocketAddr) -> Option<TcpStream> {
    TcpStream::from_std(stream)
        .inspect_err(|error| tracing::debug!(%peer, %error, "cannot register the connection"))
        .ok()
}

/// Completes a TLS handshake, bounded in time, then serves HTTP over the encrypted stream.
async fn serve_tls(
    task_app: Arc<App>,
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    slot: ConnectionSlot,
) {
    let limit = task_app.config.tls_handshake_timeout;
    let handshake = tls::handshake(&acceptor, stream, limit);
    let stream = tokio::select! {
        result = handshake => match result {
            Ok(stream) => stream,
            Err(error) => {
                // Scanners and port probes do this all day: not worth more.
                tracing::debug!(%peer, %error, "TLS handshake failed");
                return;
            }
        },
        () = task_app.shutdown.cancelled() => return,
    };
    let first_head = task_app.config.header_read_timeout;
    serve_http(task_app, TokioIo::new(stream), peer, slot, first_head).await;
}

/// Serves HTTP/1 (and upgrades) on one connection's byte stream, plain or TLS, until it ends.
/// The first request head must be complete within `first_head`; every later one within the
/// idle timeout. An answer given while a request's body is left unread ends the connection
/// and says so (see `unread_body`).
pub(crate) async fn serve_http<I>(
    app: Arc<App>,
    io: TokioIo<I>,
    peer: SocketAddr,
    slot: ConnectionSlot,
    first_head: Duration,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service_app = Arc::clone(&app);
    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let app = Arc::clone(&service_app);
        async move {
            let (head, body) = request.into_parts();
            let (body, watch) = unread_body::watched(body);
            let request = Box::new(hyper::Request::from_parts(head, body));
            let mut response = router::handle(&app, request, &peer, None).await;
            watch.close_if_unread(&mut response);
            Ok::<_, Infallible>(response)
        }
    });
    let config = &app.config;
    let mut builder = http1::Builder::new();
    builder
        .timer(HeadTimer::new(
            first_head,
            config.idle_timeout,
            Arc::clone(&app.registry),
        ))
        .header_read_timeout(first_head)
        .max_buf_size(MAX_BUF_SIZE.max(config.max_header_size))
        .max_header_size(config.max_header_size);
    if config.max_headers != HYPER_DEFAULT_MAX_HEADERS {
        builder.max_headers(config.max_headers);
    }
    let connection = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = app.shutdown.cancelled() => {
            // Finish the request in flight (streams end themselves), then close.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
    drop(slot);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Error;

    #[test]
    fn only_the_errors_of_one_connection_skip_the_accept_back_off() {
        // Linux errno values, as accept(2) returns them.
        const ECONNABORTED: i32 = 103;
        const ECONNRESET: i32 = 104;
        const EMFILE: i32 = 24;
        const ENFILE: i32 = 23;
        const ENOBUFS: i32 = 105;
        const ENOMEM: i32 = 12;
        for errno in [ECONNABORTED, ECONNRESET] {
            assert!(
                is_connection_error(&Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
        for errno in [EMFILE, ENFILE, ENOBUFS, ENOMEM] {
            assert!(
                !is_connection_error(&Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
    }
}
