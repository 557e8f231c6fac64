//! Connection admission: the server-wide and per-IP connection limits, decided once when a
//! connection is accepted.
//!
//! Every open client connection — an HTTP connection, and a WebSocket until it closes — holds
//! a [`ConnectionSlot`]. A new connection beyond `max-connections` is answered `503`, one beyond
//! `max-connections-per-ip` from the same address `429`, each with a JSON body, and closed.
//! The answer is written straight to the socket without reading the request (a flood must not
//! cost a parser per connection); refusals in progress are themselves bounded, beyond that a
//! connection is simply closed. Nothing here runs per request or per message.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Refusals being written at once; more connections beyond the limits are closed unanswered.
const MAX_REFUSING: usize = 256;
/// How long a refusal may take to write, and then to wait for the client to close.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);
/// Bytes of the refused client's request read (and discarded) before closing, so the kernel
/// does not reset the connection and destroy the answer before the client reads it.
const REFUSAL_DRAIN: usize = 64 * 1024;

/// Why a connection is not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server holds `max-connections` already (503).
    Total(usize),
    /// This address holds `max-connections-per-ip` already (429).
    PerIp(usize),
}

impl Refusal {
    /// The complete HTTP response for this refusal (built once per limit, by
    /// [`Admission::new`]).
    fn response(self) -> Bytes {
        let (status, error) = match self {
            Self::Total(max) => (
                "503 Service Unavailable",
                format!("connection limit reached: the server accepts at most {max} connections"),
            ),
            Self::PerIp(max) => (
                "429 Too Many Requests",
                format!("too many connections from your address: at most {max}"),
            ),
        };
        let body = serde_json::json!({ "error": error }).to_string();
        Bytes::from(format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncache-control: no-store\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ))
    }
}

/// Open connection counts and limits. See the module documentation.
pub struct Admission {
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    refusing: AtomicUsize,
    /// The answers to the two refusals: a flood is answered without building any.
    refused_total: Bytes,
    refused_per_ip: Bytes,
}

impl Admission {
    /// Limits of `max_total` connections and `max_per_ip` per address (0: no per-IP limit).
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        let max_total = max_total.max(1);
        Arc::new(Self {
            max_total,
            max_per_ip,
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            refusing: AtomicUsize::new(0),
            refused_total: Refusal::Total(max_total).response(),
            refused_per_ip: Refusal::PerIp(max_per_ip).response(),
        })
    }

    /// The server-wide limit in force.
    pub fn max_total(&self) -> usize {
        self.max_total
    }

    /// Open connections.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Admits a new connection from `ip` if both limits allow it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, Refusal> {
        if self.open() >= self.max_total {
            return Err(Refusal::Total(self.max_total));
        }
        if self.max_per_ip > 0 {
            let mut per_ip = self.per_ip.lock();
            let count = per_ip.entry(ip).or_insert(0);
            if *count >= self.max_per_ip {
                return Err(Refusal::PerIp(self.max_per_ip));
            }
            *count += 1;
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(ConnectionSlot {
            admission: Arc::clone(self),
            ip: (self.max_per_ip > 0).then(|| Box::new(ip)),
        })
    }

    /// Counts a connection that is already admitted under another slot (a WebSocket taking
    /// over its HTTP connection), without checking the limits.
    pub fn track(self: &Arc<Self>, ip: Option<IpAddr>) -> ConnectionSlot {
        let ip = ip.filter(|_| self.max_per_ip > 0);
        if let Some(ip) = ip {
            *self.per_ip.lock().entry(ip).or_insert(0) += 1;
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        ConnectionSlot {
            admission: Arc::clone(self),
            ip: ip.map(Box::new),
        }
    }

    /// Answers a refused connection with its JSON error and closes it, in the background.
    /// On a TLS listener the answer goes through a TLS handshake first, within the same
    /// time bound; a client that cannot complete one in time is closed unanswered.
    pub fn refuse(
        self: &Arc<Self>,
        stream: TcpStream,
        refusal: Refusal,
        tls: Option<&tokio_rustls::TlsAcceptor>,
    ) {
        if self.refusing.fetch_add(1, Ordering::Relaxed) >= MAX_REFUSING {
            self.refusing.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let admission = Arc::clone(self);
        let tls = tls.cloned();
        let response = match refusal {
            Refusal::Total(_) => self.refused_total.clone(),
            Refusal::PerIp(_) => self.refused_per_ip.clone(),
        };
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REFUSAL_TIMEOUT, async {
                match tls {
                    None => answer(stream, &response).await,
                    Some(acceptor) => {
                        let stream =
                            crate::tls::handshake(&acceptor, stream, REFUSAL_TIMEOUT).await?;
                        answer(stream, &response).await
                    }
                }
            })
            .await;
            admission.refusing.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Writes `response`, ends the sending side, and reads until the client closes (or a bound),
/// so that unread request bytes do not make the kernel reset the connection under the answer.
/// Also answers plain HTTP on the TLS port (`tls`). The caller bounds the time.
pub(crate) async fn answer<S>(mut stream: S, response: &[u8]) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(response).await?;
    stream.shutdown().await?;
    let mut buffer = [0u8; 4096];
    let mut drained = 0;
    while drained < REFUSAL_DRAIN {
        match stream.read(&mut buffer).await? {
            0 => break,
            n => drained += n,
        }
    }
    Ok(())
}

/// Keeps one connection counted until dropped. Every idle WebSocket holds one, so it is two
/// words; the address is boxed, and only when the per-IP limit is on.
pub struct ConnectionSlot {
    admission: Arc<Admission>,
    ip: Option<Box<IpAddr>>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip.take() {
            let mut per_ip = self.admission.per_ip.lock();
            if let Some(count) = per_ip.get_mut(&*ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&*ip);
                }
            }
        }
        self.admission.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The default `max-connections`: the process' open-files limit minus headroom for the
/// listener, log files and the like (5%, at least 32).
pub fn default_max_connections() -> usize {
    let soft = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    let soft = usize::try_from(soft.min(1 << 24)).unwrap_or(1 << 24);
    soft.saturating_sub((soft / 20).max(32)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_counted_and_released() {
        let admission = Admission::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let first = admission.admit(a).expect("first");
        let _second = admission.admit(a).expect("second");
        assert_eq!(admission.admit(a).err(), Some(Refusal::PerIp(2)));
        let _third = admission.admit(b).expect("other address");
        assert_eq!(admission.admit(b).err(), Some(Refusal::Total(3)));
        drop(first);
        assert_eq!(admission.open(), 2);
        let _again = admission.admit(a).expect("slot freed");
        assert!(admission.per_ip.lock().values().all(|&n| n <= 2));
    }

    #[test]
    fn a_slot_is_two_words() {
        assert_eq!(
            std::mem::size_of::<ConnectionSlot>(),
            2 * std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn refusals_are_json_http_responses() {
        let response = Refusal::PerIp(5).response();
        let text = std::str::from_utf8(&response).expect("utf8");
        assert!(text.starts_with("HTTP/1.1 429 "));
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let value: serde_json::Value = serde_json::from_str(body).expect("json");
        assert!(value["error"]
            .as_str()
            .is_some_and(|e| e.contains("at most 5")));
    }

    #[test]
    fn default_limit_leaves_headroom() {
        let max = default_max_connections();
        let soft = rlimit::getrlimit(rlimit::Resource::NOFILE)
            .expect("limit")
            .0;
        assert!((max as u64) < soft.max(2));
    }
}
