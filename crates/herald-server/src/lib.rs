//! The Herald server: the HTTP publish API and the five delivery transports over
//! [`herald_core`].
//!
//! [`RunningServer::start`] binds and serves; the `herald` binary adds the command line,
//! logging and signal handling around it. Tests start it on port 0 in-process and talk to it
//! over real sockets.
#![doc = include_str!("../../../docs/protocol.md")]

pub mod access;
pub mod admission;
pub mod answer_first;
pub mod app;
pub mod browser;
pub mod config;
pub mod deadlines;
pub mod front;
pub mod http;
pub mod prefixed;
pub mod publish;
pub mod query;
pub mod registry;
pub mod router;
pub mod server;
pub mod shutdown;
pub mod threads;
pub mod timeouts;
pub mod tls;
pub mod transport;
pub mod unread_body;

pub use config::{Cli, Command, Config, ConfigError, NamespaceOptions, Options, ServeArgs};
pub use server::{RunningServer, StartError};
