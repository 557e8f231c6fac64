//! A byte stream with bytes already read from it put back in front.
//!
//! The connection front reads a request head off the socket before it knows who answers it.
//! When hyper must (see `front`), it gets the socket wrapped in [`Prefixed`]: its reads return
//! the bytes the front took first, then whatever the socket holds, so hyper sees the connection
//! exactly as the client sent it. Writes go straight through. hyper-util has such a wrapper
//! (`Rewind`) but keeps it private, and the WebSocket upgrade needs to take the socket and any
//! unread bytes back out of it ([`Prefixed::into_parts`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `inner`, with `prefix` read before anything of its own. See the module documentation.
#[derive(Debug)]
pub struct Prefixed<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    /// `inner` whose reads start with `prefix`.
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Self { prefix, inner }
    }

    /// The bytes of the prefix not read yet, and the stream.
    pub fn into_parts(self) -> (Bytes, T) {
        (self.prefix, self.inner)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        if self.prefix.is_empty() {
            // Give the bytes back as soon as they are read.
            self.prefix = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::Prefixed;
    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_the_prefix_then_the_stream_and_writes_through() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut stream = Prefixed::new(Bytes::from_static(b"GET / HT"), server);
        client.write_all(b"TP/1.1\r\n").await.expect("write");
        let mut small = [0u8; 3];
        stream.read_exact(&mut small).await.expect("read");
        assert_eq!(&small, b"GET");
        let mut rest = [0u8; 13];
        stream.read_exact(&mut rest).await.expect("read");
        assert_eq!(&rest, b" / HTTP/1.1\r\n");
        stream.write_all(b"ok").await.expect("write");
        let mut answer = [0u8; 2];
        client.read_exact(&mut answer).await.expect("read");
        assert_eq!(&answer, b"ok");
        let (prefix, _) = stream.into_parts();
        assert!(prefix.is_empty());
    }

    #[test]
    fn unread_prefix_is_given_back() {
        let (_client, server) = tokio::io::duplex(8);
        let (prefix, _) = Prefixed::new(Bytes::from_static(b"abc"), server).into_parts();
        assert_eq!(&prefix[..], b"abc");
    }
}
