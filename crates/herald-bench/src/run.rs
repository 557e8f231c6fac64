//! One run, phase by phase: connect the subscribers at the connect rate, let them settle,
//! publish a warm-up, publish the measured phase, drain, then stop everything and account.
//!
//! Every phase is bounded (connect by `--connect-timeout`, warm-up, publish and drain by their
//! lengths, shutdown by a few seconds), so a run always ends by itself and always produces a
//! report, even against a server that stops answering. Server CPU is sampled at the edges of
//! the measured publish phase, server RSS before connecting, after connecting (once idle) and
//! at the end.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::latency::Percentiles;
use crate::limits;
use crate::net::Connector;
use crate::procstat::{CpuTimes, Group, Proc};
use crate::publish::{PublishConfig, Publishers};
use crate::report::{self, Phases, Publish, Report, Server, Subscribers};
use crate::scenario::{Scenario, Transport};
use crate::state::{Phase, RunState};
use crate::sub::{self, SubConfig, SubOutcome};
use crate::target::{Scheme, Template};

/// Idle time after connecting before the server's RSS is sampled.
const SETTLE: Duration = Duration::from_secs(1);
/// Longest wait for tasks to stop once the run is over.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often the connect and drain phases check whether they are done.
const CHECK_EVERY: Duration = Duration::from_millis(10);

/// Runs `scenario` against a live server and reports what happened.
pub async fn run(scenario: &Scenario) -> Result<Report> {
    scenario.validate()?;
    let sub_scheme = match scenario.transport {
        Transport::Ws => Scheme::Ws,
        _ => Scheme::Http,
    };
    let sub_template = Template::parse(&scenario.sub_url)?.with_scheme(sub_scheme);
    let pub_template = Template::parse(&scenario.pub_url)?;
    if pub_template.scheme != Scheme::Http {
        bail!("--pub-url must be an http:// URL");
    }
    let limit = limits::raise_nofile()?;
    limits::check_fits(
        (scenario.subscribers + scenario.pub_concurrency) as u64,
        limit,
    )?;
    let sub_addr = sub_template.resolve().await?;
    let pub_addr = pub_template.resolve().await?;

    let state = Arc::new(RunState::new(scenario.channels, scenario.threads * 4));
    let cancel = CancellationToken::new();
    let pids = scenario.server_pid.iter().copied();
    let server = (!scenario.server_pid.is_empty()).then(|| Group(pids.map(Proc::Pid).collect()));
    let rss_before = server.as_ref().and_then(|p| p.rss_bytes().ok());
    let progress =
        (!scenario.quiet).then(|| spawn_progress(Arc::clone(&state), scenario.subscribers));

    // Publishers connect first: their sockets are not part of the subscribers' connect rate.
    let mut publishers = Publishers::start(PublishConfig {
        connector: Connector::new(pub_addr, scenario.source_ips.clone()),
        authority: pub_template.authority.clone(),
        paths: (0..scenario.channels)
            .map(|c| pub_template.path_for(&scenario.channel_name(c)))
            .collect(),
        payload_size: scenario.payload_size,
        rate: scenario.rate,
        concurrency: scenario.pub_concurrency,
        first_socket: scenario.subscribers,
        state: Arc::clone(&state),
        cancel: cancel.clone(),
    })?;

    let started = Instant::now();
    let sub_config = Arc::new(SubConfig {
        transport: scenario.transport,
        template: sub_template,
        connector: Connector::new(sub_addr, scenario.source_ips.clone()),
        poll_interval: scenario.poll_interval,
        connect_deadline: started + scenario.connect_timeout,
        cancel: cancel.clone(),
        state: Arc::clone(&state),
    });
    let handles = connect_all(scenario, &sub_config, started).await;
    let connect_time = started.elapsed();

    if server.is_some() {
        tokio::time::sleep(SETTLE).await;
    }
    let rss_connected = server.as_ref().and_then(|p| p.rss_bytes().ok());

    state.set_phase(Phase::Warmup);
    let warmup_start = Instant::now();
    publishers
        .run_phase(scenario.warmup, false, &cancel)
        .await?;
    let warmup_time = warmup_start.elapsed();

    state.set_phase(Phase::Publish);
    let cpu_start = server.as_ref().and_then(|p| p.cpu_times().ok());
    let switches_start = server.as_ref().and_then(|p| p.voluntary_switches().ok());
    let bench_cpu_start = Proc::Myself.cpu_seconds().ok();
    let publish_start = Instant::now();
    publishers
        .run_phase(scenario.duration, true, &cancel)
        .await?;
    let publish_time = publish_start.elapsed();
    let received_in_phase = RunState::get(&state.received_in_publish_phase);
    let cpu_end = server.as_ref().and_then(|p| p.cpu_times().ok());
    let switches_end = server.as_ref().and_then(|p| p.voluntary_switches().ok());
    let bench_cpu_end = Proc::Myself.cpu_seconds().ok();

    state.set_phase(Phase::Drain);
    let drain_start = Instant::now();
    let drain_deadline = drain_start + scenario.drain;
    while Instant::now() < drain_deadline
        && (RunState::get(&state.publishes_in_flight) > 0
            || RunState::get(&state.received) < state.expected_so_far())
    {
        tokio::time::sleep(CHECK_EVERY).await;
    }
    let drain_time = drain_start.elapsed();
    let rss_end = server.as_ref().and_then(|p| p.rss_bytes().ok());

    state.set_phase(Phase::Done);
    cancel.cancel();
    let published = publishers.finish().await;
    let outcomes = stop_all(handles, &state).await;
    if let Some(progress) = progress {
        progress.abort();
    }

    let deliveries = report::Deliveries {
        warmup: RunState::get(&state.warmup_received),
        stale: RunState::get(&state.stale_received),
        per_second: per_second(received_in_phase, publish_time),
        ..report::account(&published.dispatched, &published.failed, &outcomes)
    };
    let failed_publishes: u64 = published.failed.iter().map(|f| f.len() as u64).sum();
    let ok_publishes = published.dispatched.iter().sum::<u64>() - failed_publishes;
    let unsent = RunState::get(&state.unsent);
    let connected = RunState::get(&state.connected);
    let server_cpu = cpu_start.zip(cpu_end).map(|(a, b)| b.since(a));
    Ok(Report {
        label: scenario.label.clone(),
        transport: scenario.transport,
        sub_url: scenario.sub_url.clone(),
        pub_url: scenario.pub_url.clone(),
        channels: scenario.channels,
        payload_size: scenario.payload_size,
        threads: scenario.threads,
        phases: Phases {
            connect_seconds: connect_time.as_secs_f64(),
            warmup_seconds: warmup_time.as_secs_f64(),
            publish_seconds: publish_time.as_secs_f64(),
            drain_seconds: drain_time.as_secs_f64(),
        },
        subscribers: Subscribers {
            requested: scenario.subscribers,
            connected,
            failed: RunState::get(&state.failed),
            connect_seconds: connect_time.as_secs_f64(),
            connect_rate: per_second(connected, connect_time) as f64,
        },
        publish: Publish {
            target_rate: scenario.rate,
            achieved_rate: ok_publishes as f64 / publish_time.as_secs_f64().max(1e-9),
            published: ok_publishes,
            errors: failed_publishes - unsent,
            unsent,
            connections_per_channel: if scenario.channels >= scenario.pub_concurrency {
                1
            } else {
                scenario.pub_concurrency
            },
            warmup_published: RunState::get(&state.warmup_published),
            latency_us: Percentiles::of(&published.latency),
        },
        deliveries,
        latency_us: Percentiles::of(&state.latency.merged()),
        server: scenario.server_pid.first().map(|&pid| Server {
            pid,
            pids: scenario.server_pid.clone(),
            cpu_seconds: server_cpu.map(CpuTimes::total),
            cpu_user_seconds: server_cpu.map(|cpu| cpu.user),
            cpu_system_seconds: server_cpu.map(|cpu| cpu.system),
            voluntary_switches: switches_start
                .zip(switches_end)
                .map(|(a, b)| b.saturating_sub(a)),
            cpu_us_per_delivery: server_cpu
                .filter(|_| received_in_phase > 0)
                .map(|cpu| cpu.total() * 1e6 / received_in_phase as f64),
            rss_before_bytes: rss_before,
            rss_connected_bytes: rss_connected,
            rss_end_bytes: rss_end,
            bytes_per_idle_connection: rss_before
                .zip(rss_connected)
                .filter(|_| connected > 0)
                .map(|(a, b)| (b as f64 - a as f64) / connected as f64),
        }),
        bench_cpu_seconds: bench_cpu_start.zip(bench_cpu_end).map(|(a, b)| b - a),
        errors: state.errors.snapshot(),
    })
}

/// Starts the subscribers at the connect rate and waits until each has connected or failed,
/// or the connect time limit passed.
async fn connect_all(
    scenario: &Scenario,
    config: &Arc<SubConfig>,
    started: Instant,
) -> Vec<JoinHandle<SubOutcome>> {
    let state = &config.state;
    let n = scenario.subscribers;
    let mut handles = Vec::with_capacity(n);
    for index in 0..n {
        let at = started + Duration::from_secs_f64(index as f64 / scenario.connect_rate);
        if at >= config.connect_deadline {
            let left = (n - index) as u64;
            state
                .failed
                .fetch_add(left, std::sync::atomic::Ordering::Relaxed);
            state
                .errors
                .add_many("connect: not started within --connect-timeout", left);
            break;
        }
        if at > Instant::now() + Duration::from_millis(1) {
            tokio::time::sleep_until(at).await;
        }
        let channel = scenario.channel_of(index);
        handles.push(tokio::spawn(sub::subscriber(
            Arc::clone(config),
            index,
            channel,
            scenario.channel_name(channel),
        )));
    }
    // Every attempt ends by the connect deadline; the margin covers the counting.
    let give_up = config.connect_deadline + Duration::from_millis(100);
    while RunState::get(&state.connected) + RunState::get(&state.failed) < n as u64
        && Instant::now() < give_up
    {
        tokio::time::sleep(CHECK_EVERY).await;
    }
    handles
}

/// Waits (briefly) for every subscriber to return its outcome after cancellation.
async fn stop_all(handles: Vec<JoinHandle<SubOutcome>>, state: &RunState) -> Vec<SubOutcome> {
    let deadline = Instant::now() + STOP_GRACE;
    let mut outcomes = Vec::with_capacity(handles.len());
    for mut handle in handles {
        match tokio::time::timeout_at(deadline, &mut handle).await {
            Ok(Ok(outcome)) => outcomes.push(outcome),
            Ok(Err(e)) => state.errors.add(format!("subscriber task failed: {e}")),
            Err(_) => {
                handle.abort();
                state
                    .errors
                    .add("subscriber did not stop in time (its deliveries are not counted)");
            }
        }
    }
    outcomes
}

fn per_second(count: u64, time: Duration) -> u64 {
    (count as f64 / time.as_secs_f64().max(1e-9)).round() as u64
}

/// Prints one progress line per second on stderr until aborted.
fn spawn_progress(state: Arc<RunState>, requested: usize) -> JoinHandle<()> {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut last_received = 0;
        loop {
            tick.tick().await;
            let received = RunState::get(&state.received);
            eprintln!(
                "[{:>6.1}s] {:<7} connected {}/{} failed {}  published {} (+{} warm-up)  received {} (+{}/s)  errors {}",
                start.elapsed().as_secs_f64(),
                state.phase().name(),
                RunState::get(&state.connected),
                requested,
                RunState::get(&state.failed),
                RunState::get(&state.published),
                RunState::get(&state.warmup_published),
                received,
                received - last_received,
                state.errors.total()
            );
            last_received = received;
        }
    })
}
