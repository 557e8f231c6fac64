//! WebSocket (RFC 6455) on `GET /listen` with `Upgrade: websocket`: full duplex.
//!
//! The handshake is answered by hyper; channels named in the URL are subscribed *before* the
//! `101`, so a bad cid or cursor is a plain HTTP error. After the upgrade one task per
//! connection multiplexes three things: the outbox (one text frame per envelope, a batch
//! written with one flush), client frames (the JSON command protocol in docs/protocol.md) and a
//! ping timer that closes peers which stop answering.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use herald_core::{parse_entry, Accept, ChannelCursor, ChannelId, Gap, Message, Payload, Position};

use crate::app::App;
use crate::http::{boxed, ApiError, Body};
use crate::query::SubscribeQuery;

use super::session::{Event, Session};

type Socket = WebSocketStream<TokioIo<Upgraded>>;
type Sink = SplitSink<Socket, WsMessage>;

/// Close code for a consumer that fell too far behind.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;

/// Validates the handshake, subscribes, answers `101` and spawns the connection task.
pub async fn upgrade(
    app: &Arc<App>,
    mut request: Request<Incoming>,
    query: SubscribeQuery,
) -> Result<Response<Body>, ApiError> {
    let headers = request.headers();
    if !super::wants_websocket(headers) {
        return Err(ApiError::BadRequest(
            "the WebSocket transport needs an `Upgrade: websocket` handshake".into(),
        ));
    }
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    if !connection_upgrade {
        return Err(ApiError::BadRequest(
            "WebSocket handshake needs `Connection: Upgrade`".into(),
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        let mut response =
            ApiError::BadRequest("unsupported WebSocket version; use 13".into()).into_response();
        *response.status_mut() = StatusCode::UPGRADE_REQUIRED;
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Ok(response);
    }
    let accept = match headers.get(header::SEC_WEBSOCKET_KEY) {
        Some(key) if key.len() == 24 => derive_accept_key(key.as_bytes()),
        _ => {
            return Err(ApiError::BadRequest(
                "WebSocket handshake needs a valid Sec-WebSocket-Key".into(),
            ))
        }
    };
    let cursors = query.cursors(None)?;
    let mut session = Session::new(app);
    let mut opening = Vec::new();
    for (cid, cursor) in query.cids.iter().zip(cursors) {
        let (start, backlog) = session.subscribe(cid, cursor).await?;
        opening.push(text(subscribed_json(cid, start, None)));
        encode_events(&mut session, backlog, &mut opening);
    }

    let on_upgrade = hyper::upgrade::on(&mut request);
    let task_app = Arc::clone(app);
    app.tasks.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let connection = Connection::new(task_app, upgraded, session).await;
                connection.run(opening).await;
            }
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
    });

    let mut response = Response::new(boxed(http_body_util::Empty::<Bytes>::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(value) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    Ok(response)
}

fn text(json: String) -> WsMessage {
    WsMessage::Text(Utf8Bytes::from(json))
}

/// A text frame carrying a shared envelope (validated UTF-8 since publish).
fn envelope_frame(message: &Message) -> Option<WsMessage> {
    Utf8Bytes::try_from(message.envelope().clone())
        .ok()
        .map(WsMessage::Text)
}

fn subscribed_json(cid: &ChannelId, start: Position, reference: Option<&RawValue>) -> String {
    let mut value = serde_json::json!({
        "type": "subscribed",
        "cid": cid.as_str(),
        "epoch": start.epoch.to_string(),
        "id": start.offset,
    });
    add_ref(&mut value, reference);
    value.to_string()
}

fn add_ref(value: &mut serde_json::Value, reference: Option<&RawValue>) {
    if let Some(r) = reference {
        if let Ok(r) = serde_json::from_str::<serde_json::Value>(r.get()) {
            value["ref"] = r;
        }
    }
}

fn reply(kind: &str, reference: Option<&RawValue>, fields: serde_json::Value) -> WsMessage {
    let mut value = fields;
    value["type"] = kind.into();
    add_ref(&mut value, reference);
    text(value.to_string())
}

fn error_reply(reference: Option<&RawValue>, error: &str) -> WsMessage {
    reply("error", reference, serde_json::json!({ "error": error }))
}

fn gap_frame(gap: &Gap) -> WsMessage {
    text(gap.to_json())
}

fn encode_events(session: &mut Session, events: Vec<Event>, out: &mut Vec<WsMessage>) {
    for event in events {
        match event {
            Event::Gap(gap) => out.push(gap_frame(&gap)),
            Event::Message(m) => encode_message(session, &m, out),
        }
    }
}

fn encode_message(session: &mut Session, message: &Message, out: &mut Vec<WsMessage>) {
    match session.accept(message) {
        Accept::Deliver => out.extend(envelope_frame(message)),
        Accept::GapThenDeliver(gap) => {
            out.push(gap_frame(&gap));
            out.extend(envelope_frame(message));
        }
        Accept::Duplicate | Accept::NotSubscribed => {}
    }
}

/// A client command frame. Fields not used by a command are ignored.
#[derive(Debug, Deserialize)]
struct Command<'a> {
    #[serde(rename = "type")]
    kind: String,
    cid: Option<String>,
    since: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(rename = "ref", borrow)]
    reference: Option<&'a RawValue>,
}

/// Why the connection ends.
enum End {
    /// The peer closed or vanished; nothing more to send.
    Gone,
    /// Send a close frame first.
    Close(CloseCode, &'static str),
}

struct Connection {
    app: Arc<App>,
    sink: Sink,
    stream: SplitStream<Socket>,
    session: Session,
    _guard: crate::app::ConnectionGuard,
}

impl Connection {
    async fn new(app: Arc<App>, upgraded: Upgraded, session: Session) -> Self {
        let max = app.config.max_body;
        let config = WebSocketConfig::default()
            .read_buffer_size(1024)
            .write_buffer_size(16 * 1024)
            .max_write_buffer_size(4 * 1024 * 1024)
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        let (sink, stream) = socket.split();
        let guard = app.track_connection();
        Self {
            app,
            sink,
            stream,
            session,
            _guard: guard,
        }
    }

    async fn run(mut self, opening: Vec<WsMessage>) {
        let end = match self.send(opening).await {
            Ok(()) => self.serve().await,
            Err(end) => end,
        };
        if let End::Close(code, reason) = end {
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            let deadline = Duration::from_secs(1);
            let _ =
                tokio::time::timeout(deadline, self.sink.send(WsMessage::Close(Some(frame)))).await;
            // Wait briefly for the peer's close reply so the close handshake completes.
            let _ = tokio::time::timeout(deadline, async {
                while let Some(Ok(frame)) = self.stream.next().await {
                    if frame.is_close() {
                        break;
                    }
                }
            })
            .await;
        }
    }

    async fn serve(&mut self) -> End {
        let period = self.app.config.ws_ping_interval;
        let mut ping = tokio::time::interval_at(Instant::now() + period, period);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut heard_from_peer = true;
        let mut batch = Vec::new();
        let shutdown = self.app.shutdown.clone();
        loop {
            let frames = tokio::select! {
                () = shutdown.cancelled() => return End::Close(CloseCode::Away, "server shutting down"),
                drained = self.session.outbox().drain(&mut batch) => {
                    if drained.is_err() {
                        tracing::info!("closing a slow WebSocket consumer");
                        return End::Close(CloseCode::from(CLOSE_SLOW_CONSUMER), "slow consumer");
                    }
                    let mut frames = Vec::with_capacity(batch.len());
                    for m in batch.drain(..) {
                        encode_message(&mut self.session, &m, &mut frames);
                    }
                    frames
                }
                frame = self.stream.next() => {
                    heard_from_peer = true;
                    match self.on_frame(frame).await {
                        Ok(frames) => frames,
                        Err(end) => return end,
                    }
                }
                _ = ping.tick() => {
                    if !heard_from_peer {
                        return End::Close(CloseCode::Policy, "ping timeout");
                    }
                    heard_from_peer = false;
                    vec![WsMessage::Ping(Bytes::new())]
                }
            };
            if let Err(end) = self.send(frames).await {
                return end;
            }
        }
    }

    /// Writes `frames` and flushes, within the ping interval: a peer that does not read for
    /// that long is dropped rather than allowed to hold the task.
    async fn send(&mut self, frames: Vec<WsMessage>) -> Result<(), End> {
        let write = async {
            for frame in frames {
                self.sink.feed(frame).await?;
            }
            self.sink.flush().await
        };
        match tokio::time::timeout(self.app.config.ws_ping_interval, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(End::Gone),
        }
    }

    async fn on_frame(
        &mut self,
        frame: Option<Result<WsMessage, WsError>>,
    ) -> Result<Vec<WsMessage>, End> {
        match frame {
            None | Some(Ok(WsMessage::Close(_))) => {
                // tungstenite queued the close reply; flush it.
                let _ = self.sink.flush().await;
                Err(End::Gone)
            }
            Some(Ok(WsMessage::Text(text))) => Ok(self.on_command(text.as_str()).await),
            Some(Ok(WsMessage::Binary(_))) => Err(End::Close(
                CloseCode::Unsupported,
                "binary frames are not supported; send JSON text commands",
            )),
            // Pongs to our pings only prove liveness; tungstenite answers pings itself (the
            // pong goes out with the next flush).
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {
                Ok(Vec::new())
            }
            Some(Err(error)) => Err(close_for(&error)),
        }
    }

    async fn on_command(&mut self, text: &str) -> Vec<WsMessage> {
        let command: Command<'_> = match serde_json::from_str(text) {
            Ok(c) => c,
            Err(e) => return vec![error_reply(None, &format!("invalid command: {e}"))],
        };
        let reference = command.reference;
        match self.execute(&command).await {
            Ok(frames) => frames,
            Err(e) => vec![error_reply(reference, &e.to_string())],
        }
    }

    async fn execute(&mut self, command: &Command<'_>) -> Result<Vec<WsMessage>, ApiError> {
        let reference = command.reference;
        let cid = || -> Result<ChannelId, ApiError> {
            let raw = command
                .cid
                .as_deref()
                .ok_or_else(|| ApiError::BadRequest(format!("{} needs a cid", command.kind)))?;
            ChannelId::parse(raw).map_err(|e| ApiError::BadRequest(format!("invalid cid: {e}")))
        };
        match command.kind.as_str() {
            "subscribe" => {
                let cid = cid()?;
                let cursor = match command.since.as_deref() {
                    Some(s) => parse_entry(s)
                        .map_err(|e| ApiError::BadRequest(format!("invalid since: {e}")))?,
                    None => ChannelCursor::Latest,
                };
                if self.session.subscriptions().contains(&cid) {
                    return Err(ApiError::BadRequest(format!("already subscribed to {cid}")));
                }
                let (start, backlog) = self.session.subscribe(&cid, cursor).await?;
                let mut frames = vec![text(subscribed_json(&cid, start, reference))];
                encode_events(&mut self.session, backlog, &mut frames);
                Ok(frames)
            }
            "unsubscribe" => {
                let cid = cid()?;
                if !self.session.unsubscribe(&cid) {
                    return Err(ApiError::BadRequest(format!("not subscribed to {cid}")));
                }
                Ok(vec![reply(
                    "unsubscribed",
                    reference,
                    serde_json::json!({ "cid": cid.as_str() }),
                )])
            }
            "publish" => {
                if !self.app.config.client_publish {
                    return Err(ApiError::Forbidden(
                        "publishing from clients is disabled on this server".into(),
                    ));
                }
                let cid = cid()?;
                let data = command
                    .data
                    .ok_or_else(|| ApiError::BadRequest("publish needs data".into()))?;
                if data.get().len() > self.app.config.max_body {
                    return Err(ApiError::PayloadTooLarge(self.app.config.max_body));
                }
                let payload = Payload::from_json(data.get().as_bytes())
                    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
                let published = self.app.engine.publish(&cid, &payload).await?;
                let position = published.message.position();
                Ok(vec![reply(
                    "published",
                    reference,
                    serde_json::json!({
                        "cid": cid.as_str(),
                        "id": position.offset,
                        "epoch": position.epoch.to_string(),
                    }),
                )])
            }
            "ping" => Ok(vec![reply("pong", reference, serde_json::json!({}))]),
            other => Err(ApiError::BadRequest(format!(
                "unknown command type {:?}: use subscribe, unsubscribe, publish or ping",
                other.chars().take(64).collect::<String>()
            ))),
        }
    }
}

/// The close code for a protocol-level read error.
fn close_for(error: &WsError) -> End {
    match error {
        WsError::Utf8(_) => End::Close(CloseCode::Invalid, "invalid UTF-8 in text frame"),
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            End::Close(CloseCode::Size, "message too large")
        }
        WsError::Capacity(_) => End::Close(CloseCode::Size, "frame too large"),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => End::Gone,
        WsError::Protocol(_) => End::Close(CloseCode::Protocol, "protocol error"),
        _ => End::Gone,
    }
}
