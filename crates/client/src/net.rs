//! The network side of a session: the UDP sockets host candidates are gathered on,
//! server-reflexive addresses from STUN, TURN allocations (over UDP, TCP or TLS: see
//! [`crate::relay`]), and sending each datagram from the address its candidate names.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use consult_proto::api::IceServers;
use consult_proto::ice_url::{IceUrl, Scheme};
use consult_udp::SendBatch;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::call::LocalCandidates;
use crate::relay::{Relay, RelayError, TlsRoots};

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

/// What a background gathering task found: a relay allocated (or why not), or our mapped
/// address from a STUN server. Tagged with the generation of the gathering it belongs to, so that
/// what a gathering superseded by a network change finds is dropped.
pub(crate) struct Gathered {
    generation: u64,
    found: Found,
}

enum Found {
    Relay {
        /// Its place in the service's list (candidates keep that order).
        order: usize,
        url: IceUrl,
        result: Result<Relay, RelayError>,
    },
    Reflexive(Option<(SocketAddr, SocketAddr)>),
    /// The connection to a TCP or TLS relay ended: its allocation is gone with it.
    RelayLost {
        relayed: SocketAddr,
    },
}

/// A bound UDP socket, its reader task, and the datagrams gathered for its next send.
struct HostSocket {
    addr: SocketAddr,
    socket: Arc<UdpSocket>,
    /// Batched reads and sends (GRO, GSO) on it.
    state: Arc<quinn_udp::UdpSocketState>,
    outgoing: SendBatch,
    _reader: AbortOnDrop,
}

/// Datagrams gathered for one socket before they are sent anyway, even if the peer is still
/// talking (a burst of a large frame goes out in pieces, not all at the end).
const SEND_BATCH: usize = 64;

/// Most datagrams held for a socket whose send buffer stays full.
const HELD_AT_MOST: usize = 1024;

/// The session's sockets and relays. Host sockets are bound at once; relays and STUN answers
/// come from background tasks ([`Gathered`], fed back with [`Network::absorb`]), so that a slow
/// or unreachable server delays nothing. Their tasks end when this is dropped.
pub(crate) struct Network {
    ice: Option<IceServers>,
    relay_only: bool,
    tls: TlsRoots,
    datagrams: mpsc::Sender<Datagram>,
    sockets: Vec<HostSocket>,
    relays: Vec<(usize, Relay)>,
    /// Relays of the gathering before a renewal: still used until the new gathering has a relay
    /// (or is over), so that renewing credentials never leaves a call without one.
    retiring: Vec<(usize, Relay)>,
    /// Server-reflexive addresses: (mapped, local base).
    reflexive: Vec<(SocketAddr, SocketAddr)>,
    gathered: mpsc::Sender<Gathered>,
    generation: u64,
    /// Relay allocations of this generation still under way.
    relays_pending: usize,
    /// Why each relay of this generation failed.
    failures: Vec<String>,
    tasks: AbortOnDrop,
}

impl Network {
    /// Bind a socket on each of `ips` and start gathering in the background: allocations on the
    /// service's TURN servers (all at once, each within [`crate::relay::ALLOCATION_TIMEOUT`]) and
    /// our mapped address from its STUN servers (not when relay-only). Every datagram received
    /// goes to `datagrams`; what the gathering finds comes out of the returned receiver, for
    /// [`Network::absorb`].
    ///
    /// # Errors
    /// A socket that cannot be bound.
    pub async fn new(
        ips: &[IpAddr],
        ice: Option<IceServers>,
        relay_only: bool,
        tls: TlsRoots,
        datagrams: mpsc::Sender<Datagram>,
    ) -> Result<(Self, mpsc::Receiver<Gathered>), GatherError> {
        let (gathered, found) = mpsc::channel(64);
        let mut network = Self {
            ice,
            relay_only,
            tls,
            datagrams,
            sockets: Vec::new(),
            relays: Vec::new(),
            retiring: Vec::new(),
            reflexive: Vec::new(),
            gathered,
            generation: 0,
            relays_pending: 0,
            failures: Vec::new(),
            tasks: AbortOnDrop::default(),
        };
        network.bind(ips, true).await?;
        network.regather();
        Ok((network, found))
    }

    /// Bind a socket on each of `ips` not bound yet; drop those on addresses no longer in it.
    /// Returns (whether an address was added, whether one was lost). `strict`: a socket that
    /// cannot be bound is an error (at the start); otherwise it is skipped with a log line (an
    /// address can vanish between reading the interfaces and binding, during the very change
    /// being followed).
    async fn bind(&mut self, ips: &[IpAddr], strict: bool) -> Result<(bool, bool), GatherError> {
        let before = self.sockets.len();
        self.sockets.retain(|s| ips.contains(&s.addr.ip()));
        let lost = self.sockets.len() != before;
        let mut added = false;
        for ip in ips {
            if self.sockets.iter().any(|s| s.addr.ip() == *ip) {
                continue;
            }
            let bound = match UdpSocket::bind(SocketAddr::new(*ip, 0)).await {
                Ok(socket) => socket.local_addr().map(|addr| (Arc::new(socket), addr)),
                Err(e) => Err(e),
            };
            let bound = bound.and_then(|(socket, addr)| {
                let state = quinn_udp::UdpSocketState::new((&*socket).into())?;
                // Larger buffers than the kernel's default, which drops datagrams at
                // data-channel rates (the kernel may grant less; that is no error).
                if let Err(e) = consult_udp::enlarge_buffers(&state, &*socket) {
                    tracing::debug!(error = %e, "could not enlarge the socket's buffers");
                }
                Ok((socket, Arc::new(state), addr))
            });
            let (socket, state, addr) = match bound {
                Ok(bound) => bound,
                Err(e) if strict => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(%ip, error = %e, "could not bind a socket on a new address; skipped");
                    continue;
                }
            };
            let reader = tokio::spawn(read_socket(
                socket.clone(),
                state.clone(),
                addr,
                self.datagrams.clone(),
            ));
            self.sockets.push(HostSocket {
                addr,
                socket,
                state,
                outgoing: SendBatch::default(),
                _reader: AbortOnDrop(vec![reader]),
            });
            added = true;
        }
        Ok((added, lost))
    }

    /// Start a new gathering: every relay and mapped address found so far is dropped, and the
    /// servers are asked again.
    pub fn regather(&mut self) {
        self.generation += 1;
        self.relays.clear();
        self.retiring.clear();
        self.reflexive.clear();
        self.failures.clear();
        self.relays_pending = 0;
        let mut tasks = Vec::new();
        let servers = self.ice.iter().flat_map(|ice| ice.ice_servers.clone());
        let mut order = 0;
        for server in servers {
            for url in &server.urls {
                let parsed = match url.parse::<IceUrl>() {
                    Ok(parsed) => parsed,
                    Err(e) => {
                        tracing::warn!(url = %url, error = %e, "skipped an ICE server URL");
                        self.failures.push(format!("{url}: {e}"));
                        continue;
                    }
                };
                let (generation, tx) = (self.generation, self.gathered.clone());
                match (parsed.scheme, &server.username, &server.credential) {
                    (Scheme::Turn | Scheme::Turns, Some(username), Some(password)) => {
                        let (username, password, tls) =
                            (username.clone(), password.clone(), self.tls.clone());
                        let datagrams = self.datagrams.clone();
                        self.relays_pending += 1;
                        let lost = tx.clone();
                        tasks.push(tokio::spawn(async move {
                            let on_lost = move |relayed| {
                                let found = Found::RelayLost { relayed };
                                let _ = lost.try_send(Gathered { generation, found });
                            };
                            let result = Relay::allocate(
                                &parsed, &username, &password, &tls, datagrams, on_lost,
                            )
                            .await;
                            let found = Found::Relay {
                                order,
                                url: parsed,
                                result,
                            };
                            let _ = tx.send(Gathered { generation, found }).await;
                        }));
                        order += 1;
                    }
                    (Scheme::Turn | Scheme::Turns, _, _) => {
                        self.failures.push(format!("{url}: no credentials"));
                    }
                    (Scheme::Stun, _, _) => {
                        let Some(host) = self.sockets.iter().find(|s| !s.addr.ip().is_loopback())
                        else {
                            continue;
                        };
                        if self.relay_only {
                            continue;
                        }
                        let (socket, local) = (host.socket.clone(), host.addr);
                        tasks.push(tokio::spawn(async move {
                            let mapped = match stun_binding(&socket, &parsed.address()).await {
                                Ok(mapped) if mapped != local => Some((mapped, local)),
                                Ok(_) => None,
                                Err(e) => {
                                    tracing::debug!(server = %parsed, error = %e, "STUN binding failed");
                                    None
                                }
                            };
                            let found = Found::Reflexive(mapped);
                            let _ = tx.send(Gathered { generation, found }).await;
                        }));
                    }
                }
            }
        }
        // The tasks of the gathering before are no longer wanted.
        self.tasks = AbortOnDrop(tasks);
    }

    /// New ICE servers (fresh TURN credentials, before the old ones expire): allocate on them
    /// again, keeping the current relays until the new allocations are in (make before break).
    pub fn renew(&mut self, ice: IceServers) {
        let current = std::mem::take(&mut self.relays);
        self.ice = Some(ice);
        self.regather();
        self.retiring = current;
    }

    /// Take in what a gathering task found. Whether our candidates changed.
    pub fn absorb(&mut self, gathered: Gathered) -> bool {
        if gathered.generation != self.generation {
            return false;
        }
        match gathered.found {
            Found::Relay { order, url, result } => {
                self.relays_pending = self.relays_pending.saturating_sub(1);
                let changed = match result {
                    Ok(relay) => {
                        tracing::info!(server = %url, relayed = %relay.relayed, "TURN allocation");
                        let at = self.relays.partition_point(|(o, _)| *o < order);
                        self.relays.insert(at, (order, relay));
                        true
                    }
                    Err(e) => {
                        tracing::warn!(server = %url, error = %e, "TURN allocation failed");
                        self.failures.push(format!("{url}: {e}"));
                        false
                    }
                };
                // The renewed gathering has a relay (or is over): the old ones go.
                let retire = !self.retiring.is_empty()
                    && (!self.relays.is_empty() || self.relays_pending == 0);
                if retire {
                    self.retiring.clear();
                }
                changed || retire
            }
            Found::Reflexive(Some(mapped)) => {
                self.reflexive.push(mapped);
                true
            }
            Found::Reflexive(None) => false,
            Found::RelayLost { relayed } => {
                if !self.relays.iter().any(|(_, r)| r.relayed == relayed) {
                    return false;
                }
                tracing::warn!(%relayed, "the connection to a TURN server ended: gathering again");
                self.regather();
                true
            }
        }
    }

    /// Relay-only, every allocation of this gathering over, and none succeeded: why, per server.
    pub fn no_relay(&self) -> Option<GatherError> {
        (self.relay_only && self.relays.is_empty() && self.relays_pending == 0)
            .then(|| GatherError::NoRelay(self.failures.clone()))
    }

    /// Whether a relay is allocated.
    pub fn has_relay(&self) -> bool {
        !self.relays.is_empty() || !self.retiring.is_empty()
    }

    /// Whether any TURN server is configured (then credentials are worth renewing).
    pub fn uses_turn(&self) -> bool {
        self.ice
            .iter()
            .flat_map(|ice| &ice.ice_servers)
            .any(|server| {
                server
                    .urls
                    .iter()
                    .any(|url| url.parse::<IceUrl>().is_ok_and(|u| u.is_turn()))
            })
    }

    /// How long the current TURN credentials stay valid, from when they were fetched.
    pub fn credential_ttl(&self) -> Option<Duration> {
        self.ice
            .as_ref()
            .map(|ice| Duration::from_secs(ice.ttl_secs))
            .filter(|ttl| !ttl.is_zero())
    }

    /// Our interfaces now have `ips`: bind sockets on new addresses and drop those on addresses
    /// gone. A new address only adds host candidates; when one is lost, relays and mapped
    /// addresses are gathered again (they are reached from our address, and the allocations made
    /// from the lost one are gone with it). Whether anything changed.
    pub async fn refresh(&mut self, ips: &[IpAddr]) -> bool {
        let Ok((added, lost)) = self.bind(ips, false).await else {
            return false;
        };
        if lost {
            self.regather();
        }
        added || lost
    }

    /// The local addresses of the host sockets.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets.iter().map(|s| s.addr).collect()
    }

    /// The candidates a connection offers from here.
    pub fn candidates(&self) -> LocalCandidates {
        LocalCandidates {
            host: self.local_addrs(),
            reflexive: self.reflexive.clone(),
            relayed: self
                .relays
                .iter()
                .chain(&self.retiring)
                .map(|(_, r)| (r.relayed, r.local))
                .collect(),
            relay_only: self.relay_only,
        }
    }

    /// Send one datagram from a local candidate address (a socket, or a TURN allocation). From
    /// a socket it is gathered with the others for one batched send, at [`Network::flush`] (or
    /// once [`SEND_BATCH`] wait).
    pub fn transmit(&mut self, transmit: consult_peer::Transmit) {
        if let Some((_, relay)) = self
            .relays
            .iter()
            .chain(&self.retiring)
            .find(|(_, r)| r.relayed == transmit.source)
        {
            relay.send(transmit.contents, transmit.destination);
        } else if let Some(host) = self.sockets.iter_mut().find(|s| s.addr == transmit.source) {
            host.outgoing.push(transmit.destination, &transmit.contents);
            if host.outgoing.len() >= SEND_BATCH {
                host.flush();
            }
        }
    }

    /// Send the datagrams gathered on every socket.
    pub fn flush(&mut self) {
        for host in &mut self.sockets {
            host.flush();
        }
    }
}

impl HostSocket {
    fn flush(&mut self) {
        if self.outgoing.is_empty() {
            return;
        }
        match self.outgoing.flush(&self.state, &*self.socket) {
            Ok(()) => {}
            // A full send buffer: what it did not take goes at the next flush, unless that much
            // has piled up (then it is lost, as a network would lose it).
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if self.outgoing.len() > HELD_AT_MOST {
                    tracing::debug!(held = self.outgoing.len(), "udp send buffer full; dropped");
                    self.outgoing.clear();
                }
            }
            // A datagram the socket refused (an unreachable address): dropped, the rest went.
            Err(e) => tracing::debug!(error = %e, "udp send failed"),
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

/// Read every datagram that arrives on `socket` (in batches: `recvmmsg`, GRO) and hand each to
/// `tx`, until `tx` is closed.
async fn read_socket(
    socket: Arc<UdpSocket>,
    state: Arc<quinn_udp::UdpSocketState>,
    local: SocketAddr,
    tx: mpsc::Sender<Datagram>,
) {
    let mut received = Vec::new();
    loop {
        // Only a runtime shutting down fails this.
        if socket.readable().await.is_err() {
            return;
        }
        let read = socket.try_io(tokio::io::Interest::READABLE, || {
            consult_udp::with_thread_slots(|slots| {
                slots.read(&state, &*socket, |source, bytes| {
                    received.push(Datagram {
                        local,
                        source,
                        at: Instant::now(),
                        bytes: bytes.to_vec(),
                    })
                })
            })
        });
        match read {
            Ok(_) => {
                for datagram in received.drain(..) {
                    if tx.send(datagram).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
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
    let asked = async {
        client
            .listen()
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        tokio::time::timeout(Duration::from_secs(3), client.send_binding_request())
            .await
            .map_err(|_| std::io::Error::other("STUN timeout"))?
            .map_err(|e| std::io::Error::other(e.to_string()))
    }
    .await;
    // Closed whatever happened: its read task would run for ever otherwise.
    let _ = client.close().await;
    Ok(SocketAddr::new(asked?.ip(), local.port()))
}
