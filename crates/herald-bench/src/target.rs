//! URL templates: one scenario drives Herald and nchan alike, because every address is a
//! template with a `{ch}` placeholder for the channel name.
//!
//! Only plain `http://` and `ws://` are supported (the generator talks to loopback servers;
//! TLS would measure the cipher, not the push server). A template is parsed once: scheme,
//! `host:port` for the `Host` header, the socket address (resolved once) and the path and query
//! with `{ch}` still in it. The placeholder may only appear in the path or query.

use std::net::SocketAddr;

use anyhow::{bail, Context, Result};

/// The placeholder replaced by the channel name.
pub const CHANNEL: &str = "{ch}";

/// The protocol a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `http://`
    Http,
    /// `ws://`
    Ws,
}

/// A parsed URL template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Its scheme.
    pub scheme: Scheme,
    /// `host[:port]` as written (the `Host` header).
    pub authority: String,
    /// The host without brackets or port.
    pub host: String,
    /// The port (80 when not written).
    pub port: u16,
    /// Path and query, starting with `/`, possibly containing `{ch}`.
    pub path: String,
}

impl Template {
    /// Parses `url`.
    pub fn parse(url: &str) -> Result<Self> {
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else if let Some(rest) = url.strip_prefix("ws://") {
            (Scheme::Ws, rest)
        } else if url.starts_with("https://") || url.starts_with("wss://") {
            bail!("{url}: TLS is not supported; use http:// or ws:// to a local server");
        } else {
            bail!("{url}: the URL must start with http:// or ws://");
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(at) if rest[at..].starts_with('/') => (&rest[..at], rest[at..].to_string()),
            Some(at) => (&rest[..at], format!("/{}", &rest[at..])),
            None => (rest, "/".to_string()),
        };
        if authority.is_empty() {
            bail!("{url}: no host");
        }
        if authority.contains(CHANNEL) {
            bail!("{url}: {CHANNEL} may only appear in the path or query");
        }
        let (host, port) =
            split_host_port(authority).with_context(|| format!("{url}: bad host"))?;
        Ok(Self {
            scheme,
            authority: authority.to_string(),
            host,
            port,
            path,
        })
    }

    /// The same template with another scheme (`ws://` for a WebSocket to an `http://` URL).
    pub fn with_scheme(mut self, scheme: Scheme) -> Self {
        self.scheme = scheme;
        self
    }

    /// The path and query for channel `name`.
    pub fn path_for(&self, name: &str) -> String {
        self.path.replace(CHANNEL, name)
    }

    /// The full URL for channel `name`.
    pub fn url_for(&self, name: &str) -> String {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Ws => "ws",
        };
        format!("{scheme}://{}{}", self.authority, self.path_for(name))
    }

    /// Resolves the host (once; every channel shares it).
    pub async fn resolve(&self) -> Result<SocketAddr> {
        let host = self.host.as_str();
        tokio::net::lookup_host((host, self.port))
            .await
            .with_context(|| format!("cannot resolve {host}"))?
            .next()
            .with_context(|| format!("{host} has no address"))
    }
}

fn split_host_port(authority: &str) -> Result<(String, u16)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').context("unclosed [")?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().with_context(|| format!("bad port {p:?}"))?,
        None => 80,
    };
    Ok((host.to_string(), port))
}

/// Percent-encodes `value` for a query string (everything but unreserved characters).
pub fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_herald_and_nchan_templates() {
        let t = Template::parse("ws://127.0.0.1:8000/listen?cid={ch}").unwrap();
        assert_eq!(t.scheme, Scheme::Ws);
        assert_eq!(t.authority, "127.0.0.1:8000");
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 8000));
        assert_eq!(t.path_for("bench3"), "/listen?cid=bench3");
        let n = Template::parse("http://localhost:18080/sub/{ch}").unwrap();
        assert_eq!(n.scheme, Scheme::Http);
        assert_eq!(n.url_for("b1"), "http://localhost:18080/sub/b1");
        assert_eq!(
            n.with_scheme(Scheme::Ws).url_for("b1"),
            "ws://localhost:18080/sub/b1"
        );
    }

    #[test]
    fn defaults_path_and_port() {
        let t = Template::parse("http://example").unwrap();
        assert_eq!((t.port, t.path.as_str()), (80, "/"));
        let q = Template::parse("http://h:1?cid={ch}").unwrap();
        assert_eq!(q.path_for("x"), "/?cid=x");
    }

    #[test]
    fn parses_ipv6() {
        let t = Template::parse("http://[::1]:9000/p").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9000));
        assert_eq!(t.authority, "[::1]:9000");
    }

    #[test]
    fn rejects_what_it_cannot_do() {
        assert!(Template::parse("https://h/").is_err());
        assert!(Template::parse("ftp://h/").is_err());
        assert!(Template::parse("http://{ch}.h/").is_err());
        assert!(Template::parse("http://h:x/").is_err());
        assert!(Template::parse("http:///x").is_err());
    }

    #[test]
    fn encodes_query_values() {
        assert_eq!(encode_query_value("k3f9:17,a0:4"), "k3f9%3A17%2Ca0%3A4");
        assert_eq!(encode_query_value("a-b_c.d~"), "a-b_c.d~");
    }
}
