//! The client command protocol over WebSocket text frames, and the server's JSON replies.
//!
//! Commands are JSON objects with a `type` (`subscribe`, `unsubscribe`, `publish`, `ping`) and
//! an optional `ref` echoed in the reply. A bad command is answered with an error frame and the
//! connection stays open; see docs/protocol.md.

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use herald_core::{parse_entry, Accept, ChannelCursor, ChannelId, Message, Payload, Position};

use crate::app::App;
use crate::http::ApiError;
use crate::transport::session::{Event, Session};

use super::frame;
use super::publish_rate::Verdict;

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
    #[serde(rename = "ref", borrow)]
    reference: Option<&'a RawValue>,
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
        Accept::Deliver => out.push(message.websocket_frame()),
        Accept::GapThenDeliver(gap) => {
            out.push(frame::text(&gap.to_json()));
            out.push(message.websocket_frame());
        }
        Accept::Duplicate | Accept::NotSubscribed => {}
    }
}

/// Executes one command text and returns the frames to send.
pub async fn execute(app: &App, session: &mut Session, text: &str) -> Vec<Bytes> {
    let command: Command<'_> = match serde_json::from_str(text) {
        Ok(c) => c,
        Err(e) => {
            // Still echo `ref` if the frame is a JSON object that has one, so the client can
            // match the error to its request.
            let reference = serde_json::from_str::<LooseRef<'_>>(text)
                .ok()
                .and_then(|loose| loose.reference);
            return vec![error_reply(reference, &format!("invalid command: {e}"))];
        }
    };
    let reference = command.reference;
    match run(app, session, &command).await {
        Ok(frames) => frames,
        Err(e) => vec![error_reply(reference, &e.to_string())],
    }
}

async fn run(
    app: &App,
    session: &mut Session,
    command: &Command<'_>,
) -> Result<Vec<Bytes>, ApiError> {
    let reference = command.reference;
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
            if session.subscriptions().contains(&cid) {
                return Err(ApiError::BadRequest(format!("already subscribed to {cid}")));
            }
            let (start, backlog) = session.subscribe(&cid, cursor).await?;
            let mut frames = vec![subscribed(&cid, start, reference)];
            encode_events(session, backlog, &mut frames);
            Ok(frames)
        }
        "unsubscribe" => {
            let cid = cid()?;
            if !session.unsubscribe(&cid) {
                return Err(ApiError::BadRequest(format!("not subscribed to {cid}")));
            }
            Ok(vec![reply(
                "unsubscribed",
                reference,
                serde_json::json!({ "cid": cid.as_str() }),
            )])
        }
        "publish" => {
            if !app.config.client_publish {
                return Err(ApiError::Forbidden(
                    "publishing from clients is disabled on this server".into(),
                ));
            }
            let rate = app.config.client_publish_rate;
            if session.publish_rate().check(rate) != Verdict::Allowed {
                return Err(ApiError::TooManyRequests(format!(
                    "client-publish-rate exceeded: at most {rate} publishes per second"
                )));
            }
            let cid = cid()?;
            let data = command
                .data
                .ok_or_else(|| ApiError::BadRequest("publish needs data".into()))?;
            let payload = Payload::from_json(data.get().as_bytes())
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
            let published = app.engine.publish(&cid, &payload).await?;
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
