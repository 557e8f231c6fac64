//! The state every request handler shares: the engine, the settings, the shutdown signal and
//! the connection gauge.

use std::net::IpAddr;
use std::sync::Arc;

use herald_core::{BrokerBounds, ChannelLimitsResolver, Engine, Hub};
use tokio_util::task::TaskTracker;

use crate::access::Access;
use crate::admission::{default_max_connections, Admission, ConnectionSlot, Refusal};
use crate::browser::OriginPolicy;
use crate::config::{Config, ConfigError};
use crate::deadlines::granularity_for;
use crate::registry::Registry;
use crate::shutdown::Shutdown;

/// Shared server state.
pub struct App {
    /// Channels, history and fan-out.
    pub engine: Engine,
    /// Resolved settings.
    pub config: Config,
    /// Cancelled when the server begins shutting down; streams watch it to end cleanly.
    pub shutdown: Shutdown,
    /// Every connection's task, and the tasks that outlive a connection's request phase
    /// (upgraded WebSockets, streams served by the front); shutdown waits on them.
    pub tasks: TaskTracker,
    /// Live subscriber connections, for ticks and shutdown.
    pub registry: Arc<Registry>,
    /// Who may publish and subscribe (keys, tokens, namespaces).
    pub access: Arc<Access>,
    /// Open connections and their limits.
    pub admission: Arc<Admission>,
    /// Which browser pages may subscribe, and the CORS headers for them.
    pub browser: OriginPolicy,
}

impl App {
    /// State for a server with these settings and the embedded in-memory engine; fails if a
    /// token key file cannot be loaded or the origin allowlist is invalid.
    pub fn new(config: Config) -> Result<Arc<Self>, ConfigError> {
        let access = Access::from_config(&config)?;
        let browser = OriginPolicy::new(&config.allowed_origins, config.cors_credentials)?;
        let bounds = BrokerBounds {
            max_channels: config.max_channels,
            max_memory: config.max_history_memory,
        };
        // Each channel's history limits come from its namespace, once, when it is created.
        let namespaces = Arc::clone(&access.namespaces);
        let resolver: ChannelLimitsResolver = Arc::new(move |cid| namespaces.limits(cid));
        let engine = Engine::in_memory_with_resolver(bounds, Arc::new(Hub::new()), resolver);
        let admission = Admission::new(
            config
                .max_connections
                .unwrap_or_else(default_max_connections),
            config.max_connections_per_ip,
        );
        // Request deadlines ring within a tenth of the shortest of them (see `deadlines`).
        let deadline_granularity = granularity_for(
            config
                .longpoll_timeout
                .min(config.header_read_timeout)
                .min(config.idle_timeout),
        );
        Ok(Arc::new(Self {
            engine,
            config,
            shutdown: Shutdown::default(),
            tasks: TaskTracker::new(),
            registry: Arc::new(Registry::new(deadline_granularity)),
            access: Arc::new(access),
            admission,
            browser,
        }))
    }

    /// Open client connections (HTTP and WebSocket).
    pub fn connections(&self) -> usize {
        self.admission.open()
    }

    /// Counts a connection from `ip` that is already admitted (a WebSocket taking over its
    /// HTTP connection) until the returned slot is dropped.
    pub fn track_connection_from(&self, ip: Option<IpAddr>) -> ConnectionSlot {
        self.admission.track(ip)
    }

    /// Admits a new connection from `ip` within the connection limits.
    pub fn admit_connection(&self, ip: IpAddr) -> Result<ConnectionSlot, Refusal> {
        self.admission.admit(ip)
    }
}
