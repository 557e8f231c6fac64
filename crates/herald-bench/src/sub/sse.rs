//! Server-Sent Events subscribers: one streaming GET on a raw socket.
//!
//! The request asks for `text/event-stream`; the response body (chunked or not) is decoded as
//! it arrives and split into lines, and every `data:` line is scanned for markers. `id:`,
//! `event:`, `retry:` and comment lines carry no payload and are skipped. The subscription
//! counts as live once the response head arrives (Herald and nchan both send it at once).

use bytes::BytesMut;

use super::{Receiver, SubConfig};
use crate::errors::{io_kind, kind_of};
use crate::http1::{Conn, Dechunker, Framing};

/// Subscribes `name` over SSE until the run ends.
pub async fn run(config: &SubConfig, receiver: &mut Receiver, name: &str) {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
        config.template.path_for(name),
        config.template.authority
    );
    let attempt = async {
        let stream = config
            .connector
            .connect(receiver.index)
            .await
            .map_err(|e| io_kind("connect", &e))?;
        let mut conn = Conn::new(stream);
        conn.send(request.as_bytes())
            .await
            .map_err(|e| io_kind("sse request", &e))?;
        let head = conn
            .read_head()
            .await
            .map_err(|e| kind_of("sse response", &e))?;
        if head.status != 200 {
            return Err(format!("sse: status {}", head.status));
        }
        Ok((conn, head.framing))
    };
    let (mut conn, framing) = match config.within_connect_deadline(attempt).await {
        Ok(ok) => ok,
        Err(kind) => return receiver.failed(kind),
    };
    receiver.connected();
    let mut dechunker = Dechunker::default();
    let mut text = BytesMut::with_capacity(1024);
    loop {
        let ended = match framing {
            Framing::Chunked => match dechunker.decode(conn.buffered(), &mut text) {
                Ok(ended) => ended,
                Err(e) => return receiver.error(kind_of("sse body", &e)),
            },
            Framing::Length(_) | Framing::Close => {
                let buffered = conn.buffered().split();
                text.extend_from_slice(&buffered);
                false
            }
        };
        while let Some(newline) = memchr::memchr(b'\n', &text) {
            let line = text.split_to(newline + 1);
            if line.starts_with(b"data:") {
                receiver.on_bytes(&line);
            } else if line.starts_with(b"event: gap") || line.starts_with(b"event:gap") {
                receiver.error("sse: server reported a gap (event: gap)");
            }
        }
        if ended {
            return receiver.error("sse: stream ended by server");
        }
        tokio::select! {
            () = config.cancel.cancelled() => return,
            read = conn.fill() => match read {
                Ok(0) => return receiver.error("sse: connection closed by server"),
                Ok(_) => {}
                Err(e) => return receiver.error(io_kind("sse read", &e)),
            },
        }
    }
}
