//! The TLS handshakes of a gRPC listener, done beside the accept loop: each
//! admitted connection is handshaken on its own task with the certificate
//! that serves at that moment ([`super::tls::ServerTls::current`]), its
//! client is judged once ([`super::clients::verdict`]), and only then is it
//! handed to the gRPC server.
//!
//! Pending handshakes are bounded by what bounds every connection: each one
//! holds its place at the listener's gate (`connections.max_grpc`) from the
//! accept, and is dropped at [`super::tls::HANDSHAKE_TIMEOUT`] or at the
//! connection's header-read timeout, whichever comes first (the socket under
//! the handshake is the gate's). A slow handshake never holds up the accept
//! of the next.
//!
//! Never imports: the app, the pipeline or its stages.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt as _};

use super::clients::{TlsPeer, verdict};
use super::connections::Conn;
use super::tls::{HANDSHAKE_TIMEOUT, ServerTls};

/// Handshaken connections waiting for the gRPC server to take them.
const READY_QUEUE: usize = 64;

/// A connection after its handshake.
#[derive(Debug)]
pub struct TlsIo<T> {
    io: tokio_rustls::server::TlsStream<T>,
    peer: TlsPeer,
}

/// Handshakes every connection `conns` yields, each on its own task; the
/// stream ends when `conns` does, and the handshakes stop being started once
/// the stream is dropped.
pub fn accept<S, T>(mut conns: S, tls: Arc<ServerTls>) -> impl Stream<Item = io::Result<TlsIo<T>>>
where
    S: Stream<Item = io::Result<(T, Conn)>> + Send + Unpin + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(READY_QUEUE);
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                _ = tx.closed() => return,
                next = conns.next() => next,
            };
            let (io, conn) = match next {
                None => return,
                Some(Err(e)) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    continue;
                }
                Some(Ok(c)) => c,
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
            let (tx, tls) = (tx.clone(), Arc::clone(&tls));
            tokio::spawn(async move {
                let Ok(Ok(io)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await
                else {
                    // A failed or timed-out handshake: the socket is closed.
                    return;
                };
                let allowed = verdict(tls.allowed_clients(), io.get_ref().1.peer_certificates());
                let _ = tx
                    .send(Ok(TlsIo {
                        io,
                        peer: TlsPeer { conn, allowed },
                    }))
                    .await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// tonic inserts this into every request of the connection, for
/// [`super::clients::ClientGate`].
impl<T> tonic::transport::server::Connected for TlsIo<T> {
    type ConnectInfo = TlsPeer;

    fn connect_info(&self) -> TlsPeer {
        self.peer.clone()
    }
}
