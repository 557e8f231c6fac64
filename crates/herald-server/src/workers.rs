//! Worker threads: each runs its own single-threaded runtime, and every accepted connection
//! lives its whole life on one of them (the way nginx spreads connections over worker
//! processes).
//!
//! Why not tokio's work-stealing scheduler: a push server's work is many short bursts (a
//! publish arrives, a few sockets are written) on connections that are all alike, and on the
//! work-stealing scheduler each burst also wakes the idle worker to look for work to steal, and
//! a connection's wake-ups land on whichever thread is free. Measured on the many-channels
//! benchmark (1,000 channels × 5 WebSocket subscribers, 2,000 publishes/s, two cores), that
//! cost 24 to 26 µs of server CPU per delivery against 18 to 20 µs for the same server on a
//! single thread. With one runtime per thread, a connection's socket, timers and task stay on
//! one thread and a worker wakes only for its own connections.
//!
//! The runtime that accepts (the one [`crate::server::RunningServer::start`] runs on) is worker
//! 0; `count - 1` more threads are started here. Accepted sockets are handed out in turn. A
//! socket moving to another worker is taken off the accepting runtime's reactor and registered
//! with its new worker's inside the task, so its readiness events are that worker's alone.
//! Everything else (channels, history, outboxes, wake-ups) is shared and thread-safe:
//! a publisher on one worker writes directly to idle subscribers on any worker.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The extra worker threads, and whose turn it is to take the next connection.
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stop: CancellationToken,
    stopped: Vec<oneshot::Receiver<()>>,
}

impl Workers {
    /// Starts `count - 1` worker threads (the caller's runtime is the first worker).
    pub fn start(count: usize) -> io::Result<Self> {
        let stop = CancellationToken::new();
        let mut workers = Self {
            handles: Vec::with_capacity(count.saturating_sub(1)),
            next: AtomicUsize::new(0),
            stop: stop.clone(),
            stopped: Vec::with_capacity(count.saturating_sub(1)),
        };
        for index in 1..count {
            let (handle, stopped) = spawn_worker(index, stop.clone())?;
            workers.handles.push(handle);
            workers.stopped.push(stopped);
        }
        Ok(workers)
    }

    /// Number of workers, the caller's runtime included.
    pub fn count(&self) -> usize {
        self.handles.len() + 1
    }

    /// Runs `serve(stream)` as a tracked task on the next worker in turn.
    pub fn spawn<F, Fut>(&self, tasks: &TaskTracker, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.count();
        let Some(handle) = turn.checked_sub(1).map(|i| &self.handles[i]) else {
            tasks.spawn(serve(stream));
            return;
        };
        // Off this runtime's reactor; onto the worker's inside its task.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%error, "could not hand a connection to a worker");
                return;
            }
        };
        tasks.spawn_on(
            async move {
                match TcpStream::from_std(stream) {
                    Ok(stream) => serve(stream).await,
                    Err(error) => tracing::debug!(%error, "worker could not register a connection"),
                }
            },
            handle,
        );
    }

    /// Stops the worker threads (dropping whatever task is still on them) and waits until
    /// they have.
    pub async fn stop(mut self) {
        self.stop.cancel();
        for stopped in self.stopped.drain(..) {
            let _ = stopped.await;
        }
    }
}

impl Drop for Workers {
    /// A server dropped without a shutdown (a test's runtime ending) takes its threads along.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts one worker thread; returns its runtime's handle and a receiver that completes when
/// the thread has dropped its runtime.
fn spawn_worker(
    index: usize,
    stop: CancellationToken,
) -> io::Result<(Handle, oneshot::Receiver<()>)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    let (stopped_tx, stopped_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("herald-worker-{index}"))
        .spawn(move || {
            runtime.block_on(stop.cancelled());
            drop(runtime);
            let _ = stopped_tx.send(());
        })?;
    Ok((handle, stopped_rx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Connections are served in turn by every worker, each on its own thread, and stopping
    /// ends the threads.
    #[tokio::test]
    async fn connections_take_turns_over_the_workers_and_stop_ends_them() {
        let workers = Workers::start(3).expect("workers");
        assert_eq!(workers.count(), 3);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tasks = TaskTracker::new();
        let mut names = Vec::new();
        for _ in 0..3 {
            let mut client = TcpStream::connect(addr).await.expect("connect");
            let (server_side, _) = listener.accept().await.expect("accept");
            workers.spawn(&tasks, server_side, |mut stream| async move {
                let name = std::thread::current().name().unwrap_or("").to_owned();
                let _ = stream.write_all(name.as_bytes()).await;
            });
            let mut name = String::new();
            client.read_to_string(&mut name).await.expect("read");
            names.push(name);
        }
        assert!(names[1].starts_with("herald-worker-1"), "{names:?}");
        assert!(names[2].starts_with("herald-worker-2"), "{names:?}");
        assert_ne!(
            names[0], names[1],
            "the first connection stays on the caller's runtime"
        );
        tasks.close();
        tasks.wait().await;
        tokio::time::timeout(std::time::Duration::from_secs(5), workers.stop())
            .await
            .expect("workers stop");
    }
}
