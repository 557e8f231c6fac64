//! The `herald` binary as a separate process: started on port 0, found by the address it
//! logs, killed when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_herald");

/// A `herald serve` child process and the address it logged.
pub struct Herald {
    pub child: Child,
    /// `http://ADDR`.
    pub base: String,
    /// Every line it logged up to and including the one with its address.
    pub startup_log: Vec<String>,
}

impl Herald {
    /// Starts `herald serve --listen 127.0.0.1:0 ARGS` with `env` added to its environment,
    /// and waits (at most 20 s) until it logs its address.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(BIN);
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut tx_sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let addr = line
                    .find("addr=")
                    .and_then(|at| line[at + 5..].split_whitespace().next())
                    .map(str::to_string);
                // Lines are kept until the address is known; after that the pipe is only
                // drained, so a long-running child does not grow this test's memory.
                if tx_sent {
                    continue;
                }
                seen.push(line);
                if let Some(addr) = addr {
                    let _ = tx.send((addr, std::mem::take(&mut seen)));
                    tx_sent = true;
                }
            }
        });
        let received = rx.recv_timeout(Duration::from_secs(20));
        let Ok((addr, startup_log)) = received else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("herald did not log its listen address within 20 s");
        };
        Self {
            child,
            base: format!("http://{addr}"),
            startup_log,
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.base.trim_start_matches("http://").parse().unwrap()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; panics after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "herald did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
