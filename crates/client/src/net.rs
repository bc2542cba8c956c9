//! The UDP side of a session: the sockets host candidates are gathered on, server-reflexive
//! addresses from STUN, TURN allocations (UDP), and sending each datagram from the address its
//! candidate names.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use consult_proto::api::IceServers;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::call::LocalCandidates;

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
    /// servers and ask its STUN servers for our mapped address (not when relay-only). Every
    /// datagram received goes to `datagrams`. A TURN or STUN server that fails is logged and
    /// skipped: host candidates may still do.
    pub async fn gather(
        ips: &[IpAddr],
        ice: Option<&IceServers>,
        relay_only: bool,
        datagrams: mpsc::Sender<Datagram>,
    ) -> std::io::Result<Self> {
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
        let mut relays = Vec::new();
        let mut reflexive = Vec::new();
        for server in ice.iter().flat_map(|ice| &ice.ice_servers) {
            for url in &server.urls {
                match (turn_address(url), &server.username, &server.credential) {
                    (Some(address), Some(username), Some(password)) => {
                        match Relay::allocate(&address, username, password, datagrams.clone()).await
                        {
                            Ok(relay) => relays.push(relay),
                            Err(e) => {
                                tracing::warn!(error = %e, server = %address, "TURN allocation failed")
                            }
                        }
                    }
                    _ => {
                        let (Some(address), false) = (stun_address(url), relay_only) else {
                            continue;
                        };
                        let Some((local, socket)) = sockets.first() else {
                            continue;
                        };
                        match stun_binding(socket, &address).await {
                            Ok(mapped) if mapped != *local => reflexive.push((mapped, *local)),
                            Ok(_) => {}
                            Err(e) => tracing::debug!(error = %e, "STUN binding failed"),
                        }
                    }
                }
            }
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

/// `host:port` of a `turn:` URL over UDP (`turns:` and TCP are not supported by this client).
fn turn_address(url: &str) -> Option<String> {
    let rest = url.strip_prefix("turn:")?;
    let (address, query) = rest.split_once('?').unwrap_or((rest, ""));
    if !query.is_empty() && query != "transport=udp" {
        return None;
    }
    Some(if address.contains(':') {
        address.to_owned()
    } else {
        format!("{address}:3478")
    })
}

/// `host:port` of a `stun:` URL.
fn stun_address(url: &str) -> Option<String> {
    let address = url.strip_prefix("stun:")?;
    Some(if address.contains(':') {
        address.to_owned()
    } else {
        format!("{address}:3478")
    })
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

/// A TURN allocation: the relayed address peers send to, and a task that sends through it.
struct Relay {
    relayed: SocketAddr,
    local: SocketAddr,
    outgoing: mpsc::UnboundedSender<(Vec<u8>, SocketAddr)>,
    _client: Arc<turn::client::Client>,
}

impl Relay {
    /// Allocate on `server` with TURN REST credentials; received datagrams go to `datagrams`.
    async fn allocate(
        server: &str,
        username: &str,
        password: &str,
        datagrams: mpsc::Sender<Datagram>,
    ) -> std::io::Result<Self> {
        use webrtc_util::Conn;
        let io = |e: String| std::io::Error::other(e);
        let server_addr: SocketAddr = tokio::net::lookup_host(server)
            .await?
            .next()
            .ok_or_else(|| io(format!("cannot resolve {server}")))?;
        let bind_ip: IpAddr = if server_addr.ip().is_loopback() {
            server_addr.ip()
        } else {
            IpAddr::from([0, 0, 0, 0])
        };
        let socket = UdpSocket::bind(SocketAddr::new(bind_ip, 0)).await?;
        let local = socket.local_addr()?;
        let client = turn::client::Client::new(turn::client::ClientConfig {
            stun_serv_addr: server_addr.to_string(),
            turn_serv_addr: server_addr.to_string(),
            username: username.to_owned(),
            password: password.to_owned(),
            realm: String::new(),
            software: "consult-client".into(),
            rto_in_ms: 0,
            conn: Arc::new(socket),
            vnet: None,
        })
        .await
        .map_err(|e| io(e.to_string()))?;
        client.listen().await.map_err(|e| io(e.to_string()))?;
        let relay_conn = tokio::time::timeout(Duration::from_secs(5), client.allocate())
            .await
            .map_err(|_| io(format!("TURN allocation on {server} timed out")))?
            .map_err(|e| io(e.to_string()))?;
        let relayed = relay_conn.local_addr().map_err(|e| io(e.to_string()))?;
        let relay_conn: Arc<dyn Conn + Send + Sync> = Arc::new(relay_conn);
        let reader = relay_conn.clone();
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 2048];
            while let Ok((n, source)) = reader.recv_from(&mut buffer).await {
                let datagram = Datagram {
                    local: relayed,
                    source,
                    at: Instant::now(),
                    bytes: buffer[..n].to_vec(),
                };
                if datagrams.send(datagram).await.is_err() {
                    return;
                }
            }
        });
        // Sending through TURN may wait for a permission round trip: a task keeps the order and
        // keeps the session loop free.
        let (outgoing, mut queue) = mpsc::unbounded_channel::<(Vec<u8>, SocketAddr)>();
        tokio::spawn(async move {
            while let Some((bytes, destination)) = queue.recv().await {
                if let Err(e) = relay_conn.send_to(&bytes, destination).await {
                    tracing::debug!(error = %e, "TURN send failed");
                }
            }
        });
        Ok(Self {
            relayed,
            local,
            outgoing,
            _client: Arc::new(client),
        })
    }

    fn send(&self, bytes: Vec<u8>, destination: SocketAddr) {
        let _ = self.outgoing.send((bytes, destination));
    }
}
