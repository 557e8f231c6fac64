//! Publishers: a paced dispatcher and a few keep-alive HTTP/1.1 connections that POST marked
//! messages, on a runtime thread of their own.
//!
//! The dispatcher hands out messages at `--rate` per second round-robin over the channels,
//! with absolute deadlines so the average rate holds even when single sleeps run late; when the
//! publisher connections fall behind, their bounded queues push back and the achieved rate,
//! not the requested one, is what gets reported. Messages still queued when their phase ends
//! are dropped as unsent, so no phase's backlog is published in the next one. Each channel's
//! measured messages are numbered 1, 2, 3… When there are at least as many channels as
//! connections, every channel is published by exactly one connection, so its messages reach
//! the server in order and any reordering a subscriber sees is the server's. Each body carries
//! its send time, taken just before the request is written. A publish counts as successful on
//! any 2xx answer (Herald: 200; nchan: 201 or 202).
//!
//! Publishing runs on its own single-thread runtime: thousands of subscriber tasks woken by
//! one publish must not delay the next publish or inflate its measured latency.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::errors::kind_of;
use crate::http1::{Conn, MAX_IDLE};
use crate::latency::{new_histogram, record};
use crate::marker::{encode, unix_nanos};
use crate::net::Connector;
use crate::state::RunState;

/// Longest wait for one publish answer.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages queued per publisher connection before the dispatcher waits.
const QUEUE: usize = 256;

/// One message to publish.
#[derive(Debug, Clone, Copy)]
struct Job {
    channel: usize,
    /// 0 for warm-up messages.
    seq: u64,
    /// The phase it belongs to; stale once that phase is over.
    phase: u64,
}

/// What the publishers did, once they have all stopped.
#[derive(Debug)]
pub struct PublishOutcome {
    /// Measured messages handed out per channel (their sequences are `1..=n`).
    pub dispatched: Vec<u64>,
    /// Per channel, the sequences whose publish failed or was never sent.
    pub failed: Vec<BTreeSet<u64>>,
    /// Publish request latency (write to end of answer), µs, measured messages only.
    pub latency: Histogram<u64>,
}

/// What one publisher connection did: the measured jobs that failed or were not sent, as
/// (channel, seq), and its latency histogram.
type WorkerOutcome = (Vec<(usize, u64)>, Histogram<u64>);

/// Settings shared by the publisher connections.
#[derive(Debug)]
pub struct PublishConfig {
    /// Opens sockets to the server.
    pub connector: Connector,
    /// `Host` header value.
    pub authority: String,
    /// Publish path and query per channel.
    pub paths: Vec<String>,
    /// Body size.
    pub payload_size: usize,
    /// Publishes per second.
    pub rate: f64,
    /// Publisher connections.
    pub concurrency: usize,
    /// Socket index offset for source-address rotation (after the subscribers).
    pub first_socket: usize,
    /// The run's shared counters.
    pub state: Arc<RunState>,
    /// Fires when publishers must give up on answers too (end of the drain).
    pub cancel: CancellationToken,
}

/// Running publishers.
pub struct Publishers {
    config: Arc<PublishConfig>,
    /// The current phase; queued jobs of earlier phases are dropped.
    phase: Arc<AtomicU64>,
    /// Always `Some` until dropped.
    runtime: Option<Runtime>,
    dispatcher: Option<Dispatcher>,
    workers: Vec<JoinHandle<WorkerOutcome>>,
}

/// Paces messages out to the connections' queues.
struct Dispatcher {
    config: Arc<PublishConfig>,
    queues: Vec<mpsc::Sender<Job>>,
    dispatched: Vec<u64>,
    next_message: u64,
}

impl Publishers {
    /// Starts the publisher runtime and connections (each connects at once, so publishes do
    /// not pay for connecting).
    pub fn start(config: PublishConfig) -> Result<Self> {
        let config = Arc::new(config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("publisher")
            .enable_all()
            .build()
            .context("cannot start the publisher runtime")?;
        let phase = Arc::new(AtomicU64::new(0));
        let mut queues = Vec::new();
        let mut workers = Vec::new();
        for worker in 0..config.concurrency {
            let (tx, rx) = mpsc::channel(QUEUE);
            queues.push(tx);
            workers.push(runtime.spawn(publisher(
                Arc::clone(&config),
                Arc::clone(&phase),
                worker,
                rx,
            )));
        }
        let dispatcher = Dispatcher {
            config: Arc::clone(&config),
            queues,
            dispatched: vec![0; config.paths.len()],
            next_message: 0,
        };
        Ok(Self {
            config,
            phase,
            runtime: Some(runtime),
            dispatcher: Some(dispatcher),
            workers,
        })
    }

    /// Publishes at the configured rate for `duration`: warm-up messages (sequence 0) unless
    /// `measured`. Returns early if `stop` fires. Messages of this phase still queued at its
    /// end are then dropped unsent.
    pub async fn run_phase(
        &mut self,
        duration: Duration,
        measured: bool,
        stop: &CancellationToken,
    ) -> Result<()> {
        let mut dispatcher = self
            .dispatcher
            .take()
            .context("publisher dispatcher lost")?;
        let phase = self.phase.load(Ordering::Relaxed);
        let stop = stop.clone();
        let runtime = self.runtime.as_ref().context("publisher runtime gone")?;
        let task = runtime.spawn(async move {
            dispatcher.run(duration, measured, phase, &stop).await;
            dispatcher
        });
        let dispatcher = task.await.context("publisher dispatcher failed")?;
        self.phase.fetch_add(1, Ordering::Relaxed);
        self.dispatcher = Some(dispatcher);
        Ok(())
    }

    /// Waits for the connections to stop (they give up on answers once `cancel` fires) and
    /// collects the outcome.
    pub async fn finish(mut self) -> PublishOutcome {
        let channels = self.config.paths.len();
        let dispatched = self
            .dispatcher
            .take()
            .map_or_else(|| vec![0; channels], |d| d.dispatched);
        let mut failed = vec![BTreeSet::new(); channels];
        let mut latency = new_histogram();
        for worker in std::mem::take(&mut self.workers) {
            match worker.await {
                Ok((worker_failed, worker_latency)) => {
                    for (channel, seq) in worker_failed {
                        failed[channel].insert(seq);
                    }
                    let _ = latency.add(&worker_latency);
                }
                Err(e) => self
                    .config
                    .state
                    .errors
                    .add(format!("publish: publisher task failed: {e}")),
            }
        }
        PublishOutcome {
            dispatched,
            failed,
            latency,
        }
    }
}

impl Drop for Publishers {
    fn drop(&mut self) {
        // A runtime may not be dropped inside async code (where this is dropped); its tasks
        // have ended or end with the run's cancellation.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Dispatcher {
    async fn run(
        &mut self,
        duration: Duration,
        measured: bool,
        phase: u64,
        stop: &CancellationToken,
    ) {
        let start = Instant::now();
        let end = start + duration;
        let rate = self.config.rate;
        if rate <= 0.0 {
            tokio::select! {
                () = tokio::time::sleep_until(end) => {}
                () = stop.cancelled() => {}
            }
            return;
        }
        let mut sent: u64 = 0;
        loop {
            let now = Instant::now();
            if now >= end || stop.is_cancelled() {
                return;
            }
            let due = ((now - start).as_secs_f64() * rate) as u64 + 1;
            while sent < due && Instant::now() < end {
                self.dispatch(measured, phase).await;
                sent += 1;
            }
            let next = start + Duration::from_secs_f64(sent as f64 / rate);
            tokio::select! {
                () = tokio::time::sleep_until(next.min(end)) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    async fn dispatch(&mut self, measured: bool, phase: u64) {
        let channels = self.config.paths.len();
        let workers = self.queues.len();
        let message = self.next_message;
        self.next_message += 1;
        let channel = (message % channels as u64) as usize;
        let worker = if channels >= workers {
            channel % workers
        } else {
            (message % workers as u64) as usize
        };
        let seq = if measured {
            self.dispatched[channel] += 1;
            self.dispatched[channel]
        } else {
            0
        };
        RunState::bump(&self.config.state.publishes_in_flight);
        let job = Job {
            channel,
            seq,
            phase,
        };
        if self.queues[worker].send(job).await.is_err() {
            // The connection's task is gone (it only stops on cancel): never sent.
            RunState::drop_one(&self.config.state.publishes_in_flight);
            if seq != 0 {
                self.dispatched[channel] -= 1;
            }
        }
    }
}

/// One publisher connection: publishes queued jobs until the queue closes or the run is
/// cancelled. Returns the failed or unsent measured jobs and its latency histogram.
async fn publisher(
    config: Arc<PublishConfig>,
    phase: Arc<AtomicU64>,
    worker: usize,
    mut queue: mpsc::Receiver<Job>,
) -> WorkerOutcome {
    let state = &config.state;
    let socket = config.first_socket + worker;
    let mut failed = Vec::new();
    let mut latency = new_histogram();
    let mut last_used = Instant::now();
    let mut conn = match config.connector.connect(socket).await {
        Ok(stream) => Some(Conn::new(stream)),
        Err(e) => {
            state
                .errors
                .add(crate::errors::io_kind("publish connect", &e));
            None
        }
    };
    loop {
        let job = tokio::select! {
            job = queue.recv() => job,
            () = config.cancel.cancelled() => None,
        };
        let Some(job) = job else { break };
        if job.phase != phase.load(Ordering::Relaxed) {
            unsent(state, &mut failed, job);
            continue;
        }
        let started = Instant::now();
        if started.duration_since(last_used) > MAX_IDLE {
            conn = None;
        }
        last_used = started;
        let attempt = publish_one(&config, socket, &mut conn, job);
        let result = tokio::select! {
            result = tokio::time::timeout(PUBLISH_TIMEOUT, attempt) => {
                result.unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
            }
            () = config.cancel.cancelled() => Err(anyhow::anyhow!("run ended first")),
        };
        if matches!(result, Ok((_, false))) {
            conn = None;
        }
        let ok = match result {
            Ok((status, _)) if (200..300).contains(&status) => true,
            Ok((status, _)) => {
                state.errors.add(format!("publish: status {status}"));
                false
            }
            Err(e) => {
                conn = None;
                state.errors.add(kind_of("publish", &e));
                false
            }
        };
        if job.seq == 0 {
            if ok {
                RunState::bump(&state.warmup_published);
            }
        } else if ok {
            record(&mut latency, started.elapsed().as_micros() as u64);
            RunState::bump(&state.published_per_channel[job.channel]);
            RunState::bump(&state.published);
        } else {
            failed.push((job.channel, job.seq));
        }
        RunState::drop_one(&state.publishes_in_flight);
    }
    // Cancelled with jobs still queued: they were never sent.
    queue.close();
    while let Ok(job) = queue.try_recv() {
        unsent(state, &mut failed, job);
    }
    (failed, latency)
}

/// Accounts for a job dropped without being sent.
fn unsent(state: &RunState, failed: &mut Vec<(usize, u64)>, job: Job) {
    RunState::drop_one(&state.publishes_in_flight);
    if job.seq != 0 {
        RunState::bump(&state.unsent);
        failed.push((job.channel, job.seq));
    }
}

/// Publishes one job on `conn` (reconnecting if needed); returns the answer's status and
/// whether the connection stays open.
async fn publish_one(
    config: &PublishConfig,
    socket: usize,
    conn: &mut Option<Conn>,
    job: Job,
) -> Result<(u16, bool)> {
    let conn = match conn {
        Some(conn) => conn,
        None => conn.insert(Conn::new(config.connector.connect(socket).await?)),
    };
    let body = encode(job.seq, unix_nanos(), config.payload_size);
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        config.paths[job.channel],
        config.authority,
        body.len()
    );
    conn.send(request.as_bytes()).await?;
    let head = conn.read_head().await?;
    conn.read_body(head.framing).await?;
    Ok((head.status, head.keep_alive))
}
