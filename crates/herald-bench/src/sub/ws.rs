//! WebSocket subscribers: tokio-tungstenite over a socket opened by the [`Connector`].
//!
//! Herald and nchan both send one text frame per message; every text or binary frame is
//! scanned for markers (Herald's control frames simply have none). Buffers are kept small
//! (4 KiB read buffer, no write batching) because thousands of these run at once. Pings are
//! answered by tungstenite while reading.
//!
//! [`Connector`]: crate::net::Connector

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::{Receiver, SubConfig};
use crate::errors::io_kind;

/// Subscribes `name` over WebSocket until the run ends.
pub async fn run(config: &SubConfig, receiver: &mut Receiver, name: &str) {
    let url = config.template.url_for(name);
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let attempt = async {
        let stream = config
            .connector
            .connect(receiver.index)
            .await
            .map_err(|e| io_kind("connect", &e))?;
        tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config))
            .await
            .map(|(ws, _response)| ws)
            .map_err(|e| error_kind("ws handshake", &e))
    };
    let mut ws = match config.within_connect_deadline(attempt).await {
        Ok(ws) => ws,
        Err(kind) => return receiver.failed(kind),
    };
    receiver.connected();
    loop {
        tokio::select! {
            () = config.cancel.cancelled() => return,
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    if text.starts_with(r#"{"type":"gap""#) {
                        receiver.error("ws: server reported a gap");
                    }
                    receiver.on_bytes(text.as_bytes());
                }
                Some(Ok(Message::Binary(bytes))) => receiver.on_bytes(&bytes),
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map_or_else(|| "none".to_string(), |f| u16::from(f.code).to_string());
                    return receiver.error(format!("ws: closed by server, code {code}"));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return receiver.error(error_kind("ws read", &e)),
                None => return receiver.error("ws: connection ended"),
            },
        }
    }
}

fn error_kind(context: &str, error: &WsError) -> String {
    match error {
        WsError::Io(e) => io_kind(context, e),
        WsError::Http(response) => format!("{context}: status {}", response.status().as_u16()),
        other => format!("{context}: {other}"),
    }
}
