//! The engine: the one entry point transports and the publish API use.
//!
//! It joins the [`Hub`] (local subscribers) and a [`Broker`] (positions and history) and owns
//! the order of operations that makes resuming exact: a subscriber joins the hub *before* its
//! backlog is read, so nothing published in between is missed; the duplicates this can cause
//! are dropped by [`Subscriptions`](crate::Subscriptions).

use std::sync::Arc;

use crate::broker::{BeforeFanOut, Broker, EngineError, HistoryRead, Published};
use crate::channel::ChannelId;
use crate::hub::Hub;
use crate::memory::{BrokerBounds, ChannelLimitsResolver, HistoryLimits, MemoryBroker};
use crate::message::Payload;
use crate::outbox::Outbox;
use crate::position::ChannelCursor;

/// Handle to the engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    hub: Arc<Hub>,
    broker: Arc<dyn Broker>,
}

impl Engine {
    /// An engine with in-process history: the embedded default.
    pub fn in_memory(limits: HistoryLimits) -> Self {
        let hub = Arc::new(Hub::new());
        let broker = Arc::new(MemoryBroker::new(Arc::clone(&hub), limits));
        Self::with_broker(hub, broker)
    }

    /// An engine with in-process history delivering into `hub`, each new channel's history
    /// limits decided by `resolver`.
    pub fn in_memory_with_resolver(
        bounds: BrokerBounds,
        hub: Arc<Hub>,
        resolver: ChannelLimitsResolver,
    ) -> Self {
        let broker = Arc::new(MemoryBroker::with_resolver(
            Arc::clone(&hub),
            bounds,
            resolver,
        ));
        Self::with_broker(hub, broker)
    }

    /// An engine over any broker; `broker` must deliver into `hub`.
    pub fn with_broker(hub: Arc<Hub>, broker: Arc<dyn Broker>) -> Self {
        Self { hub, broker }
    }

    /// The local subscriber sets.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Publishes `payload` to `cid`. Returns once the fan-out has room for more (see
    /// [`Hub::room`]).
    pub async fn publish(
        &self,
        cid: &ChannelId,
        payload: &Payload,
    ) -> Result<Published, EngineError> {
        let published = self.broker.publish(cid, payload, None).await?;
        self.hub.room().await;
        Ok(published)
    }

    /// Publishes `payload` to `cid`, calling `before_fan_out` with the outcome as soon as it is
    /// known, before any local subscriber is handed the message (see [`BeforeFanOut`]).
    /// Returns once the fan-out has room for more, as [`Engine::publish`] does.
    pub async fn publish_answering_first(
        &self,
        cid: &ChannelId,
        payload: &Payload,
        before_fan_out: BeforeFanOut<'_>,
    ) -> Result<Published, EngineError> {
        let published = self
            .broker
            .publish(cid, payload, Some(before_fan_out))
            .await?;
        self.hub.room().await;
        Ok(published)
    }

    /// Subscribes `outbox` to `cid` and returns the backlog after `cursor` (all of it that
    /// history holds). Live messages start arriving in the outbox at once; some may repeat the
    /// backlog's tail and must be filtered with [`Subscriptions`](crate::Subscriptions).
    pub async fn subscribe(
        &self,
        outbox: &Arc<Outbox>,
        cid: &ChannelId,
        cursor: ChannelCursor,
    ) -> Result<HistoryRead, EngineError> {
        self.subscribe_bounded(outbox, cid, cursor, 0).await
    }

    /// [`Engine::subscribe`], refused with [`EngineError::ChannelFull`] when the channel already
    /// has `max_subscribers` local subscribers (`0`: no bound).
    pub async fn subscribe_bounded(
        &self,
        outbox: &Arc<Outbox>,
        cid: &ChannelId,
        cursor: ChannelCursor,
        max_subscribers: usize,
    ) -> Result<HistoryRead, EngineError> {
        if self
            .hub
            .subscribe_bounded(cid, outbox, max_subscribers)
            .is_none()
        {
            return Err(EngineError::ChannelFull {
                cid: cid.clone(),
                max: max_subscribers,
            });
        }
        let read = self.broker.read(cid, cursor, usize::MAX).await;
        if read.is_err() {
            self.hub.unsubscribe(cid, outbox);
        }
        read
    }

    /// Removes `outbox` from `cid`'s subscribers.
    pub fn unsubscribe(&self, outbox: &Arc<Outbox>, cid: &ChannelId) {
        self.hub.unsubscribe(cid, outbox);
    }

    /// Reads at most `limit` messages after `cursor` without subscribing (short polling).
    pub async fn read(
        &self,
        cid: &ChannelId,
        cursor: ChannelCursor,
        limit: usize,
    ) -> Result<HistoryRead, EngineError> {
        self.broker.read(cid, cursor, limit).await
    }

    /// Drops expired history and forgets idle channels.
    pub fn sweep(&self) {
        self.broker.sweep();
    }

    /// Channels the broker holds state for.
    pub fn channel_count(&self) -> usize {
        self.broker.channel_count()
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("channels", &self.channel_count())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Accept, Subscriptions};

    #[tokio::test]
    async fn subscribe_then_backlog_then_live_is_exactly_once() {
        let engine = Engine::in_memory(HistoryLimits::default());
        let cid = ChannelId::parse("room").expect("cid");
        for i in 0..3 {
            let p = Payload::from_text(format!("m{i}").as_bytes()).expect("payload");
            engine.publish(&cid, &p).await.expect("publish");
        }
        let outbox = Outbox::new(16);
        let read = engine
            .subscribe(&outbox, &cid, ChannelCursor::Offset(1))
            .await
            .expect("subscribe");
        assert_eq!(read.messages.len(), 2);
        let mut subs = Subscriptions::new();
        subs.insert(cid.clone(), read.position);
        let p = Payload::from_text(b"live").expect("payload");
        let published = engine.publish(&cid, &p).await.expect("publish");
        assert_eq!(published.subscribers, 1);
        let mut batch = Vec::new();
        outbox.drain(&mut batch).await.expect("drain");
        assert_eq!(batch.len(), 1);
        assert_eq!(subs.accept(&batch[0]), Accept::Deliver);
        assert_eq!(batch[0].offset(), 4);
        engine.unsubscribe(&outbox, &cid);
        assert_eq!(engine.hub().subscriber_count(&cid), 0);
    }

    #[tokio::test]
    async fn the_publisher_can_be_answered_before_the_fan_out() {
        let engine = Engine::in_memory(HistoryLimits::default());
        let cid = ChannelId::parse("room").expect("cid");
        let outboxes: Vec<_> = (0..3).map(|_| Outbox::new(8)).collect();
        for outbox in &outboxes {
            engine.hub().subscribe(&cid, outbox);
        }
        let handed = || outboxes.iter().map(|o| o.len()).sum::<usize>();
        let mut early = None;
        let p = Payload::from_text(b"x").expect("payload");
        let published = engine
            .publish_answering_first(&cid, &p, &mut |outcome: &Published| {
                early = Some((outcome.message.offset(), outcome.subscribers, handed()));
            })
            .await
            .expect("publish");
        assert_eq!(
            early,
            Some((1, 3, 0)),
            "position and subscriber count known before any subscriber had the message"
        );
        assert_eq!((published.subscribers, handed()), (3, 3));
    }
}
