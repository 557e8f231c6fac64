//! The smallest HTTP/1.1 client that the generator needs, on a raw TCP stream.
//!
//! Publishers, long pollers, short pollers and SSE readers all speak plain HTTP/1.1 over
//! keep-alive connections. A general client (hyper, reqwest) would cost the generator more CPU
//! than the server it measures on a shared 2-core machine, so this module only writes
//! pre-formatted requests, parses response heads with `httparse` and reads bodies framed by
//! `Content-Length`, chunked encoding or the end of the connection.

use std::io;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A keep-alive connection idle this long is replaced before its next request: servers close
/// idle connections (nginx 60 s after connecting without a request, Herald 30 s), and a
/// request written just as the server closes fails for no fault of the server.
pub const MAX_IDLE: Duration = Duration::from_secs(2);
/// Most bytes a response head may have.
const MAX_HEAD: usize = 64 * 1024;
/// Most bytes a whole response body may have.
const MAX_BODY: usize = 64 * 1024 * 1024;
/// Most headers parsed.
const MAX_HEADERS: usize = 64;

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes.
    Length(usize),
    /// Chunked transfer encoding.
    Chunked,
    /// Until the server closes the connection.
    Close,
}

/// A response head.
#[derive(Debug, Clone)]
pub struct Head {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the connection can carry another request afterwards.
    pub keep_alive: bool,
}

impl Head {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One client connection and its read buffer.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    /// Wraps a connected stream.
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: BytesMut::with_capacity(4096),
        }
    }

    /// Writes a whole request.
    pub async fn send(&mut self, request: &[u8]) -> io::Result<()> {
        self.stream.write_all(request).await
    }

    /// Reads more bytes into the buffer; `Ok(0)` at end of stream.
    pub async fn fill(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(4096);
        }
        self.stream.read_buf(&mut self.buf).await
    }

    /// The bytes read but not consumed yet.
    pub fn buffered(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Reads a response head (skipping `1xx` interim responses).
    pub async fn read_head(&mut self) -> Result<Head> {
        loop {
            if let Some((head, used)) = parse_head(&self.buf)? {
                self.buf.advance(used);
                if (100..200).contains(&head.status) {
                    continue;
                }
                return Ok(head);
            }
            if self.buf.len() > MAX_HEAD {
                bail!("response head larger than {MAX_HEAD} bytes");
            }
            if self.fill().await? == 0 {
                bail!("connection closed before a response");
            }
        }
    }

    /// Reads the whole body of a response whose head was just read.
    pub async fn read_body(&mut self, framing: Framing) -> Result<BytesMut> {
        match framing {
            Framing::Length(n) => {
                if n > MAX_BODY {
                    bail!("body of {n} bytes is too large");
                }
                while self.buf.len() < n {
                    if self.fill().await? == 0 {
                        bail!("connection closed inside a body");
                    }
                }
                Ok(self.buf.split_to(n))
            }
            Framing::Chunked => {
                let mut decoder = Dechunker::default();
                let mut body = BytesMut::new();
                loop {
                    if decoder.decode(&mut self.buf, &mut body)? {
                        return Ok(body);
                    }
                    if body.len() > MAX_BODY {
                        bail!("chunked body larger than {MAX_BODY} bytes");
                    }
                    if self.fill().await? == 0 {
                        bail!("connection closed inside a chunked body");
                    }
                }
            }
            Framing::Close => {
                while self.fill().await? != 0 {
                    if self.buf.len() > MAX_BODY {
                        bail!("body larger than {MAX_BODY} bytes");
                    }
                }
                Ok(self.buf.split())
            }
        }
    }
}

/// Parses a response head at the start of `buf`: the head and its length, or `None` when
/// incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let used = match response.parse(buf) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => bail!("bad response head: {e}"),
    };
    let status = response
        .code
        .ok_or_else(|| anyhow!("response without status"))?;
    let http10 = response.version == Some(0);
    let headers: Vec<(String, String)> = response
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).trim().to_string(),
            )
        })
        .collect();
    let value = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    let connection = value("connection").unwrap_or_default();
    let mut keep_alive = if http10 {
        connection.contains("keep-alive")
    } else {
        !connection.contains("close")
    };
    let framing = if status == 204 || status == 304 {
        Framing::Length(0)
    } else if value("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        Framing::Chunked
    } else if let Some(len) = value("content-length") {
        Framing::Length(
            len.parse()
                .map_err(|_| anyhow!("bad content-length {len:?}"))?,
        )
    } else {
        keep_alive = false;
        Framing::Close
    };
    Ok(Some((
        Head {
            status,
            headers,
            framing,
            keep_alive,
        },
        used,
    )))
}

/// Incremental decoder of chunked transfer encoding.
#[derive(Debug, Default)]
pub struct Dechunker {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside chunk data, this many bytes left.
    Data(usize),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// After the last chunk, expecting trailer lines up to an empty one.
    Trailer,
    /// The body is complete.
    Done,
}

impl Dechunker {
    /// Moves decoded bytes from `input` to `out`; `Ok(true)` once the final chunk and trailer
    /// were consumed. Bytes after the body stay in `input`.
    pub fn decode(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> Result<bool> {
        loop {
            match self.state {
                ChunkState::Done => return Ok(true),
                ChunkState::Size => {
                    let Some(line) = take_line(input)? else {
                        return Ok(false);
                    };
                    let hex = line[..].split(|&b| b == b';').next().unwrap_or(&[]);
                    let hex = std::str::from_utf8(hex)?.trim();
                    let size = usize::from_str_radix(hex, 16)
                        .map_err(|_| anyhow!("bad chunk size {hex:?}"))?;
                    self.state = if size == 0 {
                        ChunkState::Trailer
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if input.is_empty() {
                        return Ok(false);
                    }
                    let n = left.min(input.len());
                    out.extend_from_slice(&input.split_to(n));
                    self.state = if n == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - n)
                    };
                }
                ChunkState::DataEnd => {
                    if input.len() < 2 {
                        return Ok(false);
                    }
                    if &input[..2] != b"\r\n" {
                        bail!("chunk data not followed by CRLF");
                    }
                    input.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailer => {
                    let Some(line) = take_line(input)? else {
                        return Ok(false);
                    };
                    if line.is_empty() {
                        self.state = ChunkState::Done;
                    }
                }
            }
        }
    }
}

/// Removes one CRLF-terminated line from `input` (without the CRLF).
fn take_line(input: &mut BytesMut) -> Result<Option<BytesMut>> {
    match memchr::memmem::find(input, b"\r\n") {
        Some(at) => {
            let line = input.split_to(at);
            input.advance(2);
            Ok(Some(line))
        }
        None if input.len() > 4096 => bail!("chunk line too long"),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heads() {
        let raw = b"HTTP/1.1 200 OK\r\nX-Herald-Cursor: k3f9:4\r\nContent-Length: 2\r\n\r\n[]";
        let (head, used) = parse_head(raw).unwrap().unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.header("x-herald-cursor"), Some("k3f9:4"));
        assert_eq!(head.framing, Framing::Length(2));
        assert!(head.keep_alive);
        assert_eq!(&raw[used..], b"[]");
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap().is_none());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn framing_rules() {
        let head = |raw: &[u8]| parse_head(raw).unwrap().unwrap().0;
        let chunked = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(chunked.framing, Framing::Chunked);
        let close = head(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((close.framing, close.keep_alive), (Framing::Close, false));
        let not_modified = head(b"HTTP/1.1 304 Not Modified\r\nEtag: 0\r\n\r\n");
        assert_eq!(not_modified.framing, Framing::Length(0));
        let http10 = head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(!http10.keep_alive);
        let closing = head(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        assert!(!closing.keep_alive);
    }

    #[test]
    fn dechunks_in_pieces() {
        let raw = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for split in 0..raw.len() {
            let mut d = Dechunker::default();
            let mut out = BytesMut::new();
            let mut input = BytesMut::from(&raw[..split]);
            let done_early = d.decode(&mut input, &mut out).unwrap();
            input.extend_from_slice(&raw[split..]);
            let done = done_early || d.decode(&mut input, &mut out).unwrap();
            assert!(done, "split at {split}");
            assert_eq!(&out[..], b"hello, world", "split at {split}");
            assert_eq!(&input[..], b"NEXT", "split at {split}");
        }
    }

    #[test]
    fn rejects_bad_chunks() {
        let mut out = BytesMut::new();
        let mut bad = BytesMut::from(&b"zz\r\n"[..]);
        assert!(Dechunker::default().decode(&mut bad, &mut out).is_err());
        let mut bad = BytesMut::from(&b"1\r\nabc\r\n"[..]);
        assert!(Dechunker::default().decode(&mut bad, &mut out).is_err());
    }
}
