//! Opening client sockets, spread over several source addresses when asked.
//!
//! One source address gives at most ~28,000 ephemeral ports towards one server address. With
//! `--source-ips 127.0.0.1,127.0.0.2,…` socket `i` binds to address `i % n` (port 0) before it
//! connects, so each address has its own port range. Every socket gets `TCP_NODELAY`: the
//! generator measures latency and must not add Nagle's delay to small publishes.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};

/// Opens connections to one server address.
#[derive(Debug, Clone)]
pub struct Connector {
    server: SocketAddr,
    source_ips: Vec<IpAddr>,
}

impl Connector {
    /// Connections to `server`, from `source_ips` in turn (the kernel's choice when empty).
    pub fn new(server: SocketAddr, source_ips: Vec<IpAddr>) -> Self {
        Self { server, source_ips }
    }

    /// Opens connection number `index`.
    pub async fn connect(&self, index: usize) -> io::Result<TcpStream> {
        let socket = if self.server.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if !self.source_ips.is_empty() {
            let ip = self.source_ips[index % self.source_ips.len()];
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = socket.connect(self.server).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_the_source_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        let ips = vec!["127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap()];
        let connector = Connector::new(server, ips);
        let a = connector.connect(0).await.unwrap();
        let b = connector.connect(1).await.unwrap();
        assert_eq!(a.local_addr().unwrap().ip().to_string(), "127.0.0.1");
        assert_eq!(b.local_addr().unwrap().ip().to_string(), "127.0.0.2");
    }
}
