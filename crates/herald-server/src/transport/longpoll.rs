//! Long polling (Comet), `GET /listen?cid=C[&since=ID]`: the request is held until there is
//! something to say.
//!
//! If history already has messages after the cursor (or a gap to report), the answer is
//! immediate. Otherwise the request waits on its session's outbox — a waiting request costs one
//! hub entry, one entry on the server's wheel of deadlines and one parked future, no extra task
//! and no timer of its own — until a message arrives, the timeout passes (a `DEADLINE` signal
//! from the wheel: `200 []`) or the server shuts down (a `CLOSE` signal: `503`).

use std::sync::Arc;

use herald_core::{Accept, Gap, Message, Signals};
use http::Response;

use crate::access::Identity;
use crate::app::App;
use crate::http::{ApiError, Body};
use crate::query::SubscribeQuery;
use crate::registry::Kind;

use super::poll::array_response;
use super::session::{Event, Session};

/// Handles one long-poll request.
pub async fn handle(
    app: &Arc<App>,
    query: &SubscribeQuery,
    identity: Option<Arc<Identity>>,
) -> Result<Response<Body>, ApiError> {
    let cursors = query.cursors(None)?;
    let (mut session, backlog) =
        Session::open(app, Kind::LongPoll, identity, &query.cids, &cursors).await?;
    let mut messages = Vec::new();
    let mut gaps: Vec<Gap> = Vec::new();
    for event in backlog {
        match event {
            Event::Gap(gap) => gaps.push(gap),
            Event::Message(m) => messages.push(m),
        }
    }
    messages.retain(|m| delivers(&mut session, m, &mut gaps));
    while messages.is_empty() && gaps.is_empty() {
        // Drained straight into the answer's list (empty here), then filtered in place.
        let Ok(drained) = session.outbox().drain(&mut messages).await else {
            // Cannot happen with one waiting request per outbox, but never loop on it.
            break;
        };
        if drained.signals.contains(Signals::CLOSE) {
            return Err(ApiError::Unavailable(
                "server is shutting down; retry".into(),
            ));
        }
        messages.retain(|m| delivers(&mut session, m, &mut gaps));
        if drained.signals.contains(Signals::DEADLINE) {
            break;
        }
    }
    Ok(array_response(&messages, &session.cursor(), &gaps))
}

/// True if `message` goes into the answer (after the gap it reveals, added to `gaps`); false
/// for a duplicate or a channel no longer followed.
fn delivers(session: &mut Session, message: &Message, gaps: &mut Vec<Gap>) -> bool {
    match session.accept(message) {
        Accept::Deliver => true,
        Accept::GapThenDeliver(gap) => {
            gaps.push(gap);
            true
        }
        Accept::Duplicate | Accept::NotSubscribed => false,
    }
}
