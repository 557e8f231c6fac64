//! The client command protocol over WebSocket text frames, and the server's JSON replies.
//!
//! Commands are JSON objects with a `type` (`subscribe`, `unsubscribe`, `publish`, `ping`,
//! `auth`, `refresh`) and an optional `ref` echoed in the reply. A bad command is answered with
//! an error frame and the connection stays open — except an `auth` with an invalid token, which
//! closes it (4001), and a publish flood (4029); see docs/protocol.md.

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use herald_core::{parse_entry, Accept, ChannelCursor, ChannelId, Message, Payload, Position};

use crate::app::App;
use crate::http::ApiError;
use crate::transport::session::{Event, Session};
use crate::transport::websocket::frame::close_code;

use super::frame;
use super::publish_rate::{PublishRate, Verdict};

/// A client command. Fields a command does not use are ignored.
#[derive(Debug, Deserialize)]
struct Command<'a> {
    #[serde(rename = "type")]
    kind: String,
    // Loosely typed so that a command which does not use a field (`ping`) never fails on it;
    // the commands that do use them check their type.
    cid: Option<serde_json::Value>,
    since: Option<serde_json::Value>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    token: Option<serde_json::Value>,
    #[serde(rename = "ref", borrow)]
    reference: Option<&'a RawValue>,
}

/// A command that ends the connection: the close code and reason.
pub type Closing = (u16, &'static str);

/// How a command fails: an error reply (the connection stays), or the end of the connection.
enum Failure {
    Reply(ApiError),
    Close(Closing),
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Self::Reply(e)
    }
}

/// Only the `ref` of a command that failed to parse as a whole.
#[derive(Deserialize)]
struct LooseRef<'a> {
    #[serde(rename = "ref", borrow)]
    reference: Option<&'a RawValue>,
}

/// The `subscribed` frame: where the backlog that follows starts.
pub fn subscribed(cid: &ChannelId, start: Position, reference: Option<&RawValue>) -> Bytes {
    reply(
        "subscribed",
        reference,
        serde_json::json!({
            "cid": cid.as_str(),
            "epoch": start.epoch.to_string(),
            "id": start.offset,
        }),
    )
}

fn reply(kind: &str, reference: Option<&RawValue>, mut value: serde_json::Value) -> Bytes {
    value["type"] = kind.into();
    if let Some(r) = reference.and_then(|r| serde_json::from_str::<serde_json::Value>(r.get()).ok())
    {
        value["ref"] = r;
    }
    frame::text(&value.to_string())
}

fn error_reply(reference: Option<&RawValue>, error: &str) -> Bytes {
    reply("error", reference, serde_json::json!({ "error": error }))
}

/// Appends the frames for backlog events.
pub fn encode_events(session: &mut Session, events: Vec<Event>, out: &mut Vec<Bytes>) {
    for event in events {
        match event {
            Event::Gap(gap) => out.push(frame::text(&gap.to_json())),
            Event::Message(m) => encode_message(session, &m, out),
        }
    }
}

/// Appends the frames for one message: its shared frame, after a gap frame if needed.
pub fn encode_message(session: &mut Session, message: &Arc<Message>, out: &mut Vec<Bytes>) {
    match session.accept(message) {
        Accept::Deliver => out.push(message.websocket_frame().clone()),
        Accept::GapThenDeliver(gap) => {
            out.push(frame::text(&gap.to_json()));
            out.push(message.websocket_frame().clone());
        }
        Accept::Duplicate | Accept::NotSubscribed => {}
    }
}

/// A command, parsed and validated: everything that can be checked without server state.
/// Access rights, the publish rate and token signatures need the server (`run`, `auth`).
#[derive(Debug)]
pub enum Action {
    /// `subscribe`: the channel and where to start.
    Subscribe(ChannelId, ChannelCursor),
    /// `unsubscribe`.
    Unsubscribe(ChannelId),
    /// `publish`: the channel and the data.
    Publish(ChannelId, Payload),
    /// `ping`.
    Ping,
    /// `auth`: the token (not yet verified).
    Auth(String),
    /// `refresh`: the new token (not yet verified).
    Refresh(String),
}

/// A command's `ref`, as sent.
pub type Reference<'a> = Option<&'a RawValue>;

/// Parses one command text (a pure function: also the fuzzing entry point). On success the
/// action and the command's `ref`; on failure the error for the reply and the `ref`, if the
/// text had a readable one.
pub fn parse(text: &str) -> Result<(Action, Reference<'_>), (ApiError, Reference<'_>)> {
    let command: Command<'_> = match serde_json::from_str(text) {
        Ok(c) => c,
        Err(e) => {
            // Still echo `ref` if the frame is a JSON object that has one, so the client can
            // match the error to its request.
            let reference = serde_json::from_str::<LooseRef<'_>>(text)
                .ok()
                .and_then(|loose| loose.reference);
            return Err((
                ApiError::BadRequest(format!("invalid command: {e}")),
                reference,
            ));
        }
    };
    let reference = command.reference;
    action(&command)
        .map(|action| (action, reference))
        .map_err(|e| (e, reference))
}

fn token(command: &Command<'_>) -> Result<String, ApiError> {
    command
        .token
        .as_ref()
        .ok_or_else(|| ApiError::BadRequest(format!("{} needs a token", command.kind)))?
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| ApiError::BadRequest("token must be a string".into()))
}

fn action(command: &Command<'_>) -> Result<Action, ApiError> {
    let cid = || -> Result<ChannelId, ApiError> {
        let raw = command
            .cid
            .as_ref()
            .ok_or_else(|| ApiError::BadRequest(format!("{} needs a cid", command.kind)))?
            .as_str()
            .ok_or_else(|| ApiError::BadRequest("cid must be a string".into()))?;
        ChannelId::parse(raw).map_err(|e| ApiError::BadRequest(format!("invalid cid: {e}")))
    };
    match command.kind.as_str() {
        "subscribe" => {
            let cid = cid()?;
            let since = match &command.since {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(s.as_str()),
                Some(_) => {
                    return Err(ApiError::BadRequest(
                        "since must be a string such as \"k3f9:17\"".into(),
                    ))
                }
            };
            let cursor = match since {
                Some(s) => parse_entry(s)
                    .map_err(|e| ApiError::BadRequest(format!("invalid since: {e}")))?,
                None => ChannelCursor::Latest,
            };
            Ok(Action::Subscribe(cid, cursor))
        }
        "unsubscribe" => Ok(Action::Unsubscribe(cid()?)),
        "publish" => {
            let cid = cid()?;
            let data = command
                .data
                .ok_or_else(|| ApiError::BadRequest("publish needs data".into()))?;
            let payload = Payload::from_json(data.get().as_bytes())
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
            Ok(Action::Publish(cid, payload))
        }
        "ping" => Ok(Action::Ping),
        "auth" => Ok(Action::Auth(token(command)?)),
        "refresh" => Ok(Action::Refresh(token(command)?)),
        other => Err(ApiError::BadRequest(format!(
            "unknown command type {:?}: use subscribe, unsubscribe, publish, ping, auth or refresh",
            other.chars().take(64).collect::<String>()
        ))),
    }
}

/// Executes one command text and returns the frames to send, or how to close the connection.
pub async fn execute(
    app: &App,
    session: &mut Session,
    publish_rate: &mut PublishRate,
    text: &str,
) -> Result<Vec<Bytes>, Closing> {
    let (action, reference) = match parse(text) {
        Ok(parsed) => parsed,
        Err((e, reference)) => return Ok(vec![error_reply(reference, &e.to_string())]),
    };
    match run(app, session, publish_rate, action, reference).await {
        Ok(frames) => Ok(frames),
        Err(Failure::Reply(e)) => Ok(vec![error_reply(reference, &e.to_string())]),
        Err(Failure::Close(closing)) => Err(closing),
    }
}

/// `auth`: gives a connection without a token its identity; an invalid token ends it.
fn auth(
    app: &App,
    session: &mut Session,
    token: &str,
    reference: Option<&RawValue>,
) -> Result<Vec<Bytes>, Failure> {
    if session.identity().is_some() {
        return Err(ApiError::BadRequest(
            "already authenticated: use refresh to replace the token".into(),
        )
        .into());
    }
    let identity = match app.access.tokens.verify(token) {
        Ok(identity) => Arc::new(identity),
        Err(e) if e.expired => {
            return Err(Failure::Close((close_code::INVALID_TOKEN, "token expired")))
        }
        Err(_) => return Err(Failure::Close((close_code::INVALID_TOKEN, "invalid token"))),
    };
    let frame = reply(
        "authed",
        reference,
        serde_json::json!({ "sub": identity.sub, "exp": identity.exp }),
    );
    session.authenticate(identity, Some(&app.access.expiry));
    Ok(vec![frame])
}

async fn run(
    app: &App,
    session: &mut Session,
    publish_rate: &mut PublishRate,
    action: Action,
    reference: Option<&RawValue>,
) -> Result<Vec<Bytes>, Failure> {
    match action {
        Action::Subscribe(cid, cursor) => {
            if session.subscriptions().contains(&cid) {
                return Err(ApiError::BadRequest(format!("already subscribed to {cid}")).into());
            }
            let (start, backlog) = session.subscribe(app, &cid, cursor).await?;
            let mut frames = vec![subscribed(&cid, start, reference)];
            encode_events(session, backlog, &mut frames);
            Ok(frames)
        }
        Action::Unsubscribe(cid) => {
            if !session.unsubscribe(&cid) {
                return Err(ApiError::BadRequest(format!("not subscribed to {cid}")).into());
            }
            Ok(vec![reply(
                "unsubscribed",
                reference,
                serde_json::json!({ "cid": cid.as_str() }),
            )])
        }
        Action::Publish(cid, payload) => {
            app.access
                .may_publish_from_client(session.identity(), &cid)?;
            let rate = app.config.client_publish_rate;
            match publish_rate.check(rate) {
                Verdict::Allowed => {}
                Verdict::Refused => {
                    return Err(ApiError::TooManyRequests(format!(
                        "client-publish-rate exceeded: at most {rate} publishes per second"
                    ))
                    .into())
                }
                Verdict::Flood => {
                    return Err(Failure::Close((
                        close_code::PUBLISH_FLOOD,
                        "publish rate exceeded again and again",
                    )))
                }
            }
            let published = app
                .engine
                .publish(&cid, &payload)
                .await
                .map_err(ApiError::from)?;
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
        Action::Ping => Ok(vec![reply("pong", reference, serde_json::json!({}))]),
        Action::Auth(token) => auth(app, session, &token, reference),
        Action::Refresh(token) => {
            let Some(current) = session.identity() else {
                return Err(ApiError::BadRequest(
                    "refresh needs a token to replace: send auth first".into(),
                )
                .into());
            };
            let identity = app.access.tokens.verify(&token).map_err(ApiError::from)?;
            if identity.sub != current.sub {
                return Err(ApiError::Forbidden(
                    "a refreshed token must be for the same sub".into(),
                )
                .into());
            }
            let mut frames = vec![reply(
                "refreshed",
                reference,
                serde_json::json!({ "exp": identity.exp }),
            )];
            for cid in session.replace_identity(app, Arc::new(identity)) {
                frames.push(reply(
                    "unsubscribed",
                    None,
                    serde_json::json!({
                        "cid": cid.as_str(),
                        "reason": "not allowed by the refreshed token",
                    }),
                ));
            }
            Ok(frames)
        }
    }
}
