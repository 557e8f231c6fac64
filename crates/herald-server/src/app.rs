//! The state every request handler shares: the engine, the settings, the shutdown signal and
//! the connection gauge.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use herald_core::{ChannelLimitsResolver, Engine, HistoryLimits, Hub};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::Access;
use crate::config::{Config, ConfigError};
use crate::registry::Registry;

/// Shared server state.
pub struct App {
    /// Channels, history and fan-out.
    pub engine: Engine,
    /// Resolved settings.
    pub config: Config,
    /// Cancelled when the server begins shutting down; streams watch it to end cleanly.
    pub shutdown: CancellationToken,
    /// Tasks that outlive their HTTP connection (upgraded WebSockets); shutdown waits on them.
    pub tasks: TaskTracker,
    connections: AtomicUsize,
    /// Live subscriber connections, for ticks and shutdown.
    pub registry: Arc<Registry>,
    /// Who may publish and subscribe (keys, tokens, namespaces).
    pub access: Arc<Access>,
}

impl App {
    /// State for a server with these settings and the embedded in-memory engine. If a token
    /// key file cannot be loaded, no token is accepted (fail closed); [`App::try_new`] reports
    /// the error instead.
    pub fn new(config: Config) -> Arc<Self> {
        let access = Access::from_config(&config).unwrap_or_else(|error| {
            tracing::error!(%error, "token keys unusable; every token will be refused");
            Access::without_token_keys(&config)
        });
        Self::with_access(config, access)
    }

    /// State for a server with these settings; fails if a token key file cannot be loaded.
    pub fn try_new(config: Config) -> Result<Arc<Self>, ConfigError> {
        let access = Access::from_config(&config)?;
        Ok(Self::with_access(config, access))
    }

    fn with_access(config: Config, access: Access) -> Arc<Self> {
        let limits = HistoryLimits {
            size: config.history_size,
            ttl: config.history_ttl,
            max_channels: config.max_channels,
        };
        // Publishers write directly to their share of a channel's idle subscribers; the rest
        // is written by the connections' tasks on the runtime's other worker threads.
        let workers = tokio::runtime::Handle::try_current()
            .map_or(1, |runtime| runtime.metrics().num_workers());
        // Each channel's history limits come from its namespace, once, when it is created.
        let namespaces = Arc::clone(&access.namespaces);
        let resolver: ChannelLimitsResolver = Arc::new(move |cid| namespaces.limits(cid));
        let engine = Engine::in_memory_with_resolver(
            limits,
            Arc::new(Hub::with_direct_share(workers)),
            resolver,
        );
        Arc::new(Self {
            engine,
            config,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            connections: AtomicUsize::new(0),
            registry: Arc::new(Registry::default()),
            access: Arc::new(access),
        })
    }

    /// Open client connections (HTTP and WebSocket).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Counts a connection until the returned guard is dropped.
    pub fn track_connection(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(Arc::clone(self))
    }
}

/// Keeps one connection counted in [`App::connections`].
pub struct ConnectionGuard(Arc<App>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}
