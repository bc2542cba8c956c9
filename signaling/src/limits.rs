//! Connection limits: how many connections one client address, and everyone together, may hold
//! open. Counted when a TCP connection is accepted (before TLS, before any byte is read) and
//! released when it closes, so a flood of idle or half-open sockets from one address cannot
//! exhaust the process's file descriptors; the header-read timeout (in `server.rs`) bounds how
//! long each may stay silent.
//!
//! Listed `trusted_proxies` are not limited per address: every client behind them shares their
//! address (the proxy limits its own clients).

use std::collections::HashMap;
use std::future::{Future, Ready};
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::client_origin::TrustedProxies;
use crate::metrics::Metrics;

/// The open connections, per client address and in all.
pub struct ConnectionLimits {
    per_address: usize,
    total: usize,
    trusted: TrustedProxies,
    open: Mutex<Open>,
    metrics: Metrics,
}

#[derive(Default)]
struct Open {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

impl ConnectionLimits {
    /// Limits of `per_address` connections per client address and `total` in all.
    pub fn new(
        per_address: usize,
        total: usize,
        trusted: TrustedProxies,
        metrics: Metrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            per_address,
            total,
            trusted,
            open: Mutex::new(Open::default()),
            metrics,
        })
    }

    /// Take a place for a connection from `address`; `None` when a limit is reached.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Option<ConnectionSlot> {
        let address = canonical(address);
        let limited = !self.trusted.trusts(address);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let from_address = open.by_address.get(&address).copied().unwrap_or(0);
        if open.total >= self.total || (limited && from_address >= self.per_address) {
            drop(open);
            let which = if limited && from_address >= self.per_address {
                "per_address"
            } else {
                "total"
            };
            self.metrics
                .connections_refused
                .with_label_values(&[which])
                .inc();
            return None;
        }
        open.total += 1;
        *open.by_address.entry(address).or_insert(0) += 1;
        self.metrics.open_connections.set(open.total as i64);
        Some(ConnectionSlot {
            limits: Arc::clone(self),
            address,
        })
    }

    /// Connections open now (all addresses).
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).total
    }

    fn release(&self, address: IpAddr) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_address.get_mut(&address) {
            *n -= 1;
            if *n == 0 {
                open.by_address.remove(&address);
            }
        }
        self.metrics.open_connections.set(open.total as i64);
    }
}

/// An IPv4 address seen as IPv4, whether or not it came mapped into IPv6.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

/// One connection's place; given back when dropped.
pub struct ConnectionSlot {
    limits: Arc<ConnectionLimits>,
    address: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.limits.release(self.address);
    }
}

/// An acceptor that admits a connection only within the limits (and sets `TCP_NODELAY`, as
/// signaling messages must go at once); one beyond them is closed at once. A connection that
/// sends nothing within `first_byte_timeout` is closed too (hyper's header-read timeout starts
/// only once it knows the protocol, which takes a byte).
#[derive(Clone)]
pub struct LimitedAcceptor {
    limits: Arc<ConnectionLimits>,
    first_byte_timeout: Duration,
}

impl LimitedAcceptor {
    /// Admit connections within `limits`.
    pub fn new(limits: Arc<ConnectionLimits>, first_byte_timeout: Duration) -> Self {
        Self {
            limits,
            first_byte_timeout,
        }
    }
}

impl<S> Accept<TcpStream, S> for LimitedAcceptor {
    type Stream = GuardedStream<TcpStream>;
    type Service = S;
    type Future = Ready<io::Result<(GuardedStream<TcpStream>, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let admitted = stream
            .peer_addr()
            .and_then(|peer| {
                self.limits.admit(peer.ip()).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::ConnectionRefused, "connection limit")
                })
            })
            .and_then(|slot| {
                stream.set_nodelay(true)?;
                Ok(GuardedStream {
                    inner: stream,
                    _slot: Some(slot),
                    first_byte: Some(Box::pin(tokio::time::sleep(self.first_byte_timeout))),
                    preface: None,
                })
            });
        // Refused: the stream is dropped here, which closes it.
        std::future::ready(admitted.map(|stream| (stream, service)))
    }
}

/// A connection with what guards it. Under TLS ([`LimitedAcceptor`]): its place within the
/// limits, and closed if its first byte is late. Above TLS ([`Http1Only`]): closed if it begins
/// with the HTTP/2 preface. Reading fails with the reason; hyper then closes the connection.
pub struct GuardedStream<S> {
    inner: S,
    _slot: Option<ConnectionSlot>,
    /// Until the first byte arrives.
    first_byte: Option<Pin<Box<tokio::time::Sleep>>>,
    preface: Option<PrefaceWatch>,
}

/// The start of the HTTP/2 connection preface (RFC 9113 §3.4): no HTTP/1.1 request begins so.
/// The service speaks HTTP/1.1 alone, because HTTP/2 is under no header-read timeout (a
/// stream's header block may never end). hyper accepts HTTP/2 with prior knowledge on a
/// connection that may upgrade to a WebSocket, in the clear and inside TLS whatever ALPN chose,
/// so the refusal is here: [`Http1Only`].
const HTTP2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

/// Watches a connection's first bytes, however they are split, for [`HTTP2_PREFACE_START`].
#[derive(Debug, Clone, Copy)]
struct PrefaceWatch {
    /// Bytes of the preface matched so far; `None` once the connection began otherwise.
    matched: Option<usize>,
}

impl Default for PrefaceWatch {
    fn default() -> Self {
        Self { matched: Some(0) }
    }
}

impl PrefaceWatch {
    /// Whether `read` (the connection's next bytes) completes the preface's start.
    fn completes(&mut self, read: &[u8]) -> bool {
        let Some(matched) = self.matched else {
            return false;
        };
        let wanted = &HTTP2_PREFACE_START[matched..];
        let n = read.len().min(wanted.len());
        if read[..n] != wanted[..n] {
            self.matched = None;
            return false;
        }
        self.matched = Some(matched + n);
        matched + n == HTTP2_PREFACE_START.len()
    }
}

/// An acceptor that closes a connection as soon as its first bytes (after TLS, when the inner
/// acceptor speaks TLS) are the HTTP/2 preface: see [`HTTP2_PREFACE_START`].
#[derive(Clone)]
pub struct Http1Only<A> {
    inner: A,
}

impl<A> Http1Only<A> {
    /// Refuse HTTP/2 on what `inner` accepts.
    pub fn new(inner: A) -> Self {
        Self { inner }
    }
}

impl<A, I, S> Accept<I, S> for Http1Only<A>
where
    A: Accept<I, S>,
    A::Future: Send + 'static,
    A::Stream: AsyncRead + AsyncWrite + Unpin,
{
    type Stream = GuardedStream<A::Stream>;
    type Service = A::Service;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let accepted = self.inner.accept(stream, service);
        Box::pin(async move {
            let (stream, service) = accepted.await?;
            Ok((
                GuardedStream {
                    inner: stream,
                    _slot: None,
                    first_byte: None,
                    preface: Some(PrefaceWatch::default()),
                },
                service,
            ))
        })
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GuardedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        match read {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                self.first_byte = None;
                if let Some(watch) = self.preface.as_mut()
                    && watch.completes(&buf.filled()[before..])
                {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "HTTP/2 with prior knowledge is not served (HTTP/1.1 only)",
                    )));
                }
            }
            Poll::Pending => {
                if let Some(deadline) = self.first_byte.as_mut()
                    && deadline.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request within the header-read timeout",
                    )));
                }
            }
            _ => {}
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GuardedStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_address: usize, total: usize, trusted: &[&str]) -> Arc<ConnectionLimits> {
        let trusted: Vec<String> = trusted.iter().map(|s| s.to_string()).collect();
        ConnectionLimits::new(
            per_address,
            total,
            TrustedProxies::parse(&trusted).unwrap(),
            Metrics::new(),
        )
    }

    #[test]
    fn the_http2_preface_is_seen_however_it_is_split_and_nothing_else_is() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let mut whole = PrefaceWatch::default();
        assert!(whole.completes(preface));
        let mut bytewise = PrefaceWatch::default();
        let seen: Vec<bool> = preface[..14]
            .iter()
            .map(|b| bytewise.completes(&[*b]))
            .collect();
        assert_eq!(seen.iter().filter(|s| **s).count(), 1);
        assert!(seen[13], "the 14th byte completes it");
        let mut split = PrefaceWatch::default();
        assert!(!split.completes(b"PR") && split.completes(b"I * HTTP/2.0\r\n"));
        for request in [&b"GET / HTTP/1.1\r\n"[..], b"PRIX", b"\x16\x03\x01"] {
            let mut watch = PrefaceWatch::default();
            assert!(!watch.completes(request));
            assert!(
                !watch.completes(b"I * HTTP/2.0"),
                "{request:?} then the rest"
            );
        }
    }

    #[test]
    fn each_address_gets_its_share_and_places_come_back() {
        let limits = limits(2, 3, &[]);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = limits.admit(a).unwrap();
        let _second = limits.admit(a).unwrap();
        assert!(limits.admit(a).is_none(), "a third from one address");
        let _third = limits.admit(b).unwrap();
        assert!(limits.admit(b).is_none(), "a fourth in all");
        drop(first);
        let again = limits.admit(b);
        assert!(again.is_some(), "a place came back");
        assert_eq!(limits.open(), 3);
    }

    #[test]
    fn a_mapped_address_is_the_same_address_and_proxies_are_not_limited_per_address() {
        let limits = limits(1, 10, &["10.0.0.1"]);
        let _v4 = limits.admit("192.0.2.1".parse().unwrap()).unwrap();
        assert!(limits.admit("::ffff:192.0.2.1".parse().unwrap()).is_none());
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..5).map(|_| limits.admit(proxy).unwrap()).collect();
        assert_eq!(held.len(), 5);
    }
}
