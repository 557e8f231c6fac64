//! Long-polling and short-polling subscribers: GET after GET on a keep-alive socket, each
//! request continuing where the last answer left off.
//!
//! Two cursor protocols are followed at once, so the same code serves both servers:
//! Herald's `X-Herald-Cursor` answer header becomes the next request's `since=` parameter, and
//! nchan's `Last-Modified` / `Etag` become `If-Modified-Since` / `If-None-Match`. Long polling
//! sends the next request as soon as an answer arrives; short polling sends one every poll
//! interval. A subscription counts as live once its first request is sent (the server may hold
//! it: nchan answers every GET as a long poll); if the first answer is an error status, or a
//! short poll's first answer fails, the subscriber counts as failed after all. Broken
//! connections are reopened.

use std::time::Duration;

use anyhow::Result;
use tokio::time::Instant;

use super::{Receiver, SubConfig};
use crate::errors::kind_of;
use crate::http1::{Conn, Head, MAX_IDLE};
use crate::target::encode_query_value;

/// Pause after an error before the next request, so a failing server is not hammered.
const ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Where the subscriber stands, in both servers' terms.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Cursor {
    /// Herald: `X-Herald-Cursor`, sent back as `since=`.
    since: Option<String>,
    /// nchan: `Last-Modified`, sent back as `If-Modified-Since`.
    last_modified: Option<String>,
    /// nchan: `Etag`, sent back as `If-None-Match`.
    etag: Option<String>,
}

impl Cursor {
    /// Takes whatever cursor headers the answer carries.
    fn update(&mut self, head: &Head) {
        if let Some(v) = head.header("x-herald-cursor") {
            self.since = Some(v.to_string());
        }
        if let Some(v) = head.header("last-modified") {
            self.last_modified = Some(v.to_string());
        }
        if let Some(v) = head.header("etag") {
            self.etag = Some(v.to_string());
        }
    }

    /// The request for `path` from this position.
    fn request(&self, path: &str, authority: &str) -> String {
        let mut target = path.to_string();
        if let Some(since) = &self.since {
            target.push(if path.contains('?') { '&' } else { '?' });
            target.push_str("since=");
            target.push_str(&encode_query_value(since));
        }
        let mut request = format!("GET {target} HTTP/1.1\r\nHost: {authority}\r\n");
        if let Some(v) = &self.last_modified {
            request.push_str(&format!("If-Modified-Since: {v}\r\n"));
        }
        if let Some(v) = &self.etag {
            request.push_str(&format!("If-None-Match: {v}\r\n"));
        }
        request.push_str("\r\n");
        request
    }
}

/// Polls `name` (long polling when `long`) until the run ends.
pub async fn run(config: &SubConfig, receiver: &mut Receiver, name: &str, long: bool) {
    let path = config.template.path_for(name);
    let context = if long { "longpoll" } else { "poll" };
    let mut cursor = Cursor::default();
    let mut conn: Option<Conn> = None;
    let mut next_poll = Instant::now();
    let mut first = true;
    let mut last_answer = Instant::now();
    loop {
        if !long {
            tokio::select! {
                () = tokio::time::sleep_until(next_poll) => {}
                () = config.cancel.cancelled() => return,
            }
            next_poll = (next_poll + config.poll_interval).max(Instant::now());
        }
        let request = cursor.request(&path, &config.template.authority);
        if last_answer.elapsed() > MAX_IDLE {
            conn = None;
        }
        let sent = if first {
            let attempt = open_and_send(config, receiver.index, &mut conn, &request, context);
            match config.within_connect_deadline(attempt).await {
                Ok(sent) => {
                    receiver.connected();
                    Ok(sent)
                }
                Err(kind) => return receiver.failed(kind),
            }
        } else {
            tokio::select! {
                sent = open_and_send(config, receiver.index, &mut conn, &request, context) => sent,
                () = config.cancel.cancelled() => return,
            }
        };
        let outcome = match sent {
            Ok(open) => tokio::select! {
                answer = read_answer(open) => answer.map_err(|e| kind_of(context, &e)),
                () = config.cancel.cancelled() => return,
            },
            Err(kind) => Err(kind),
        };
        last_answer = Instant::now();
        let was_first = std::mem::replace(&mut first, false);
        match outcome {
            Ok((head, body)) => {
                let status = head.status;
                let fine = matches!(status, 200 | 204 | 304 | 408);
                if was_first && !fine {
                    return receiver.failed(format!("{context}: status {status}"));
                }
                receiver.connected();
                cursor.update(&head);
                if head.header("x-herald-gap").is_some() {
                    receiver.error(format!("{context}: server reported a gap (X-Herald-Gap)"));
                }
                if !head.keep_alive {
                    conn = None;
                }
                if status == 200 {
                    receiver.on_bytes(&body);
                } else if !fine {
                    // 204/304/408 mean "nothing new" (nchan answers 304, or 408 when a long
                    // poll times out); anything else is an error.
                    receiver.error(format!("{context}: status {status}"));
                    backoff(config).await;
                }
            }
            Err(kind) if was_first && !long => return receiver.failed(kind),
            Err(kind) => {
                conn = None;
                receiver.error(kind);
                backoff(config).await;
            }
        }
    }
}

/// Sends `request` on the open connection, opening one first if needed; returns the
/// connection to read the answer from, or an error kind.
async fn open_and_send<'a>(
    config: &SubConfig,
    index: usize,
    conn: &'a mut Option<Conn>,
    request: &str,
    context: &str,
) -> Result<&'a mut Conn, String> {
    if conn.is_none() {
        let stream = config
            .connector
            .connect(index)
            .await
            .map_err(|e| crate::errors::io_kind("connect", &e))?;
        *conn = Some(Conn::new(stream));
    }
    let sent = match conn.as_mut() {
        Some(open) => open.send(request.as_bytes()).await,
        None => return Err(format!("{context}: no connection")),
    };
    if let Err(e) = sent {
        *conn = None;
        return Err(crate::errors::io_kind(context, &e));
    }
    conn.as_mut()
        .ok_or_else(|| format!("{context}: no connection"))
}

async fn read_answer(conn: &mut Conn) -> Result<(Head, bytes::BytesMut)> {
    let head = conn.read_head().await?;
    let body = conn.read_body(head.framing).await?;
    Ok((head, body))
}

async fn backoff(config: &SubConfig) {
    tokio::select! {
        () = tokio::time::sleep(ERROR_BACKOFF) => {}
        () = config.cancel.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::parse_head;

    #[test]
    fn follows_herald_cursors() {
        let mut c = Cursor::default();
        assert_eq!(
            c.request("/listen?cid=b0", "h:1"),
            "GET /listen?cid=b0 HTTP/1.1\r\nHost: h:1\r\n\r\n"
        );
        let (head, _) =
            parse_head(b"HTTP/1.1 200 OK\r\nX-Herald-Cursor: k3f9:4\r\nContent-Length: 0\r\n\r\n")
                .unwrap()
                .unwrap();
        c.update(&head);
        assert_eq!(
            c.request("/listen?cid=b0", "h:1"),
            "GET /listen?cid=b0&since=k3f9%3A4 HTTP/1.1\r\nHost: h:1\r\n\r\n"
        );
        assert!(c.request("/sub/b0", "h").starts_with("GET /sub/b0?since="));
    }

    #[test]
    fn follows_nchan_cursors() {
        let mut c = Cursor::default();
        let (head, _) = parse_head(
            b"HTTP/1.1 200 OK\r\nLast-Modified: Thu, 01 Jan 2026 00:00:00 GMT\r\nEtag: 3\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        c.update(&head);
        let request = c.request("/sub?cid=b0", "h");
        assert!(request.contains("\r\nIf-Modified-Since: Thu, 01 Jan 2026 00:00:00 GMT\r\n"));
        assert!(request.contains("\r\nIf-None-Match: 3\r\n"));
        assert!(request.starts_with("GET /sub?cid=b0 HTTP/1.1"));
    }
}
