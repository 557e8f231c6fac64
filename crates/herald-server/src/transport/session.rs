//! A subscriber connection's state, shared by the streaming transports and long polling.
//!
//! A [`Session`] owns the connection's outbox and per-channel positions. Subscribing returns
//! the backlog as [`Event`]s that go through the same [`Session::accept`] path as live
//! messages, so backlog and live stream are encoded by one code path and meet without loss or
//! duplicates. Dropping the session removes it from the hub, whatever ended the connection.
//!
//! Every subscription passes [`crate::access::Access::may_subscribe`] with the session's identity (the
//! verified token, if any). A streaming session with a token is on the server's expiry
//! schedule and learns of its token's deadline through an `EXPIRE` outbox signal.

use std::sync::Arc;

use herald_core::{
    Accept, ChannelCursor, ChannelId, Engine, Gap, Message, Outbox, Position, Signals,
    Subscriptions,
};

use parking_lot::{Mutex, MutexGuard};

use crate::access::{ExpiryEntry, ExpirySchedule, Identity};
use crate::app::App;
use crate::deadlines::deadline_after;
use crate::http::ApiError;
use crate::registry::{Kind, Registration};

/// Something to send to the client, in order.
#[derive(Debug)]
pub enum Event {
    /// Messages before the next one are lost.
    Gap(Gap),
    /// A message (from the backlog; still to pass [`Session::accept`]).
    Message(Arc<Message>),
}

/// One subscriber connection. See the module documentation.
pub struct Session {
    engine: Engine,
    outbox: Arc<Outbox>,
    // Shared with a WebSocket's direct delivery path, which advances positions itself.
    subscriptions: Arc<Mutex<Subscriptions>>,
    // Boxed: most connections have no token, and this keeps theirs one pointer wide. (The
    // access rules and limits come from the `App` passed to each call, not stored here: every
    // idle WebSocket holds a session.)
    auth: Option<Box<SessionAuth>>,
    _registration: Registration,
}

/// The verified token of a session and its place on the expiry schedule.
struct SessionAuth {
    identity: Arc<Identity>,
    expiry: Option<ExpiryEntry>,
}

impl Session {
    /// A session of a `kind` connection with no subscriptions yet, registered for the
    /// server's ticks and shutdown signal; a long poll's also for its timeout, a
    /// [`Signals::DEADLINE`] once `longpoll-timeout` has passed.
    pub fn new(app: &App, kind: Kind) -> Self {
        let outbox = Outbox::new(app.config.outbox_capacity);
        let registration = if kind == Kind::LongPoll {
            let deadline = deadline_after(tokio::time::Instant::now(), app.config.longpoll_timeout);
            app.registry.register_until(outbox.clone(), deadline)
        } else {
            app.registry.register(kind, &outbox)
        };
        if app.shutdown.is_cancelled() {
            // Registered after the shutdown signal went out: raise it here.
            outbox.raise(Signals::CLOSE);
        }
        Self {
            engine: app.engine.clone(),
            outbox,
            subscriptions: Arc::new(Mutex::new(Subscriptions::new())),
            auth: None,
            _registration: registration,
        }
    }

    /// A session with `identity` (if any) subscribed to `cids` from `cursors` (same length),
    /// with the backlog of all of them in channel order.
    pub async fn open(
        app: &App,
        kind: Kind,
        identity: Option<Arc<Identity>>,
        cids: &[ChannelId],
        cursors: &[ChannelCursor],
    ) -> Result<(Self, Vec<Event>), ApiError> {
        let mut session = Self::new(app, kind);
        if let Some(identity) = identity {
            // A long poll is checked on every request and ends by itself: not scheduled.
            let expiry = (kind != Kind::LongPoll).then_some(&app.access.expiry);
            session.authenticate(identity, expiry);
        }
        let mut gaps = Vec::new();
        let mut per_channel = Vec::with_capacity(cids.len());
        for (cid, cursor) in cids.iter().zip(cursors) {
            let (_, backlog) = session.subscribe(app, cid, *cursor).await?;
            let mut messages = Vec::with_capacity(backlog.len());
            for event in backlog {
                match event {
                    Event::Gap(gap) => gaps.push(Event::Gap(gap)),
                    Event::Message(m) => messages.push(m),
                }
            }
            per_channel.push(messages);
        }
        let merged = merge_oldest_first(per_channel, usize::MAX);
        gaps.extend(merged.into_iter().map(Event::Message));
        Ok((session, gaps))
    }

    /// Subscribes to `cid` from `cursor`. Returns the position the backlog starts from and the
    /// backlog (a gap first, if any).
    pub async fn subscribe(
        &mut self,
        app: &App,
        cid: &ChannelId,
        cursor: ChannelCursor,
    ) -> Result<(Position, Vec<Event>), ApiError> {
        let max_channels = app.config.max_channels_per_connection;
        let at_limit = {
            let subscriptions = self.subscriptions.lock();
            !subscriptions.contains(cid) && subscriptions.len() >= max_channels
        };
        if at_limit {
            return Err(ApiError::BadRequest(format!(
                "too many channels: at most {max_channels} per connection"
            )));
        }
        let policy = app.access.may_subscribe(self.identity(), cid)?;
        let read = self
            .engine
            .subscribe_bounded(&self.outbox, cid, cursor, policy.max_subscribers)
            .await?;
        let start = read.messages.first().map_or(read.position, |m| Position {
            epoch: m.epoch(),
            offset: m.offset() - 1,
        });
        self.subscriptions.lock().insert(cid.clone(), start);
        let events = read
            .gap
            .into_iter()
            .map(Event::Gap)
            .chain(read.messages.into_iter().map(Event::Message))
            .collect();
        Ok((start, events))
    }

    /// The verified token the session holds, if any.
    pub fn identity(&self) -> Option<&Identity> {
        self.auth.as_deref().map(|auth| &*auth.identity)
    }

    /// Gives the session `identity` (a verified token) and, with `expiry`, schedules the end
    /// of the connection at the token's deadline.
    pub fn authenticate(&mut self, identity: Arc<Identity>, expiry: Option<&Arc<ExpirySchedule>>) {
        let expiry = expiry.map(|schedule| schedule.schedule(identity.deadline_ms(), &self.outbox));
        // Replacing the old entry drops it from the schedule.
        self.auth = Some(Box::new(SessionAuth { identity, expiry }));
    }

    /// Replaces the session's token with `identity` (a refresh): its rights replace the old
    /// ones, and every channel they no longer allow is unsubscribed. Returns those channels.
    pub fn replace_identity(&mut self, app: &App, identity: Arc<Identity>) -> Vec<ChannelId> {
        self.authenticate(identity, Some(&app.access.expiry));
        let denied: Vec<ChannelId> = self
            .subscriptions
            .lock()
            .channels()
            .filter(|cid| app.access.may_subscribe(self.identity(), cid).is_err())
            .cloned()
            .collect();
        for cid in &denied {
            self.unsubscribe(cid);
        }
        denied
    }

    /// Called on an `EXPIRE` signal: true if the session's token has expired (the connection
    /// must end). Otherwise (refreshed meanwhile, or the clock moved) the deadline is put back
    /// on the schedule.
    pub fn token_expired(&mut self) -> bool {
        let Some(auth) = self.auth.as_deref_mut() else {
            return false;
        };
        if auth.identity.is_expired(herald_core::now_ms()) {
            return true;
        }
        if let Some(entry) = &mut auth.expiry {
            // The new entry replaces the old one, which leaves the schedule as it drops.
            *entry = entry
                .schedule()
                .schedule(auth.identity.deadline_ms(), &self.outbox);
        }
        false
    }

    /// Stops following `cid`; returns true if it was followed.
    pub fn unsubscribe(&mut self, cid: &ChannelId) -> bool {
        self.engine.unsubscribe(&self.outbox, cid);
        self.subscriptions.lock().remove(cid)
    }

    /// Decides what to do with a message and advances the channel's position.
    pub fn accept(&mut self, message: &Message) -> Accept {
        self.subscriptions.lock().accept(message)
    }

    /// The connection's queue.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Per-channel positions (locked while the guard lives).
    pub fn subscriptions(&self) -> MutexGuard<'_, Subscriptions> {
        self.subscriptions.lock()
    }

    /// The positions, for a direct delivery path that advances them itself.
    pub fn shared_subscriptions(&self) -> Arc<Mutex<Subscriptions>> {
        Arc::clone(&self.subscriptions)
    }

    /// The composite cursor to resume every channel from.
    pub fn cursor(&self) -> String {
        self.subscriptions.lock().cursor()
    }
}

/// Merges per-channel lists (each in id order) into one list, oldest publication first, and
/// keeps the first `limit`. Each channel's messages stay in id order even if the clock stepped
/// back; ties go to the channel listed first.
pub fn merge_oldest_first(per_channel: Vec<Vec<Arc<Message>>>, limit: usize) -> Vec<Arc<Message>> {
    if per_channel.len() == 1 {
        let mut only = per_channel.into_iter().next().unwrap_or_default();
        only.truncate(limit);
        return only;
    }
    let total = per_channel.iter().map(Vec::len).sum::<usize>().min(limit);
    let mut lists: Vec<std::collections::VecDeque<Arc<Message>>> =
        per_channel.into_iter().map(Into::into).collect();
    let mut merged = Vec::with_capacity(total);
    while merged.len() < total {
        let next = lists
            .iter()
            .enumerate()
            .filter_map(|(i, list)| list.front().map(|m| (m.time_ms(), i)))
            .min();
        let Some((_, index)) = next else { break };
        if let Some(message) = lists[index].pop_front() {
            merged.push(message);
        }
    }
    merged
}

impl Drop for Session {
    fn drop(&mut self) {
        for cid in self.subscriptions.lock().channels() {
            self.engine.unsubscribe(&self.outbox, cid);
        }
    }
}
