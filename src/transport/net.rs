//! The gRPC listener's connections, as the HTTP/2 codec should see them.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// A connection that tells the HTTP/2 codec it has no vectored writes.
///
/// With vectored writes, `h2` queues any DATA frame over 256 bytes as a
/// separate buffer and must flush it before it can take the next frame, so
/// every CheckResponse (about 300 bytes with its headers and metadata) costs a
/// `writev` of its own, and every write wakes the reader. Without them `h2`
/// copies frames up to 1 KiB into its write buffer, and the responses ready
/// in one turn of the connection leave in one write. The bytes on the wire
/// are the same.
#[derive(Debug)]
pub struct Batched<T>(pub T);

impl<T: AsyncRead + Unpin> AsyncRead for Batched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Batched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl<T: Connected> Connected for Batched<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn passes_bytes_both_ways_and_denies_vectored_writes() {
        let (a, b) = tokio::io::duplex(64);
        let (mut a, mut b) = (Batched(a), Batched(b));
        assert!(!a.is_write_vectored());
        a.write_all(b"check").await.unwrap();
        a.shutdown().await.unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"check");
    }
}
