//! The network side of a session: the UDP sockets host candidates are gathered on,
//! server-reflexive addresses from STUN, TURN allocations (over UDP, TCP or TLS: see
//! [`crate::relay`]), and sending each datagram from the address its candidate names.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use consult_proto::api::IceServers;
use consult_proto::ice_url::{IceUrl, Scheme};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::call::LocalCandidates;
use crate::relay::{Relay, TlsRoots};

/// A datagram that arrived on one of our addresses.
pub(crate) struct Datagram {
    /// The local address (host or relayed) it arrived on.
    pub local: SocketAddr,
    /// Who sent it.
    pub source: SocketAddr,
    /// When it arrived.
    pub at: Instant,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// Why gathering candidates failed.
#[derive(Debug, thiserror::Error)]
pub enum GatherError {
    /// A socket could not be bound.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Relay-only, and no TURN server gave an allocation: each server and why.
    #[error("relay only, but no TURN server could be used: {}", if .0.is_empty() { "none is configured".to_owned() } else { .0.join("; ") })]
    NoRelay(Vec<String>),
}

/// The session's sockets and relays; their reader tasks end when this is dropped.
pub(crate) struct Network {
    /// Bound UDP sockets, by local address.
    pub sockets: Vec<(SocketAddr, Arc<UdpSocket>)>,
    relays: Vec<Relay>,
    /// Server-reflexive addresses: (mapped, local base).
    reflexive: Vec<(SocketAddr, SocketAddr)>,
    _readers: AbortOnDrop,
}

impl Network {
    /// Bind a socket on each of `ips`; with the service's ICE servers, allocate on its TURN
    /// servers (all at once, each within [`crate::relay::ALLOCATION_TIMEOUT`]; their relayed
    /// candidates in the order the service lists them) and ask its STUN servers for our mapped
    /// address (not when relay-only). Every datagram received goes to `datagrams`. A TURN or STUN
    /// server that fails is logged and skipped: the next ones, or host candidates, may still do.
    ///
    /// # Errors
    /// A socket that cannot be bound; relay-only with no relay allocated (every server's error
    /// is in [`GatherError::NoRelay`]).
    pub async fn gather(
        ips: &[IpAddr],
        ice: Option<&IceServers>,
        relay_only: bool,
        tls: &TlsRoots,
        datagrams: mpsc::Sender<Datagram>,
    ) -> Result<Self, GatherError> {
        let mut sockets = Vec::new();
        let mut readers = Vec::new();
        for ip in ips {
            let socket = Arc::new(UdpSocket::bind(SocketAddr::new(*ip, 0)).await?);
            let local = socket.local_addr()?;
            readers.push(tokio::spawn(read_socket(
                socket.clone(),
                local,
                datagrams.clone(),
            )));
            sockets.push((local, socket));
        }
        let mut allocations = Vec::new();
        let mut stun = Vec::new();
        let mut failures = Vec::new();
        for server in ice.iter().flat_map(|ice| &ice.ice_servers) {
            for url in &server.urls {
                let parsed = match url.parse::<IceUrl>() {
                    Ok(parsed) => parsed,
                    Err(e) => {
                        tracing::warn!(url = %url, error = %e, "skipped an ICE server URL");
                        failures.push(format!("{url}: {e}"));
                        continue;
                    }
                };
                match (parsed.scheme, &server.username, &server.credential) {
                    (Scheme::Turn | Scheme::Turns, Some(username), Some(password)) => {
                        let (username, password, tls, tx) = (
                            username.clone(),
                            password.clone(),
                            tls.clone(),
                            datagrams.clone(),
                        );
                        allocations.push(tokio::spawn(async move {
                            let relay =
                                Relay::allocate(&parsed, &username, &password, &tls, tx).await;
                            (parsed, relay)
                        }));
                    }
                    (Scheme::Turn | Scheme::Turns, _, _) => {
                        failures.push(format!("{url}: no credentials"));
                    }
                    (Scheme::Stun, _, _) => stun.push(parsed),
                }
            }
        }
        // STUN meanwhile (the allocations run on their own).
        let mut reflexive = Vec::new();
        if !relay_only && let Some((local, socket)) = sockets.first() {
            for url in &stun {
                match stun_binding(socket, &url.address()).await {
                    Ok(mapped) if mapped != *local => reflexive.push((mapped, *local)),
                    Ok(_) => {}
                    Err(e) => tracing::debug!(server = %url, error = %e, "STUN binding failed"),
                }
            }
        }
        let mut relays = Vec::new();
        for allocation in allocations {
            match allocation.await {
                Ok((url, Ok(relay))) => {
                    tracing::info!(server = %url, relayed = %relay.relayed, "TURN allocation");
                    relays.push(relay);
                }
                Ok((url, Err(e))) => {
                    tracing::warn!(server = %url, error = %e, "TURN allocation failed");
                    failures.push(format!("{url}: {e}"));
                }
                Err(e) => failures.push(format!("a TURN allocation task ended: {e}")),
            }
        }
        if relay_only && relays.is_empty() {
            return Err(GatherError::NoRelay(failures));
        }
        Ok(Self {
            sockets,
            relays,
            reflexive,
            _readers: AbortOnDrop(readers),
        })
    }

    /// The candidates a connection offers from here.
    pub fn candidates(&self, relay_only: bool) -> LocalCandidates {
        LocalCandidates {
            host: self.sockets.iter().map(|(a, _)| *a).collect(),
            reflexive: self.reflexive.clone(),
            relayed: self.relays.iter().map(|r| (r.relayed, r.local)).collect(),
            relay_only,
        }
    }

    /// Send one datagram from a local candidate address (a socket, or a TURN allocation).
    pub fn transmit(&self, transmit: consult_peer::Transmit) {
        if let Some(relay) = self.relays.iter().find(|r| r.relayed == transmit.source) {
            relay.send(transmit.contents, transmit.destination);
        } else if let Some((_, socket)) = self
            .sockets
            .iter()
            .find(|(addr, _)| *addr == transmit.source)
            && let Err(e) = socket.try_send_to(&transmit.contents, transmit.destination)
        {
            tracing::debug!(error = %e, "udp send failed");
        }
    }
}

pub(crate) fn default_ips() -> Vec<IpAddr> {
    let mut ips = vec![IpAddr::from([127, 0, 0, 1])];
    if let Ok(interfaces) = if_addrs::get_if_addrs() {
        ips.extend(
            interfaces
                .into_iter()
                .filter(|i| !i.is_loopback() && i.ip().is_ipv4())
                .map(|i| i.ip()),
        );
    }
    ips
}

async fn read_socket(socket: Arc<UdpSocket>, local: SocketAddr, tx: mpsc::Sender<Datagram>) {
    let mut buffer = vec![0u8; 2048];
    loop {
        match socket.recv_from(&mut buffer).await {
            Ok((n, source)) => {
                let datagram = Datagram {
                    local,
                    source,
                    at: Instant::now(),
                    bytes: buffer[..n].to_vec(),
                };
                if tx.send(datagram).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // ICMP port unreachable and the like surface here on some systems; keep reading.
                tracing::debug!(error = %e, "udp receive error");
                if tx.is_closed() {
                    return;
                }
            }
        }
    }
}

/// Tasks that end when their owner is dropped.
#[derive(Default)]
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Ask a STUN server for our mapped address, from the socket the candidates use.
async fn stun_binding(socket: &UdpSocket, server: &str) -> std::io::Result<SocketAddr> {
    // A separate socket would see a different mapping; instead, use a throwaway TURN client on a
    // temporary socket bound to the same IP, which is what matters for a NAT's address mapping.
    let local = socket.local_addr()?;
    let probe = UdpSocket::bind(SocketAddr::new(local.ip(), 0)).await?;
    let client = turn::client::Client::new(turn::client::ClientConfig {
        stun_serv_addr: server.to_owned(),
        turn_serv_addr: String::new(),
        username: String::new(),
        password: String::new(),
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(probe),
        vnet: None,
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    client
        .listen()
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mapped = tokio::time::timeout(Duration::from_secs(3), client.send_binding_request())
        .await
        .map_err(|_| std::io::Error::other("STUN timeout"))?
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let _ = client.close().await;
    Ok(SocketAddr::new(mapped.ip(), local.port()))
}
