//! The results of a run: delivery accounting, the JSON document and the human table.
//!
//! Loss is computed from facts, not from counters: for every subscriber that connected, each
//! message successfully published to its channel during the measured phase is expected once.
//! A subscriber's sequence tracker says which of them arrived; anything else it received is
//! either a duplicate, a message whose publish failed (`unexpected`), warm-up traffic or history
//! from an earlier run (`stale`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use crate::latency::Percentiles;
use crate::scenario::Transport;
use crate::sub::SubOutcome;

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `--label`.
    pub label: Option<String>,
    /// The transport used.
    pub transport: Transport,
    /// Subscribe URL template.
    pub sub_url: String,
    /// Publish URL template.
    pub pub_url: String,
    /// Channels.
    pub channels: usize,
    /// Bytes per published message.
    pub payload_size: usize,
    /// Runtime worker threads of the generator.
    pub threads: usize,
    /// Phase lengths as run.
    pub phases: Phases,
    /// Connection results.
    pub subscribers: Subscribers,
    /// Publishing results.
    pub publish: Publish,
    /// Delivery accounting.
    pub deliveries: Deliveries,
    /// Delivery latency (publisher's send time to receipt), µs, first deliveries of measured
    /// messages.
    pub latency_us: Percentiles,
    /// Server cost figures (with `--server-pid`).
    pub server: Option<Server>,
    /// CPU seconds the generator itself used over the publish phase.
    pub bench_cpu_seconds: Option<f64>,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
}

/// Phase lengths, seconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Phases {
    /// Opening the subscriber connections.
    pub connect_seconds: f64,
    /// Warm-up publishing.
    pub warmup_seconds: f64,
    /// Measured publishing.
    pub publish_seconds: f64,
    /// Waiting for late deliveries.
    pub drain_seconds: f64,
}

/// Connection results.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Subscribers {
    /// `--subscribers`.
    pub requested: usize,
    /// Subscriptions that went live.
    pub connected: u64,
    /// Subscriptions that could not be made.
    pub failed: u64,
    /// Time until every subscriber had connected or failed.
    pub connect_seconds: f64,
    /// Connected subscribers per second of that time.
    pub connect_rate: f64,
}

/// Publishing results (measured phase).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Publish {
    /// `--rate`.
    pub target_rate: f64,
    /// Successful publishes per second of the publish phase.
    pub achieved_rate: f64,
    /// Successful publishes.
    pub published: u64,
    /// Failed publishes (error answers, broken connections, timeouts).
    pub errors: u64,
    /// Messages handed out but dropped unsent at the end of the publish phase because the
    /// publisher connections had fallen behind the rate.
    pub unsent: u64,
    /// Publisher connections that carry one channel's messages. Above 1 (fewer channels than
    /// `--pub-concurrency`), concurrent publishes to a channel may reach the server in another
    /// order than their sequence numbers, so `reordered` deliveries are expected.
    pub connections_per_channel: usize,
    /// Successful warm-up publishes (not counted elsewhere).
    pub warmup_published: u64,
    /// Publish request latency, µs.
    pub latency_us: Percentiles,
}

/// Delivery accounting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Deliveries {
    /// Successful publishes × connected subscribers of their channel.
    pub expected: u64,
    /// Expected deliveries that arrived (each counted once).
    pub received: u64,
    /// Expected deliveries that never arrived.
    pub lost: u64,
    /// Extra copies of messages already received.
    pub duplicated: u64,
    /// Messages that arrived after a higher sequence of the same channel.
    pub reordered: u64,
    /// Deliveries of messages whose publish was reported failed.
    pub unexpected: u64,
    /// Deliveries of warm-up messages.
    pub warmup: u64,
    /// Deliveries of messages sent before this run (replayed history).
    pub stale: u64,
    /// First deliveries per second during the publish phase.
    pub per_second: u64,
}

/// Server cost figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Server {
    /// The sampled process (the first of `pids`).
    pub pid: u32,
    /// Every sampled process; the figures below are their sums.
    pub pids: Vec<u32>,
    /// User + system CPU seconds during the publish phase.
    pub cpu_seconds: Option<f64>,
    /// Of that, in user mode (the server's own code).
    pub cpu_user_seconds: Option<f64>,
    /// Of that, in the kernel on the server's behalf (system calls, the TCP stack).
    pub cpu_system_seconds: Option<f64>,
    /// That CPU time per delivery received during the publish phase, µs.
    pub cpu_us_per_delivery: Option<f64>,
    /// Voluntary context switches of all the server's threads during the publish phase: how
    /// often a thread blocked with nothing to do and had to be woken again.
    pub voluntary_switches: Option<u64>,
    /// RSS before any subscriber connected.
    pub rss_before_bytes: Option<u64>,
    /// RSS once every subscriber had connected, before publishing.
    pub rss_connected_bytes: Option<u64>,
    /// RSS at the end of the run, before disconnecting.
    pub rss_end_bytes: Option<u64>,
    /// (connected − before) / connected subscribers.
    pub bytes_per_idle_connection: Option<f64>,
}

/// Compares what each subscriber received with what was published.
///
/// `dispatched[c]` measured messages (sequences `1..=n`) were handed out for channel `c`, of
/// which the sequences in `failed[c]` failed to publish.
pub fn account(dispatched: &[u64], failed: &[BTreeSet<u64>], subs: &[SubOutcome]) -> Deliveries {
    let mut d = Deliveries::default();
    for sub in subs.iter().filter(|s| s.connected) {
        let published = dispatched[sub.channel];
        let failed = &failed[sub.channel];
        let ok = published - failed.range(1..=published).count() as u64;
        let seen = sub.tracker.count_seen(published, failed);
        d.expected += ok;
        d.received += seen;
        d.unexpected += sub.tracker.unique - seen;
        d.duplicated += sub.tracker.duplicates;
        d.reordered += sub.tracker.reordered;
    }
    d.lost = d.expected - d.received;
    d
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.subscribers;
        let p = &self.publish;
        let d = &self.deliveries;
        let l = &self.latency_us;
        writeln!(
            f,
            "herald-bench {}: {} subscribers over {} channels, {:?}, {} B payloads, {} thread(s)",
            self.label.as_deref().unwrap_or(""),
            s.requested,
            self.channels,
            self.transport,
            self.payload_size,
            self.threads
        )?;
        writeln!(f, "  sub {}   pub {}", self.sub_url, self.pub_url)?;
        writeln!(
            f,
            "subscribers  connected {} / {}, failed {}, in {:.2} s ({:.0}/s)",
            s.connected, s.requested, s.failed, s.connect_seconds, s.connect_rate
        )?;
        writeln!(
            f,
            "publish      {} published in {:.1} s ({:.1}/s of {:.1}/s), {} errors, {} unsent (publishers behind)",
            p.published,
            self.phases.publish_seconds,
            p.achieved_rate,
            p.target_rate,
            p.errors,
            p.unsent,
        )?;
        writeln!(
            f,
            "             request latency p50 {} p99 {} max {}{}",
            micros(p.latency_us.p50),
            micros(p.latency_us.p99),
            micros(p.latency_us.max),
            if p.connections_per_channel > 1 {
                format!(
                    "; {} connections per channel, so deliveries may be reordered",
                    p.connections_per_channel
                )
            } else {
                String::new()
            }
        )?;
        writeln!(
            f,
            "deliveries   expected {}, received {}, lost {}, duplicated {}, reordered {}, unexpected {}",
            d.expected, d.received, d.lost, d.duplicated, d.reordered, d.unexpected
        )?;
        writeln!(
            f,
            "             {}/s during the publish phase; ignored: {} warm-up, {} stale",
            d.per_second, d.warmup, d.stale
        )?;
        writeln!(
            f,
            "latency      p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
            micros(l.p50),
            micros(l.p90),
            micros(l.p99),
            micros(l.p999),
            micros(l.max),
            l.count
        )?;
        if let Some(server) = &self.server {
            writeln!(
                f,
                "server       pid {}: CPU {} s in the publish phase ({} user, {} system) = {} µs per delivery",
                server
                    .pids
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join("+"),
                opt(server.cpu_seconds.map(|v| format!("{v:.2}"))),
                opt(server.cpu_user_seconds.map(|v| format!("{v:.2}"))),
                opt(server.cpu_system_seconds.map(|v| format!("{v:.2}"))),
                opt(server.cpu_us_per_delivery.map(|v| format!("{v:.2}")))
            )?;
            writeln!(
                f,
                "             RSS {} before, {} connected ({} per idle connection), {} at end",
                opt(server.rss_before_bytes.map(bytes)),
                opt(server.rss_connected_bytes.map(bytes)),
                opt(server.bytes_per_idle_connection.map(|b| bytes(b as u64))),
                opt(server.rss_end_bytes.map(bytes))
            )?;
            writeln!(
                f,
                "             {} voluntary context switches in the publish phase (all threads)",
                opt(server.voluntary_switches.map(|n| n.to_string()))
            )?;
        }
        if let Some(cpu) = self.bench_cpu_seconds {
            writeln!(f, "generator    CPU {cpu:.2} s in the publish phase")?;
        }
        if self.errors.is_empty() {
            writeln!(f, "errors       none")?;
        } else {
            writeln!(f, "errors")?;
            for (kind, count) in &self.errors {
                writeln!(f, "  {count:>9}  {kind}")?;
            }
        }
        Ok(())
    }
}

fn opt(value: Option<String>) -> String {
    value.unwrap_or_else(|| "?".to_string())
}

/// `1234` µs as `1.23ms`, and so on.
fn micros(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}µs"),
        1_000..1_000_000 => format!("{:.2}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

fn bytes(b: u64) -> String {
    match b {
        0..10_240 => format!("{b} B"),
        10_240..10_485_760 => format!("{:.1} KiB", b as f64 / 1024.0),
        _ => format!("{:.1} MiB", b as f64 / 1_048_576.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seq::SeqTracker;

    fn sub(channel: usize, connected: bool, seqs: &[u64]) -> SubOutcome {
        let mut tracker = SeqTracker::default();
        for &s in seqs {
            tracker.observe(s);
        }
        SubOutcome {
            channel,
            connected,
            tracker,
        }
    }

    #[test]
    fn perfect_run() {
        let subs = [
            sub(0, true, &[1, 2, 3]),
            sub(0, true, &[1, 2, 3]),
            sub(1, true, &[1]),
        ];
        let d = account(&[3, 1], &[BTreeSet::new(), BTreeSet::new()], &subs);
        assert_eq!((d.expected, d.received, d.lost), (7, 7, 0));
    }

    #[test]
    fn loss_duplicates_and_reordering() {
        let subs = [sub(0, true, &[1, 3, 2, 2, 5])];
        let d = account(&[5], &[BTreeSet::new()], &subs);
        assert_eq!(d.expected, 5);
        assert_eq!(d.received, 4);
        assert_eq!(d.lost, 1);
        assert_eq!(d.duplicated, 1);
        assert_eq!(d.reordered, 1);
    }

    #[test]
    fn failed_publishes_and_failed_subscribers_are_not_expected() {
        let failed = [BTreeSet::from([2]), BTreeSet::new()];
        let subs = [sub(0, true, &[1, 2, 3]), sub(1, false, &[])];
        let d = account(&[3, 10], &failed, &subs);
        assert_eq!((d.expected, d.received, d.lost, d.unexpected), (2, 2, 0, 1));
    }

    #[test]
    fn formats_units() {
        assert_eq!(micros(999), "999µs");
        assert_eq!(micros(1_500), "1.50ms");
        assert_eq!(micros(2_000_000), "2.00s");
        assert_eq!(bytes(100), "100 B");
        assert_eq!(bytes(20 * 1024), "20.0 KiB");
        assert_eq!(bytes(50 * 1024 * 1024), "50.0 MiB");
    }
}
