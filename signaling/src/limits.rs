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
    type Stream = LimitedStream;
    type Service = S;
    type Future = Ready<io::Result<(LimitedStream, S)>>;

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
                Ok(LimitedStream {
                    inner: stream,
                    _slot: slot,
                    first_byte: Some(Box::pin(tokio::time::sleep(self.first_byte_timeout))),
                })
            });
        // Refused: the stream is dropped here, which closes it.
        std::future::ready(admitted.map(|stream| (stream, service)))
    }
}

/// A TCP stream holding its connection's place, closed if its first byte is late.
pub struct LimitedStream {
    inner: TcpStream,
    _slot: ConnectionSlot,
    /// Until the first byte arrives.
    first_byte: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        match read {
            Poll::Ready(Ok(())) if buf.filled().len() > before => self.first_byte = None,
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

impl AsyncWrite for LimitedStream {
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
