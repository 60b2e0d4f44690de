//! The listeners' connections, bounded: at most so many open per listener
//! (beyond it a new connection is closed at accept and counted), a first
//! request within the header-read timeout, and no connection left idle past
//! the idle timeout (`connections:` in the server configuration).
//!
//! "Idle" means no request in flight, counted from the last one's end (or
//! from the accept, before the first); bytes alone are not activity. So the
//! HTTP/2 PINGs the gRPC listeners send (`http2_keepalive_*`, which close a
//! connection whose peer stops answering) never keep a connection open, and
//! a client that trickles a request's headers gains nothing. This is gRPC's
//! own `MAX_CONNECTION_IDLE`; the default is longer than Envoy's own idle
//! timeout for upstream connections (1 h), so a healthy Envoy closes its idle
//! connections first and never sends a check into one closing under it.
//!
//! A connection's lifetime is watched by its socket ([`Guarded`]) and its
//! requests are counted by a layer on the router ([`CountRequests`]); the
//! counts and refusals are in [`crate::observe::metrics`].
//!
//! Never imports: the app, the pipeline or its stages.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::observe::metrics::ConnectionMetrics;

/// Default for `connections.max_grpc`: each gRPC listener's open connections.
/// An Envoy keeps one or a few per worker thread; at about 15 kB an idle
/// connection, this many cost some 30 MB, well inside the chart's 256 Mi.
pub const DEFAULT_MAX_GRPC_CONNECTIONS: usize = 2048;
/// Default for `connections.max_admin`: probes and scrapers need a handful.
pub const DEFAULT_MAX_ADMIN_CONNECTIONS: usize = 128;
/// Largest `connections.max_grpc` / `max_admin` accepted.
pub const MAX_CONNECTIONS_CEILING: usize = 1_000_000;

/// `connections` in the server configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionsConfig {
    /// Most open connections on each gRPC listener (TCP, unix socket).
    pub max_grpc: usize,
    /// Most open connections on the admin listener.
    pub max_admin: usize,
    /// How long a new connection has to deliver its first request's headers
    /// (with TLS, the handshake included).
    #[serde(with = "crate::foundation::duration::serde_text")]
    pub header_read_timeout: Duration,
    /// A gRPC connection with no request for this long is closed.
    #[serde(with = "crate::foundation::duration::serde_text")]
    pub idle_timeout: Duration,
    /// An admin connection with no request for this long is closed.
    #[serde(with = "crate::foundation::duration::serde_text")]
    pub admin_idle_timeout: Duration,
    /// A gRPC connection that has been quiet this long is sent an HTTP/2 PING.
    #[serde(with = "crate::foundation::duration::serde_text")]
    pub http2_keepalive_interval: Duration,
    /// A PING not answered within this is a dead peer: the connection is closed.
    #[serde(with = "crate::foundation::duration::serde_text")]
    pub http2_keepalive_timeout: Duration,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        ConnectionsConfig {
            max_grpc: DEFAULT_MAX_GRPC_CONNECTIONS,
            max_admin: DEFAULT_MAX_ADMIN_CONNECTIONS,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(65 * 60),
            admin_idle_timeout: Duration::from_secs(5 * 60),
            http2_keepalive_interval: Duration::from_secs(60),
            http2_keepalive_timeout: Duration::from_secs(20),
        }
    }
}

impl ConnectionsConfig {
    /// Checks every bound against its range; the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [("max_grpc", self.max_grpc), ("max_admin", self.max_admin)] {
            if !(1..=MAX_CONNECTIONS_CEILING).contains(&value) {
                return Err(format!(
                    "connections.{name} must be between 1 and {MAX_CONNECTIONS_CEILING}"
                ));
            }
        }
        for (name, value) in [
            ("header_read_timeout", self.header_read_timeout),
            ("idle_timeout", self.idle_timeout),
            ("admin_idle_timeout", self.admin_idle_timeout),
            ("http2_keepalive_interval", self.http2_keepalive_interval),
            ("http2_keepalive_timeout", self.http2_keepalive_timeout),
        ] {
            if value.is_zero() {
                return Err(format!("connections.{name} must be positive"));
            }
        }
        Ok(())
    }
}

/// One listener's door: admits connections up to its cap, each with the
/// listener's timeouts.
#[derive(Debug, Clone)]
pub struct Gate {
    open: Arc<AtomicUsize>,
    max: usize,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    metrics: ConnectionMetrics,
}

impl Gate {
    /// The door of a gRPC listener.
    pub fn grpc(config: &ConnectionsConfig, metrics: ConnectionMetrics) -> Gate {
        Gate::new(config.max_grpc, config.idle_timeout, config, metrics)
    }

    /// The door of the admin listener.
    pub fn admin(config: &ConnectionsConfig, metrics: ConnectionMetrics) -> Gate {
        Gate::new(config.max_admin, config.admin_idle_timeout, config, metrics)
    }

    fn new(
        max: usize,
        idle_timeout: Duration,
        config: &ConnectionsConfig,
        metrics: ConnectionMetrics,
    ) -> Gate {
        Gate {
            open: Arc::new(AtomicUsize::new(0)),
            max,
            header_read_timeout: config.header_read_timeout,
            idle_timeout,
            metrics,
        }
    }

    /// Admits `io`, or closes it (by dropping it) when the listener is full.
    pub fn admit<T>(&self, io: T) -> Option<Guarded<T>> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.metrics.refused.inc();
            return None;
        }
        self.metrics.open.inc();
        let now = Instant::now();
        Some(Guarded {
            io,
            conn: Conn(Arc::new(ConnState {
                born: now,
                last_end_ms: AtomicU64::new(0),
                in_flight: AtomicUsize::new(0),
                served: AtomicBool::new(false),
                idle_timeout: self.idle_timeout,
            })),
            timer: Box::pin(tokio::time::sleep_until(now + self.header_read_timeout)),
            header_read_timeout: self.header_read_timeout,
            expired: false,
            gate: self.clone(),
        })
    }
}

/// What a connection's requests tell its socket; also the connect info the
/// router's requests carry.
#[derive(Debug, Clone)]
pub struct Conn(Arc<ConnState>);

#[derive(Debug)]
struct ConnState {
    born: Instant,
    /// When the last request ended, in milliseconds after `born`.
    last_end_ms: AtomicU64,
    in_flight: AtomicUsize,
    /// Whether a request has started: the header-read timeout is over.
    served: AtomicBool,
    idle_timeout: Duration,
}

impl Conn {
    /// Marks a request as in flight until the returned guard is dropped.
    fn begin(&self) -> InFlight {
        self.0.served.store(true, Ordering::Release);
        self.0.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }
}

struct InFlight(Conn);

impl Drop for InFlight {
    fn drop(&mut self) {
        let state = &self.0.0;
        let ms = u64::try_from(state.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        state.last_end_ms.fetch_max(ms, Ordering::AcqRel);
        state.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's socket, closed (its reads fail) once the connection has
/// been idle too long; it frees its place at the gate when dropped.
#[derive(Debug)]
pub struct Guarded<T> {
    io: T,
    conn: Conn,
    timer: Pin<Box<Sleep>>,
    header_read_timeout: Duration,
    /// Whether the timeout has been counted (later reads fail as well).
    expired: bool,
    gate: Gate,
}

impl<T> Guarded<T> {
    /// The handle the connection's requests carry.
    pub fn conn(&self) -> &Conn {
        &self.conn
    }

    /// `Err` once the connection has been idle past its deadline; otherwise
    /// the timer is set to the deadline and will wake the reader then. The
    /// deadline is worked out afresh at every read: a request that has just
    /// ended moves it, and the reader is polled then to send the answer.
    fn check_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let state = &self.conn.0;
        if state.in_flight.load(Ordering::Acquire) > 0 {
            // Busy: no deadline until the request ends.
            return Ok(());
        }
        let (deadline, what) = if state.served.load(Ordering::Acquire) {
            let last = Duration::from_millis(state.last_end_ms.load(Ordering::Acquire));
            (state.born + last + state.idle_timeout, "idle")
        } else {
            (state.born + self.header_read_timeout, "header_read")
        };
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        if self.timer.as_mut().poll(cx).is_pending() {
            return Ok(());
        }
        if !self.expired {
            self.expired = true;
            match what {
                "idle" => self.gate.metrics.idle_closed.inc(),
                _ => self.gate.metrics.header_read_closed.inc(),
            };
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connection closed: {what} timeout"),
        ))
    }
}

impl<T> Drop for Guarded<T> {
    fn drop(&mut self) {
        self.gate.open.fetch_sub(1, Ordering::AcqRel);
        self.gate.metrics.open.dec();
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check_deadline(cx)?;
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
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

/// tonic inserts this into every request of the connection.
impl<T> tonic::transport::server::Connected for Guarded<T> {
    type ConnectInfo = Conn;

    fn connect_info(&self) -> Conn {
        self.conn.clone()
    }
}

/// The admin listener: axum's accept loop, through the gate.
#[derive(Debug)]
pub struct GatedListener<L> {
    pub inner: L,
    pub gate: Gate,
}

impl<L: axum::serve::Listener> axum::serve::Listener for GatedListener<L> {
    type Io = Guarded<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (io, addr) = self.inner.accept().await;
            if let Some(io) = self.gate.admit(io) {
                return (io, addr);
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// axum's requests carry the connection's handle too.
impl<L: axum::serve::Listener>
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, GatedListener<L>>>
    for Conn
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, GatedListener<L>>) -> Conn {
        stream.io().conn().clone()
    }
}

/// A layer that counts each request in flight on its connection, from the
/// call until the response is ready, so the idle timeout runs only between
/// requests. A request without a connection handle is passed through.
#[derive(Debug, Clone, Copy, Default)]
pub struct CountRequests;

impl<S> tower::Layer<S> for CountRequests {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted(inner)
    }
}

#[derive(Debug, Clone)]
pub struct Counted<S>(S);

impl<S, B> tower::Service<axum::http::Request<B>> for Counted<S>
where
    S: tower::Service<axum::http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let extensions = request.extensions();
        let in_flight = extensions
            .get::<Conn>()
            .or_else(|| {
                extensions
                    .get::<axum::extract::ConnectInfo<Conn>>()
                    .map(|c| &c.0)
            })
            .map(Conn::begin);
        let response = self.0.call(request);
        Box::pin(async move {
            let out = response.await;
            drop(in_flight);
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn gate(max: usize) -> Gate {
        let config = ConnectionsConfig {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..ConnectionsConfig::default()
        };
        Gate::new(
            max,
            config.idle_timeout,
            &config,
            ConnectionMetrics::default(),
        )
    }

    /// Whether a read on `io` fails with the timeout by `after` from now (the
    /// clock is paused: time moves only when the runtime is idle).
    async fn times_out(io: &mut Guarded<tokio::io::DuplexStream>, after: Duration) -> bool {
        let mut buf = [0u8; 8];
        match tokio::time::timeout(after, io.read(&mut buf)).await {
            Ok(Err(e)) => e.kind() == io::ErrorKind::TimedOut,
            _ => false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_cap_counts_open_connections() {
        let g = gate(2);
        let (a, _a) = tokio::io::duplex(8);
        let (b, _b) = tokio::io::duplex(8);
        let (c, _c) = tokio::io::duplex(8);
        let first = g.admit(a).unwrap();
        let _second = g.admit(b).unwrap();
        assert!(g.admit(c).is_none());
        assert_eq!((g.metrics.open.get(), g.metrics.refused.get()), (2, 1));
        drop(first);
        let (d, _d) = tokio::io::duplex(8);
        assert!(g.admit(d).is_some(), "a closed connection frees its place");
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_requests_not_bytes() {
        let g = gate(10);
        // Bytes but no request: closed at the header-read timeout, not before.
        use tokio::io::AsyncWriteExt;
        let (io, mut peer) = tokio::io::duplex(64);
        let mut trickle = g.admit(io).unwrap();
        assert!(!times_out(&mut trickle, Duration::from_secs(5)).await);
        peer.write_all(b"P").await.unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(trickle.read(&mut byte).await.unwrap(), 1);
        assert!(!times_out(&mut trickle, Duration::from_secs(4)).await);
        assert!(times_out(&mut trickle, Duration::from_secs(2)).await);
        assert_eq!(g.metrics.header_read_closed.get(), 1);

        // A request in flight holds the connection past every timeout.
        let (io, _peer) = tokio::io::duplex(64);
        let mut busy = g.admit(io).unwrap();
        let request = busy.conn().begin();
        assert!(!times_out(&mut busy, Duration::from_secs(600)).await);
        // Once it ends, the idle timeout runs from then.
        drop(request);
        assert!(!times_out(&mut busy, Duration::from_secs(59)).await);
        assert!(times_out(&mut busy, Duration::from_secs(2)).await);
        assert_eq!(g.metrics.idle_closed.get(), 1);
        // It stays closed, and is counted once.
        assert!(times_out(&mut busy, Duration::from_secs(1)).await);
        assert_eq!(g.metrics.idle_closed.get(), 1);
    }

    #[test]
    fn defaults_validate_and_bounds_are_named() {
        let c = ConnectionsConfig::default();
        assert!(c.validate().is_ok());
        // Longer than Envoy's default upstream idle timeout (1 h).
        assert!(c.idle_timeout > Duration::from_secs(3600));
        let zero = ConnectionsConfig {
            max_grpc: 0,
            ..c.clone()
        };
        assert!(
            zero.validate()
                .unwrap_err()
                .contains("connections.max_grpc")
        );
        let instant = ConnectionsConfig {
            idle_timeout: Duration::ZERO,
            ..c
        };
        assert!(
            instant
                .validate()
                .unwrap_err()
                .contains("connections.idle_timeout")
        );
    }
}
