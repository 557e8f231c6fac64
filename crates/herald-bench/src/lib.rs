//! `herald-bench`: the load generator for Herald, and for nginx+nchan with the same scenarios.
//!
//! A run opens `--subscribers` connections over `--channels` channels with one transport
//! (WebSocket, SSE, long polling or short polling), publishes marked messages at `--rate` over
//! keep-alive HTTP/1.1 connections, and reports connection results, delivery loss, duplicates
//! and reordering, delivery latency percentiles and — given the server's pid — the server's CPU
//! per delivered message and memory per idle connection. Every address is a URL template with a
//! `{ch}` placeholder, so nothing here depends on Herald's API. `bare` is a minimal fan-out
//! server that shows the cost floor.
//!
//! The binary is a thin shell over [`run`] (and [`bare::serve`]); tests call them directly.

pub mod bare;
mod errors;
mod http1;
mod latency;
mod limits;
pub mod marker;
mod net;
mod procstat;
mod publish;
pub mod report;
mod run;
pub mod scenario;
mod seq;
mod state;
mod sub;
mod target;

pub use latency::Percentiles;
pub use report::Report;
pub use run::run;
pub use scenario::{Scenario, Transport};
