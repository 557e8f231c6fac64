//! Server settings: command-line flags, `HERALD_…` environment variables and an optional TOML
//! file, merged in that order of precedence over built-in defaults.
//!
//! clap reads flags and environment together (a flag wins over its variable); the file fills
//! whatever neither set; [`Config`] is the single resolved, validated result the server runs
//! with. Every option is declared and documented once, in [`Options`] (flag, variable and file
//! key at once), and shows up in `herald serve --help`; its default is written once, in
//! `Config::with_defaults`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Deserializer};

/// Herald: a real-time message push server.
///
/// Backends publish over HTTP (`POST /publish?cid=…`); browsers subscribe over WebSocket,
/// Server-Sent Events, a forever iframe, long polling or short polling (`GET /listen?cid=…`,
/// `GET /messages?cid=…&since=…`). See docs/protocol.md.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about, long_about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (embedded defaults: in-memory history, 127.0.0.1:8000).
    Serve(ServeArgs),
}

/// Arguments of `herald serve`: the config file's path, and every option.
#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// TOML file with options (keys as the long flags with `_` for `-`).
    #[arg(long, env = "HERALD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The options set by flags and environment variables.
    #[command(flatten)]
    pub options: Options,
}

/// Declares [`Options`] once and generates its merge: each field, listed once, becomes a flag
/// with its variable (clap), a key of the config file (serde) and a line of
/// [`Options::or_from`].
macro_rules! options {
    (
        $(#[$attr:meta])*
        pub struct $name:ident {
            $($(#[$field_attr:meta])* pub $field:ident: $type:ty,)*
        }
    ) => {
        $(#[$attr])*
        pub struct $name {
            $($(#[$field_attr])* pub $field: $type,)*
        }

        impl $name {
            /// Each option set here, else the one set in `lower` (flags and environment over
            /// the file).
            pub fn or_from(self, lower: Self) -> Self {
                Self {
                    $($field: Fallback::or_from(self.$field, lower.$field),)*
                }
            }
        }
    };
}

/// An option's value that a lower-precedence source fills when this one left it unset.
trait Fallback {
    /// `self` if set, else `lower`.
    fn or_from(self, lower: Self) -> Self;
}

impl<T> Fallback for Option<T> {
    fn or_from(self, lower: Self) -> Self {
        self.or(lower)
    }
}

impl<T> Fallback for Vec<T> {
    fn or_from(self, lower: Self) -> Self {
        if self.is_empty() {
            lower
        } else {
            self
        }
    }
}

impl<K, V> Fallback for BTreeMap<K, V> {
    fn or_from(self, lower: Self) -> Self {
        if self.is_empty() {
            lower
        } else {
            self
        }
    }
}

options! {
    /// Options of `herald serve`. Each may also come from the environment variable shown, or
    /// from the `--config` file under the same name with `_` for `-` (unknown keys are an
    /// error, so a typo is not silently ignored). Durations take units: `250ms`, `30s`, `10m`.
    #[derive(Debug, Default, Args, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct Options {
        /// Address to listen on; port 0 picks a free port (the address is logged).
        /// [default: 127.0.0.1:8000]
        #[arg(long, env = "HERALD_LISTEN", value_name = "ADDR")]
        pub listen: Option<SocketAddr>,

        /// Messages kept per channel for resuming and polling. [default: 100]
        #[arg(long, env = "HERALD_HISTORY_SIZE", value_name = "N")]
        pub history_size: Option<usize>,

        /// How long a message stays in history. [default: 10m]
        #[serde(deserialize_with = "duration")]
        #[arg(long, env = "HERALD_HISTORY_TTL", value_name = "DURATION", value_parser = parse_duration)]
        pub history_ttl: Option<Duration>,

        /// Most channels the server keeps at once; new channels beyond it are refused (503).
        /// [default: 1000000]
        #[arg(long, env = "HERALD_MAX_CHANNELS", value_name = "N")]
        pub max_channels: Option<usize>,

        /// Most channels one connection (or one publish) may name. [default: 64]
        #[arg(long, env = "HERALD_MAX_CHANNELS_PER_CONNECTION", value_name = "N")]
        pub max_channels_per_connection: Option<usize>,

        /// Largest publish body, and largest WebSocket message, in bytes. [default: 65536]
        #[arg(long, env = "HERALD_MAX_BODY", value_name = "BYTES")]
        pub max_body: Option<usize>,

        /// A key that lets non-loopback clients publish (`Authorization: Bearer KEY`). Repeat the
        /// flag, or separate keys with commas in the variable, to accept several (rotation).
        #[arg(
            long = "publish-key",
            env = "HERALD_PUBLISH_KEYS",
            value_name = "KEY",
            value_delimiter = ',',
            hide_env_values = true
        )]
        pub publish_keys: Vec<String>,

        /// Let WebSocket clients publish with the `publish` command. [default: false]
        #[arg(long, env = "HERALD_CLIENT_PUBLISH", value_name = "BOOL")]
        pub client_publish: Option<bool>,

        /// How long a long-poll request waits for a message before answering `[]`. [default: 30s]
        #[serde(deserialize_with = "duration")]
        #[arg(long, env = "HERALD_LONGPOLL_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
        pub longpoll_timeout: Option<Duration>,

        /// Interval of keep-alive comments on SSE and iframe streams. [default: 15s]
        #[serde(deserialize_with = "duration")]
        #[arg(long, env = "HERALD_KEEPALIVE", value_name = "DURATION", value_parser = parse_duration)]
        pub keepalive: Option<Duration>,

        /// Reconnect delay suggested to SSE clients (`retry:`). [default: 2s]
        #[serde(deserialize_with = "duration")]
        #[arg(long, env = "HERALD_SSE_RETRY", value_name = "DURATION", value_parser = parse_duration)]
        pub sse_retry: Option<Duration>,

        /// Interval of WebSocket pings; a peer that misses one is closed. [default: 25s]
        #[serde(deserialize_with = "duration")]
        #[arg(long, env = "HERALD_WS_PING_INTERVAL", value_name = "DURATION", value_parser = parse_duration)]
        pub ws_ping_interval: Option<Duration>,

        /// Messages that may wait for one connection before it is dropped as a slow consumer.
        /// [default: 1024]
        #[arg(long, env = "HERALD_OUTBOX_CAPACITY", value_name = "N")]
        pub outbox_capacity: Option<usize>,

        /// How long shutdown waits for connections to close before exiting. [default: 10s]
        #[serde(deserialize_with = "duration")]
        #[arg(long, env = "HERALD_SHUTDOWN_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
        pub shutdown_timeout: Option<Duration>,

        /// Threads serving connections, each with its own event loop; connections are dealt
        /// to them in turn. [default: the number of CPUs]
        #[arg(long, env = "HERALD_WORKERS", value_name = "N")]
        pub workers: Option<usize>,

        /// Least time between two writes of one large channel (more than 32 subscribers on
        /// this node) to its subscribers on one connection thread: messages published faster
        /// wait at most this long and reach each subscriber together, in one system call. `0`
        /// writes each message as it comes. At most 1s. [default: 20ms]
        #[serde(deserialize_with = "duration")]
        #[arg(long, env = "HERALD_FANOUT_WINDOW", value_name = "DURATION", value_parser = parse_duration)]
        pub fanout_window: Option<Duration>,

        /// Log filter (tracing `EnvFilter` syntax, e.g. `info`, `herald_server=debug`).
        /// [default: info]
        #[arg(long, env = "HERALD_LOG", value_name = "FILTER")]
        pub log: Option<String>,

        // --- Access control: publisher keys, subscriber tokens, namespace defaults ---
        /// Let loopback clients publish without a key; `false`: loopback needs a key too.
        /// [default: true]
        #[arg(long, env = "HERALD_PUBLISH_FROM_LOOPBACK", value_name = "BOOL")]
        pub publish_from_loopback: Option<bool>,

        /// Secret that verifies HS256 subscriber tokens (JWT). Prefer the variable or the file: a
        /// flag's value is visible to other local users in the process list.
        #[arg(
            long,
            env = "HERALD_JWT_HMAC_SECRET",
            value_name = "SECRET",
            hide_env_values = true
        )]
        pub jwt_hmac_secret: Option<String>,

        /// PEM file with the RSA public key that verifies RS256 subscriber tokens.
        #[arg(long, env = "HERALD_JWT_RSA_PUBLIC_KEY", value_name = "FILE")]
        pub jwt_rsa_public_key: Option<PathBuf>,

        /// PEM file with the P-256 public key that verifies ES256 subscriber tokens.
        #[arg(long, env = "HERALD_JWT_EC_PUBLIC_KEY", value_name = "FILE")]
        pub jwt_ec_public_key: Option<PathBuf>,

        /// Required `aud` claim of subscriber tokens (not checked when unset).
        #[arg(long, env = "HERALD_JWT_AUDIENCE", value_name = "AUD")]
        pub jwt_audience: Option<String>,

        /// Required `iss` claim of subscriber tokens (not checked when unset).
        #[arg(long, env = "HERALD_JWT_ISSUER", value_name = "ISS")]
        pub jwt_issuer: Option<String>,

        /// Channels without a namespace need a token to be subscribed to. Namespaces
        /// (`[namespaces.NAME]` in the config file) set their own. [default: false]
        #[arg(long, env = "HERALD_PRIVATE", value_name = "BOOL")]
        pub private: Option<bool>,

        /// Most subscribers of one channel without a namespace; 0 = unlimited. [default: 0]
        #[arg(long, env = "HERALD_MAX_SUBSCRIBERS", value_name = "N")]
        pub max_subscribers: Option<usize>,
        // TLS: both files or neither.
        /// PEM certificate chain (leaf first): the listener speaks HTTPS and WSS instead of plain
        /// HTTP and WS. Needs `--tls-key`.
        #[arg(long, env = "HERALD_TLS_CERT", value_name = "FILE")]
        pub tls_cert: Option<PathBuf>,

        /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `--tls-cert`.
        #[arg(long, env = "HERALD_TLS_KEY", value_name = "FILE")]
        pub tls_key: Option<PathBuf>,

        /// How long a client may take to complete the TLS handshake before it is dropped.
        /// [default: 10s]
        #[serde(deserialize_with = "duration")]
        #[arg(long, env = "HERALD_TLS_HANDSHAKE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
        pub tls_handshake_timeout: Option<Duration>,
        // --- Browser boundaries and limits ---
        /// A browser origin allowed to subscribe from another site (`https://app.example.com`,
        /// `http://localhost:3000`, `https://*.example.com` for its subdomains, `*` for any).
        /// Repeat the flag, or separate origins with commas in the variable. Requests without an
        /// `Origin` and same-origin pages are always allowed. [default: none]
        #[arg(
            long = "allowed-origins",
            env = "HERALD_ALLOWED_ORIGINS",
            value_name = "ORIGIN",
            value_delimiter = ','
        )]
        pub allowed_origins: Vec<String>,

        /// Send `Access-Control-Allow-Credentials: true` to allowed origins (cookies and HTTP
        /// authentication on cross-site requests). Not combinable with `*`. [default: false]
        #[arg(long, env = "HERALD_CORS_CREDENTIALS", value_name = "BOOL")]
        pub cors_credentials: Option<bool>,

        /// Most open client connections (HTTP and WebSocket); more are answered 503 and closed.
        /// [default: the open-files limit minus 5% headroom]
        #[arg(long, env = "HERALD_MAX_CONNECTIONS", value_name = "N")]
        pub max_connections: Option<usize>,

        /// Most open connections from one IP address; more are answered 429 and closed.
        /// 0 turns the limit off. [default: 0]
        #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_IP", value_name = "N")]
        pub max_connections_per_ip: Option<usize>,

        /// Publishes per second one WebSocket client may send (token bucket, bursts of the same
        /// size); more are answered with an error frame. [default: 10]
        #[arg(long, env = "HERALD_CLIENT_PUBLISH_RATE", value_name = "N")]
        pub client_publish_rate: Option<u32>,

        /// Largest request head (request line and headers) in bytes; larger is answered 431.
        /// [default: 32768]
        #[arg(long, env = "HERALD_MAX_HEADER_SIZE", value_name = "BYTES")]
        pub max_header_size: Option<usize>,

        /// Most headers in one request; more is answered 431. [default: 100]
        #[arg(long, env = "HERALD_MAX_HEADERS", value_name = "N")]
        pub max_headers: Option<usize>,

        /// Longest request URL (path and query) in bytes; longer is answered 414. [default: 16384]
        #[arg(long, env = "HERALD_MAX_URL_LENGTH", value_name = "BYTES")]
        pub max_url_length: Option<usize>,

        /// How long a new connection may take to send its first complete request head (slowloris).
        /// [default: 10s]
        #[serde(deserialize_with = "duration")]
        #[arg(long, env = "HERALD_HEADER_READ_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
        pub header_read_timeout: Option<Duration>,

        /// How long a keep-alive connection may wait, after a response, until the next request
        /// head is complete; then it is closed. [default: 60s]
        #[serde(deserialize_with = "duration")]
        #[arg(long, env = "HERALD_IDLE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
        pub idle_timeout: Option<Duration>,

        /// Most bytes of message envelopes kept in history across all channels; beyond it the
        /// publishing channel's oldest messages are dropped (resuming clients get a `gap`).
        /// [default: 268435456]
        #[arg(long, env = "HERALD_MAX_HISTORY_MEMORY", value_name = "BYTES")]
        pub max_history_memory: Option<usize>,

    /// Namespaces by name: `[namespaces.NAME]` tables, in the config file only.
    #[arg(skip)]
    pub namespaces: BTreeMap<String, NamespaceOptions>,
}
}

/// The default `workers`: one per CPU this process may run on.
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Most connection threads accepted: beyond the CPUs there are, more threads only add switching.
const MAX_WORKERS: usize = 1024;

/// The default `fanout_window`: wider than one write of 1,000 subscribers takes (10–15 ms on
/// the benchmark machines), so that at 400 publishes/s to 2,000 subscribers each subscriber
/// gets several messages per system call (BENCHMARKS.md).
const DEFAULT_FANOUT_WINDOW: Duration = Duration::from_millis(20);

/// A longer window would hold messages back for more than a second.
const MAX_FANOUT_WINDOW: Duration = Duration::from_secs(1);

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 250ms, 30s, 10m)"))
}

/// Reads a duration in the config file with the flags' parser (`"5s"`).
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// The options of one namespace (channels `NAME:…`); unset options take the top-level
/// (default namespace) value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceOptions {
    /// Messages kept per channel.
    pub history_size: Option<usize>,
    /// Age limit of history.
    #[serde(deserialize_with = "duration")]
    pub history_ttl: Option<Duration>,
    /// Subscribing needs a token that covers the channel.
    pub private: Option<bool>,
    /// Clients that may subscribe may also publish from a WebSocket.
    pub client_publish: Option<bool>,
    /// Most subscribers per channel; 0 = unlimited.
    pub max_subscribers: Option<usize>,
}

/// The resolved settings the server runs with.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// Messages kept per channel.
    pub history_size: usize,
    /// Age limit of history.
    pub history_ttl: Duration,
    /// Most channels held by the server.
    pub max_channels: usize,
    /// Most channels per connection or publish.
    pub max_channels_per_connection: usize,
    /// Largest publish body / WebSocket message.
    pub max_body: usize,
    /// Keys accepted from non-loopback publishers.
    pub publish_keys: Vec<String>,
    /// Whether WebSocket clients may publish.
    pub client_publish: bool,
    /// Long-poll wait.
    pub longpoll_timeout: Duration,
    /// SSE / iframe keep-alive interval.
    pub keepalive: Duration,
    /// SSE `retry:` hint.
    pub sse_retry: Duration,
    /// WebSocket ping interval.
    pub ws_ping_interval: Duration,
    /// Per-connection queue bound.
    pub outbox_capacity: usize,
    /// Shutdown grace period.
    pub shutdown_timeout: Duration,
    /// Connection threads (see [`crate::threads`]); [`crate::RunningServer::start`] starts
    /// them. The accept loop, the timers and the engine's tasks run on the runtime that
    /// starts the server.
    pub workers: usize,
    /// Least time between two runs of one large channel on one connection thread (see
    /// `herald_core::ShareBacklog`).
    pub fanout_window: Duration,
    /// Log filter.
    pub log: String,
    // Access control.
    /// Whether loopback clients may publish without a key.
    pub publish_from_loopback: bool,
    /// HS256 token secret.
    pub jwt_hmac_secret: Option<String>,
    /// RS256 public key file (PEM).
    pub jwt_rsa_public_key: Option<PathBuf>,
    /// ES256 public key file (PEM).
    pub jwt_ec_public_key: Option<PathBuf>,
    /// Required token audience.
    pub jwt_audience: Option<String>,
    /// Required token issuer.
    pub jwt_issuer: Option<String>,
    /// Whether channels without a namespace need a token.
    pub private: bool,
    /// Most subscribers per channel without a namespace; 0 = unlimited.
    pub max_subscribers: usize,
    /// Namespaces by name.
    pub namespaces: BTreeMap<String, NamespaceOptions>,

    // TLS
    /// PEM certificate chain; with `tls_key`, the listener speaks TLS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Time limit of a TLS handshake.
    pub tls_handshake_timeout: Duration,
    // Browser boundaries and limits.
    /// Origins allowed besides the server's own (see `browser`).
    pub allowed_origins: Vec<String>,
    /// Whether CORS answers allow credentials.
    pub cors_credentials: bool,
    /// Most open connections; `None` derives it from the open-files limit.
    pub max_connections: Option<usize>,
    /// Most open connections per client IP; 0 = no limit.
    pub max_connections_per_ip: usize,
    /// Publishes per second per WebSocket client.
    pub client_publish_rate: u32,
    /// Largest request head in bytes.
    pub max_header_size: usize,
    /// Most headers per request.
    pub max_headers: usize,
    /// Longest request URL in bytes.
    pub max_url_length: usize,
    /// Time for a new connection's first request head.
    pub header_read_timeout: Duration,
    /// Time a keep-alive connection may wait for its next request head.
    pub idle_timeout: Duration,
    /// Most bytes of retained envelopes in the in-memory history.
    pub max_history_memory: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self::with_defaults(Options::default())
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys are secrets: show how many there are, never what they are.
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("history_size", &self.history_size)
            .field("history_ttl", &self.history_ttl)
            .field("max_channels", &self.max_channels)
            .field(
                "max_channels_per_connection",
                &self.max_channels_per_connection,
            )
            .field("max_body", &self.max_body)
            .field(
                "publish_keys",
                &format_args!("<{} keys>", self.publish_keys.len()),
            )
            .field("client_publish", &self.client_publish)
            .field("longpoll_timeout", &self.longpoll_timeout)
            .field("keepalive", &self.keepalive)
            .field("sse_retry", &self.sse_retry)
            .field("ws_ping_interval", &self.ws_ping_interval)
            .field("outbox_capacity", &self.outbox_capacity)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("workers", &self.workers)
            .field("fanout_window", &self.fanout_window)
            .field("log", &self.log)
            .field("publish_from_loopback", &self.publish_from_loopback)
            .field(
                "jwt_hmac_secret",
                &self.jwt_hmac_secret.as_ref().map(|_| "<secret>"),
            )
            .field("jwt_rsa_public_key", &self.jwt_rsa_public_key)
            .field("jwt_ec_public_key", &self.jwt_ec_public_key)
            .field("jwt_audience", &self.jwt_audience)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("private", &self.private)
            .field("max_subscribers", &self.max_subscribers)
            .field("namespaces", &self.namespaces)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("tls_handshake_timeout", &self.tls_handshake_timeout)
            .field("allowed_origins", &self.allowed_origins)
            .field("cors_credentials", &self.cors_credentials)
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("client_publish_rate", &self.client_publish_rate)
            .field("max_header_size", &self.max_header_size)
            .field("max_headers", &self.max_headers)
            .field("max_url_length", &self.max_url_length)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_history_memory", &self.max_history_memory)
            .finish()
    }
}

/// Why the settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for these options.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid setting {name}: {message}")]
    Invalid {
        /// The option.
        name: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Resolves flags and environment (already merged by clap) over the optional file over the
    /// defaults, and validates the result.
    pub fn resolve(args: ServeArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => Options::default(),
        };
        Self::from_options(args.options.or_from(file))
    }

    /// The settings a TOML config file's text gives over the defaults, validated: the pure
    /// step of [`Config::resolve`] (also the fuzzing entry point).
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Self::from_options(parse_file(text, Path::new(""))?)
    }

    /// The settings the options give, each unset one taken from its default: the one place
    /// the defaults are written (also [`Config::default`]). Not validated.
    fn with_defaults(options: Options) -> Self {
        let o = options;
        Self {
            listen: o.listen.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8000))),
            history_size: o.history_size.unwrap_or(100),
            history_ttl: o.history_ttl.unwrap_or(Duration::from_secs(600)),
            max_channels: o.max_channels.unwrap_or(1_000_000),
            max_channels_per_connection: o.max_channels_per_connection.unwrap_or(64),
            max_body: o.max_body.unwrap_or(64 * 1024),
            publish_keys: o.publish_keys,
            client_publish: o.client_publish.unwrap_or(false),
            longpoll_timeout: o.longpoll_timeout.unwrap_or(Duration::from_secs(30)),
            keepalive: o.keepalive.unwrap_or(Duration::from_secs(15)),
            sse_retry: o.sse_retry.unwrap_or(Duration::from_secs(2)),
            ws_ping_interval: o.ws_ping_interval.unwrap_or(Duration::from_secs(25)),
            outbox_capacity: o.outbox_capacity.unwrap_or(1024),
            shutdown_timeout: o.shutdown_timeout.unwrap_or(Duration::from_secs(10)),
            workers: o.workers.unwrap_or_else(default_workers),
            fanout_window: o.fanout_window.unwrap_or(DEFAULT_FANOUT_WINDOW),
            log: o.log.unwrap_or_else(|| "info".into()),
            publish_from_loopback: o.publish_from_loopback.unwrap_or(true),
            jwt_hmac_secret: o.jwt_hmac_secret,
            jwt_rsa_public_key: o.jwt_rsa_public_key,
            jwt_ec_public_key: o.jwt_ec_public_key,
            jwt_audience: o.jwt_audience,
            jwt_issuer: o.jwt_issuer,
            private: o.private.unwrap_or(false),
            max_subscribers: o.max_subscribers.unwrap_or(0),
            namespaces: o.namespaces,
            tls_cert: o.tls_cert,
            tls_key: o.tls_key,
            tls_handshake_timeout: o.tls_handshake_timeout.unwrap_or(Duration::from_secs(10)),
            allowed_origins: o.allowed_origins,
            cors_credentials: o.cors_credentials.unwrap_or(false),
            max_connections: o.max_connections,
            max_connections_per_ip: o.max_connections_per_ip.unwrap_or(0),
            client_publish_rate: o.client_publish_rate.unwrap_or(10),
            max_header_size: o.max_header_size.unwrap_or(32 * 1024),
            max_headers: o.max_headers.unwrap_or(100),
            max_url_length: o.max_url_length.unwrap_or(16 * 1024),
            header_read_timeout: o.header_read_timeout.unwrap_or(Duration::from_secs(10)),
            idle_timeout: o.idle_timeout.unwrap_or(Duration::from_secs(60)),
            max_history_memory: o.max_history_memory.unwrap_or(256 * 1024 * 1024),
        }
    }

    /// [`Config::with_defaults`], validated.
    fn from_options(options: Options) -> Result<Self, ConfigError> {
        let config = Self::with_defaults(options);
        config.validate()?;
        Ok(config)
    }

    /// Checks that every value is usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("history_size", self.history_size),
            ("max_channels", self.max_channels),
            (
                "max_channels_per_connection",
                self.max_channels_per_connection,
            ),
            ("max_body", self.max_body),
            ("outbox_capacity", self.outbox_capacity),
            ("workers", self.workers),
            ("max_connections", self.max_connections.unwrap_or(1)),
            ("client_publish_rate", self.client_publish_rate as usize),
            ("max_headers", self.max_headers),
            ("max_history_memory", self.max_history_memory),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    name,
                    message: "must be at least 1".into(),
                });
            }
        }
        let nonzero = [
            ("history_ttl", self.history_ttl),
            ("longpoll_timeout", self.longpoll_timeout),
            ("keepalive", self.keepalive),
            ("ws_ping_interval", self.ws_ping_interval),
            ("tls_handshake_timeout", self.tls_handshake_timeout),
            ("header_read_timeout", self.header_read_timeout),
            ("idle_timeout", self.idle_timeout),
        ];
        for (name, value) in nonzero {
            if value.is_zero() {
                return Err(ConfigError::Invalid {
                    name,
                    message: "must be longer than zero".into(),
                });
            }
        }
        if self.fanout_window > MAX_FANOUT_WINDOW {
            return Err(ConfigError::Invalid {
                name: "fanout_window",
                message: format!("must be at most {MAX_FANOUT_WINDOW:?}"),
            });
        }
        if self.workers > MAX_WORKERS {
            return Err(ConfigError::Invalid {
                name: "workers",
                message: format!("must be at most {MAX_WORKERS}"),
            });
        }
        if self.publish_keys.iter().any(|k| k.trim().is_empty()) {
            return Err(ConfigError::Invalid {
                name: "publish_keys",
                message: "keys must not be empty".into(),
            });
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err(ConfigError::Invalid {
                    name: "tls_key",
                    message: "tls_cert is set: give its key too (both or neither)".into(),
                })
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    name: "tls_cert",
                    message: "tls_key is set: give its certificate too (both or neither)".into(),
                })
            }
            _ => {}
        }
        self.validate_boundaries_and_limits()?;
        self.validate_access()
    }

    fn validate_boundaries_and_limits(&self) -> Result<(), ConfigError> {
        let invalid = |name, message: String| Err(ConfigError::Invalid { name, message });
        crate::browser::OriginPolicy::new(&self.allowed_origins, self.cors_credentials)?;
        if self.max_header_size < 1024 {
            return invalid("max_header_size", "must be at least 1024".into());
        }
        if self.max_url_length == 0 || self.max_url_length > self.max_header_size {
            return invalid(
                "max_url_length",
                format!(
                    "must be between 1 and max_header_size ({})",
                    self.max_header_size
                ),
            );
        }
        Ok(())
    }

    /// Checks the access-control settings (token key files are read once, by `App::new`).
    fn validate_access(&self) -> Result<(), ConfigError> {
        if self.jwt_hmac_secret.as_ref().is_some_and(String::is_empty) {
            return Err(ConfigError::Invalid {
                name: "jwt_hmac_secret",
                message: "must not be empty".into(),
            });
        }
        for (name, ns) in &self.namespaces {
            let invalid = |message: String| ConfigError::Invalid {
                name: "namespaces",
                message,
            };
            crate::access::validate_namespace_name(name)
                .map_err(|e| invalid(format!("invalid namespace name {name:?}: {e}")))?;
            if ns.history_size == Some(0) {
                return Err(invalid(format!(
                    "namespace {name:?}: history_size must be at least 1"
                )));
            }
            if ns.history_ttl.is_some_and(|t| t.is_zero()) {
                return Err(invalid(format!(
                    "namespace {name:?}: history_ttl must be longer than zero"
                )));
            }
        }
        Ok(())
    }
}

fn read_file(path: &Path) -> Result<Options, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    parse_file(&text, path)
}

/// Parses a config file's text (every option, `[namespaces.NAME]` tables included); `path`
/// names it in errors. The one parser behind [`Config::resolve`] and [`Config::from_toml_str`].
fn parse_file(text: &str, path: &Path) -> Result<Options, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.into(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> ServeArgs {
        let mut argv = vec!["herald", "serve"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).expect("parses").command {
            Command::Serve(args) => args,
        }
    }

    #[test]
    fn defaults_apply_without_flags_or_file() {
        let config = Config::resolve(ServeArgs::default()).expect("valid");
        assert_eq!(config, Config::default());
    }

    /// The hand-written `Debug` (it hides secrets) shows every setting: an option added later
    /// without a line there fails here instead of vanishing from the logged configuration.
    #[test]
    fn debug_shows_every_setting() {
        let shown = format!("{:?}", Config::default());
        let definition = <Cli as clap::CommandFactory>::command();
        let serve = definition.find_subcommand("serve").expect("serve");
        for arg in serve.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "config" {
                continue; // the file's path, not a setting
            }
            assert!(
                shown.contains(&format!("{id}:")),
                "Debug leaves out {id}: {shown}"
            );
        }
        assert!(shown.contains("namespaces:"), "{shown}");
    }

    #[test]
    fn the_fanout_window_comes_from_flag_or_file_and_is_at_most_a_second() {
        assert_eq!(Config::default().fanout_window, Duration::from_millis(20));
        let config = Config::resolve(parse(&["--fanout-window", "0"])).expect("valid");
        assert_eq!(
            config.fanout_window,
            Duration::ZERO,
            "0 writes each message as it comes"
        );
        let config = Config::from_toml_str("fanout_window = \"150ms\"\n").expect("valid");
        assert_eq!(config.fanout_window, Duration::from_millis(150));
        let too_long = Config::resolve(parse(&["--fanout-window", "2s"]));
        assert!(
            matches!(
                &too_long,
                Err(ConfigError::Invalid { name: "fanout_window", message }) if message.contains("1s")
            ),
            "{too_long:?}"
        );
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("herald.toml");
        std::fs::write(
            &path,
            "history_size = 7\nhistory_ttl = \"5s\"\nlisten = \"127.0.0.1:9\"\npublish_keys = [\"a\", \"b\"]\n",
        )
        .expect("write");
        let config_path = path.to_str().expect("utf8 path");
        let config = Config::resolve(parse(&["--config", config_path, "--listen", "127.0.0.1:0"]))
            .expect("valid");
        assert_eq!(config.listen.port(), 0, "flag wins");
        assert_eq!(config.history_size, 7, "file fills");
        assert_eq!(config.history_ttl, Duration::from_secs(5));
        assert_eq!(config.publish_keys, ["a", "b"]);
        assert_eq!(config.outbox_capacity, 1024, "default remains");
        assert!(
            !format!("{config:?}").contains("\"a\""),
            "keys are not printed"
        );
    }

    #[test]
    fn tls_files_come_as_a_pair_from_flags_environment_or_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("herald.toml");
        std::fs::write(
            &path,
            "tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\ntls_handshake_timeout = \"3s\"\n",
        )
        .expect("write");
        let config_path = path.to_str().expect("utf8 path");
        let config = Config::resolve(parse(&["--config", config_path, "--tls-key", "other.pem"]))
            .expect("valid");
        assert_eq!(config.tls_cert.as_deref(), Some(Path::new("c.pem")));
        assert_eq!(
            config.tls_key.as_deref(),
            Some(Path::new("other.pem")),
            "flag wins"
        );
        assert_eq!(config.tls_handshake_timeout, Duration::from_secs(3));
        assert_eq!(
            Config::default().tls_handshake_timeout,
            Duration::from_secs(10)
        );

        for (args, missing) in [
            (&["--tls-cert", "c.pem"][..], "tls_key"),
            (&["--tls-key", "k.pem"][..], "tls_cert"),
        ] {
            match Config::resolve(parse(args)) {
                Err(ConfigError::Invalid { name, .. }) => assert_eq!(name, missing),
                other => panic!("{args:?} alone: {other:?}"),
            }
        }
        assert!(matches!(
            Config::resolve(parse(&["--tls-handshake-timeout", "0s"])),
            Err(ConfigError::Invalid {
                name: "tls_handshake_timeout",
                ..
            })
        ));
    }

    #[test]
    fn boundary_and_limit_options_resolve_and_validate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("herald.toml");
        std::fs::write(
            &path,
            "allowed_origins = [\"https://app.example.com\", \"https://*.example.org\"]\nmax_connections = 500\nidle_timeout = \"5s\"\nmax_history_memory = 1048576\n",
        )
        .expect("write");
        let config_path = path.to_str().expect("utf8 path");
        let config = Config::resolve(parse(&[
            "--config",
            config_path,
            "--max-connections-per-ip",
            "20",
            "--header-read-timeout",
            "2s",
        ]))
        .expect("valid");
        assert_eq!(config.allowed_origins.len(), 2);
        assert_eq!(config.max_connections, Some(500));
        assert_eq!(config.max_connections_per_ip, 20);
        assert_eq!(config.idle_timeout, Duration::from_secs(5));
        assert_eq!(config.header_read_timeout, Duration::from_secs(2));
        assert_eq!(config.max_history_memory, 1 << 20);
        assert_eq!(config.client_publish_rate, 10, "default remains");

        for (args, name) in [
            (
                &["--allowed-origins", "app.example.com"][..],
                "allowed_origins",
            ),
            (
                &["--allowed-origins", "*", "--cors-credentials", "true"][..],
                "cors_credentials",
            ),
            (&["--max-url-length", "100000"][..], "max_url_length"),
            (&["--max-connections", "0"][..], "max_connections"),
            (&["--client-publish-rate", "0"][..], "client_publish_rate"),
            (&["--idle-timeout", "0s"][..], "idle_timeout"),
        ] {
            match Config::resolve(parse(args)) {
                Err(ConfigError::Invalid { name: got, .. }) => assert_eq!(got, name, "{args:?}"),
                other => panic!("{args:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn namespaces_and_token_settings_come_from_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("herald.toml");
        std::fs::write(
            &path,
            "private = true\njwt_hmac_secret = \"s3cr3t-value\"\npublish_from_loopback = false\n\
             [namespaces.chat]\nhistory_size = 5\nhistory_ttl = \"30s\"\n\
             [namespaces.public]\nprivate = false\nmax_subscribers = 3\nclient_publish = true\n",
        )
        .expect("write");
        let config_path = path.to_str().expect("utf8 path");
        let config = Config::resolve(parse(&["--config", config_path, "--max-subscribers", "9"]))
            .expect("valid");
        assert!(config.private && !config.publish_from_loopback);
        assert_eq!(config.max_subscribers, 9);
        assert_eq!(
            config.namespaces["chat"],
            NamespaceOptions {
                history_size: Some(5),
                history_ttl: Some(Duration::from_secs(30)),
                ..NamespaceOptions::default()
            }
        );
        assert_eq!(config.namespaces["public"].max_subscribers, Some(3));
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cr3t-value"), "{debug}");
        assert!(
            debug.contains("jwt_hmac_secret: Some(\"<secret>\")"),
            "{debug}"
        );
    }

    #[test]
    fn bad_namespaces_and_key_files_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            ServeArgs {
                config: Some(path),
                ..ServeArgs::default()
            }
        };
        let unknown_key = file("a.toml", "[namespaces.chat]\nhistroy_size = 3\n");
        assert!(matches!(
            Config::resolve(unknown_key),
            Err(ConfigError::Parse { .. })
        ));
        for (name, text) in [
            ("b.toml", "[namespaces.\"a:b\"]\nprivate = true\n"),
            ("c.toml", "[namespaces.\"a b\"]\nprivate = true\n"),
            ("d.toml", "[namespaces.chat]\nhistory_size = 0\n"),
            ("e.toml", "[namespaces.chat]\nhistory_ttl = \"0s\"\n"),
        ] {
            let result = Config::resolve(file(name, text));
            assert!(
                matches!(
                    result,
                    Err(ConfigError::Invalid {
                        name: "namespaces",
                        ..
                    })
                ),
                "{text}: {result:?}"
            );
        }
        let not_a_key = dir.path().join("not-a-key.pem");
        std::fs::write(&not_a_key, "hello").expect("write");
        for flag in ["--jwt-rsa-public-key", "--jwt-ec-public-key"] {
            for path in [not_a_key.clone(), dir.path().join("missing.pem")] {
                let path_text = path.to_str().expect("utf8 path");
                // The settings are well formed; the file is read (once) when the server's
                // state is built.
                let config = Config::resolve(parse(&[flag, path_text])).expect("well formed");
                let error = crate::app::App::new(config).err().expect("refused");
                assert!(error.to_string().contains(path_text), "{error}");
            }
        }
    }

    #[test]
    fn one_declaration_serves_flags_and_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("herald.toml");
        std::fs::write(
            &path,
            "publish_keys = [\"file\"]\nallowed_origins = [\"https://a.example\"]\nkeepalive = \"3s\"\n",
        )
        .expect("write");
        let config_path = path.to_str().expect("utf8 path");
        let config = Config::resolve(parse(&["--config", config_path, "--publish-key", "flag"]))
            .expect("valid");
        assert_eq!(
            config.publish_keys,
            ["flag"],
            "a flag's list replaces the file's"
        );
        assert_eq!(config.allowed_origins, ["https://a.example"]);
        assert_eq!(config.keepalive, Duration::from_secs(3));
        // The file's own path is not a key of the file; a bad duration points at its key.
        for (text, key) in [
            ("config = \"x.toml\"", "config"),
            ("keepalive = \"soon\"", "keepalive"),
        ] {
            let error = Config::from_toml_str(text).expect_err(text).to_string();
            assert!(error.contains(key), "{error}");
        }
    }

    #[test]
    fn bad_files_and_values_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "histroy_size = 3\n").expect("write");
        let args = ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        };
        assert!(matches!(
            Config::resolve(args),
            Err(ConfigError::Parse { .. })
        ));
        let args = parse(&["--history-size", "0"]);
        assert!(matches!(
            Config::resolve(args),
            Err(ConfigError::Invalid {
                name: "history_size",
                ..
            })
        ));
        assert!(Cli::try_parse_from(["herald", "serve", "--history-ttl", "soon"]).is_err());
        assert_eq!(
            Config::from_toml_str("history_size = 7\n")
                .expect("valid")
                .history_size,
            7
        );
        // The same parser as a config file: main's options and namespace tables included.
        let file_options = Config::from_toml_str(
            "max_connections_per_ip = 9\n[namespaces.chat]\nhistory_size = 5\n",
        )
        .expect("valid");
        assert_eq!(file_options.max_connections_per_ip, 9);
        assert_eq!(file_options.namespaces["chat"].history_size, Some(5));
        for bad in [
            "[namespaces.chat]\nhistroy_size = 3",
            "[namespaces.\"a:b\"]\nprivate = true",
            "history_size = -1",
            "history_ttl = \"soon\"",
            "x = 1",
            "max_body = 0",
        ] {
            assert!(Config::from_toml_str(bad).is_err(), "{bad}");
        }
        let missing = ServeArgs {
            config: Some("/nonexistent/herald.toml".into()),
            ..ServeArgs::default()
        };
        assert!(matches!(
            Config::resolve(missing),
            Err(ConfigError::Read { .. })
        ));
    }
}
