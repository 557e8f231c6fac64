//! What one run does: the command-line options of `herald-bench`, which are also the library's
//! input (tests build a [`Scenario`] from argument lists exactly as a user would).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::Serialize;

/// How subscribers receive messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// WebSocket text frames (the sub URL may be ws:// or http://).
    Ws,
    /// Server-Sent Events on one streaming response.
    Sse,
    /// Long polling: one held GET after another, following the server's cursor.
    Longpoll,
    /// Short polling: a GET every --poll-interval, following the server's cursor.
    Poll,
}

/// One load-test run.
#[derive(Debug, Clone, Parser)]
#[command(name = "herald-bench")]
pub struct Scenario {
    /// Subscriber connections to open.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Channels; subscriber i listens to channel i % C.
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Channel names are PREFIX followed by the channel index.
    #[arg(long, default_value = "bench")]
    pub prefix: String,
    /// How subscribers receive messages.
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    pub transport: Transport,
    /// Subscribe URL template; {ch} is replaced by the channel name.
    #[arg(long, default_value = "ws://127.0.0.1:8000/listen?cid={ch}")]
    pub sub_url: String,
    /// Publish URL template (HTTP POST); {ch} is replaced by the channel name.
    #[arg(long, default_value = "http://127.0.0.1:8000/publish?cid={ch}")]
    pub pub_url: String,
    /// Publishes per second in total, round-robin over the channels (0: publish nothing).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Keep-alive HTTP/1.1 publisher connections.
    #[arg(long, default_value_t = 4)]
    pub pub_concurrency: usize,
    /// Bytes per published message (at least the 22–42 byte marker).
    #[arg(long, default_value_t = 64)]
    pub payload_size: usize,
    /// Length of the measured publish phase.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Most new subscriber connections per second.
    #[arg(long, default_value_t = 2000.0)]
    pub connect_rate: f64,
    /// Time allowed for opening all subscriber connections; the rest count as failed.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Publishing before the measured phase (not counted; lets subscriptions settle).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Longest wait for late deliveries after publishing stops (ends early once all arrived).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// Interval between short-poll requests (--transport poll).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// Server process to sample: CPU time over the publish phase, RSS before/after connecting.
    /// Repeat it (or separate pids with commas) for a server of several processes, such as
    /// nginx's workers: their CPU times and RSS are summed.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Source addresses for client sockets, used in turn (when ephemeral ports run short).
    #[arg(long, value_delimiter = ',')]
    pub source_ips: Vec<IpAddr>,
    /// Runtime worker threads (default 1 leaves the other core to the server).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Write the results as JSON to FILE.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// A name for this run, copied into the results.
    #[arg(long)]
    pub label: Option<String>,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

impl Scenario {
    /// The name of channel `index`.
    pub fn channel_name(&self, index: usize) -> String {
        format!("{}{index}", self.prefix)
    }

    /// The channel of subscriber `index`.
    pub fn channel_of(&self, subscriber: usize) -> usize {
        subscriber % self.channels
    }

    /// Checks the numbers that would make a run meaningless.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.channels >= 1, "--channels must be at least 1");
        anyhow::ensure!(
            self.pub_concurrency >= 1,
            "--pub-concurrency must be at least 1"
        );
        anyhow::ensure!(self.threads >= 1, "--threads must be at least 1");
        anyhow::ensure!(
            self.rate.is_finite() && self.rate >= 0.0,
            "--rate must be a number >= 0"
        );
        anyhow::ensure!(
            self.connect_rate.is_finite() && self.connect_rate > 0.0,
            "--connect-rate must be > 0"
        );
        anyhow::ensure!(
            !self.poll_interval.is_zero(),
            "--poll-interval must be longer than 0"
        );
        anyhow::ensure!(!self.prefix.is_empty(), "--prefix must not be empty");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_names() {
        let s = Scenario::try_parse_from(["herald-bench", "--channels", "3"]).unwrap();
        assert_eq!(s.channel_name(2), "bench2");
        assert_eq!(s.channel_of(7), 1);
        assert_eq!(s.transport, Transport::Ws);
        assert_eq!(s.threads, 1);
        s.validate().unwrap();
    }

    #[test]
    fn parses_lists_and_durations() {
        let s = Scenario::try_parse_from([
            "herald-bench",
            "--source-ips",
            "127.0.0.1,127.0.0.2",
            "--duration",
            "250ms",
            "--transport",
            "longpoll",
        ])
        .unwrap();
        assert_eq!(s.source_ips.len(), 2);
        assert_eq!(s.duration, Duration::from_millis(250));
        assert_eq!(s.transport, Transport::Longpoll);
        assert!(s.server_pid.is_empty());
    }

    #[test]
    fn several_server_pids() {
        let s = Scenario::try_parse_from([
            "herald-bench",
            "--server-pid",
            "10",
            "--server-pid",
            "11,12",
        ])
        .unwrap();
        assert_eq!(s.server_pid, [10, 11, 12]);
    }

    #[test]
    fn rejects_nonsense() {
        let bad = |args: &[&str]| {
            let mut all = vec!["herald-bench"];
            all.extend_from_slice(args);
            Scenario::try_parse_from(all).unwrap().validate().is_err()
        };
        assert!(bad(&["--channels", "0"]));
        assert!(bad(&["--pub-concurrency", "0"]));
        assert!(bad(&["--rate=-1"]));
        assert!(bad(&["--connect-rate", "0"]));
    }
}
