//! TURN relays (RFC 8656) reached over UDP, TCP or TLS (RFC 6062 framing on a stream: STUN
//! messages and ChannelData, each padded to four bytes, back to back). The relay itself always
//! talks to the other peers over UDP; only our leg to the server changes, which is what lets a
//! call through a network that blocks UDP, or every port but 443.
//!
//! The TURN protocol is the `turn` crate's client; this module gives it a connection: a UDP
//! socket, or a TCP or TLS stream (rustls, with the Mozilla roots, the system's roots, and any
//! the application adds) framed into whole messages.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use consult_proto::ice_url::{IceUrl, Transport};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, Mutex};
use tokio_rustls::rustls;
use webrtc_util::Conn;

use crate::net::Datagram;

/// How long reaching one relay may take, from resolving its name to an allocation.
pub const ALLOCATION_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a relay could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The host name did not resolve.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// The TCP connection (or the UDP socket) failed.
    #[error("cannot reach {address}: {source}")]
    Connect {
        /// `host:port`.
        address: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// The TLS handshake failed: most often a certificate that is not trusted or not for this
    /// host.
    #[error("TLS with {host} failed: {reason}")]
    Tls {
        /// The host the certificate had to be for.
        host: String,
        /// What rustls said (for example "invalid peer certificate: UnknownIssuer").
        reason: String,
    },
    /// The server refused or did not answer the allocation.
    #[error("allocation on {address} failed: {reason}")]
    Allocation {
        /// `host:port`.
        address: String,
        /// What the TURN client said.
        reason: String,
    },
    /// Nothing within [`ALLOCATION_TIMEOUT`].
    #[error("no allocation on {0} within {ALLOCATION_TIMEOUT:?}")]
    Timeout(String),
}

/// Certificates a TLS relay may chain to: the Mozilla roots, the system's (which honours
/// `SSL_CERT_FILE` and `SSL_CERT_DIR`), and any added.
#[derive(Clone)]
pub struct TlsRoots(Arc<rustls::ClientConfig>);

impl TlsRoots {
    /// The Mozilla and system roots, plus the certificates in `extra_pem` (PEM, any number).
    ///
    /// # Errors
    /// A PEM block that does not parse, or a certificate rustls refuses as a root.
    pub fn new(extra_pem: Option<&[u8]>) -> Result<Self, rustls::Error> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        // An unreadable system store leaves the others.
        let system = rustls_native_certs::load_native_certs();
        for certificate in system.certs {
            let _ = roots.add(certificate);
        }
        if let Some(pem) = extra_pem {
            let mut added = 0;
            for certificate in CertificateDer::pem_slice_iter(pem) {
                let certificate =
                    certificate.map_err(|e| rustls::Error::General(format!("extra roots: {e}")))?;
                roots.add(certificate)?;
                added += 1;
            }
            if added == 0 {
                return Err(rustls::Error::General(
                    "extra roots: no certificate in the PEM".into(),
                ));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self(Arc::new(config)))
    }
}

impl std::fmt::Debug for TlsRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsRoots")
    }
}

/// A TURN allocation: the relayed address peers send to, and a task that sends through it.
pub(crate) struct Relay {
    /// The address on the relay that peers reach us at.
    pub relayed: SocketAddr,
    /// Our end of the connection to the relay.
    pub local: SocketAddr,
    outgoing: mpsc::Sender<(Vec<u8>, SocketAddr)>,
    relay_conn: Arc<dyn Conn + Send + Sync>,
    client: Arc<turn::client::Client>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Datagrams waiting to go through a relay; more are dropped (media copes with loss, not with
/// seconds of queue behind a stalled TCP connection).
const RELAY_QUEUE: usize = 2048;

impl Drop for Relay {
    /// The allocation is released (a Refresh with lifetime 0), the client stops and closes its
    /// connection, and the tasks end.
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        let (relay_conn, client) = (self.relay_conn.clone(), self.client.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = relay_conn.close().await;
                let _ = client.close().await;
            });
        }
    }
}

/// Closes a TURN client that did not become a [`Relay`] (a refused or timed-out allocation):
/// its read task would otherwise run for ever.
struct CloseOnDrop(Option<Arc<turn::client::Client>>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let (Some(client), Ok(runtime)) = (self.0.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(async move {
                let _ = client.close().await;
            });
        }
    }
}

impl Relay {
    /// Allocate on the server `url` names with TURN REST credentials, within
    /// [`ALLOCATION_TIMEOUT`]; received datagrams go to `datagrams`. Over TCP or TLS, `on_lost`
    /// is called with the relayed address if the connection to the server ends (the allocation
    /// ends with it).
    pub async fn allocate(
        url: &IceUrl,
        username: &str,
        password: &str,
        tls: &TlsRoots,
        datagrams: mpsc::Sender<Datagram>,
        on_lost: impl FnOnce(SocketAddr) + Send + 'static,
    ) -> Result<Self, RelayError> {
        let address = url.address();
        tokio::time::timeout(
            ALLOCATION_TIMEOUT,
            Self::allocate_now(url, username, password, tls, datagrams, on_lost),
        )
        .await
        .map_err(|_| RelayError::Timeout(address))?
    }

    async fn allocate_now(
        url: &IceUrl,
        username: &str,
        password: &str,
        tls: &TlsRoots,
        datagrams: mpsc::Sender<Datagram>,
        on_lost: impl FnOnce(SocketAddr) + Send + 'static,
    ) -> Result<Self, RelayError> {
        let address = url.address();
        let server: SocketAddr = tokio::net::lookup_host(&address)
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| RelayError::Resolve(address.clone()))?;
        let connect = |source| RelayError::Connect {
            address: address.clone(),
            source,
        };
        // Set when a TCP or TLS connection to the server ends.
        let (ended_tx, mut ended) = tokio::sync::watch::channel(false);
        let conn: Arc<dyn Conn + Send + Sync> = match url.transport {
            Transport::Udp => {
                let bind_ip: IpAddr = if server.ip().is_loopback() {
                    server.ip()
                } else if server.is_ipv4() {
                    IpAddr::from([0, 0, 0, 0])
                } else {
                    IpAddr::from([0u16; 8])
                };
                Arc::new(
                    UdpSocket::bind(SocketAddr::new(bind_ip, 0))
                        .await
                        .map_err(connect)?,
                )
            }
            Transport::Tcp => {
                let (stream, local) = tcp_connect(server).await.map_err(connect)?;
                Arc::new(StreamConn::new(Box::new(stream), local, server, ended_tx))
            }
            Transport::Tls => {
                let (stream, local) = tcp_connect(server).await.map_err(connect)?;
                let name =
                    rustls::pki_types::ServerName::try_from(url.host.clone()).map_err(|e| {
                        RelayError::Tls {
                            host: url.host.clone(),
                            reason: e.to_string(),
                        }
                    })?;
                let stream = tokio_rustls::TlsConnector::from(tls.0.clone())
                    .connect(name, stream)
                    .await
                    .map_err(|e| RelayError::Tls {
                        host: url.host.clone(),
                        reason: e.to_string(),
                    })?;
                Arc::new(StreamConn::new(Box::new(stream), local, server, ended_tx))
            }
        };
        let local = conn.local_addr().map_err(|e| RelayError::Allocation {
            address: address.clone(),
            reason: e.to_string(),
        })?;
        let refused = |e: turn::Error| RelayError::Allocation {
            address: address.clone(),
            reason: e.to_string(),
        };
        let client = turn::client::Client::new(turn::client::ClientConfig {
            stun_serv_addr: server.to_string(),
            turn_serv_addr: server.to_string(),
            username: username.to_owned(),
            password: password.to_owned(),
            realm: String::new(),
            software: "consult-client".into(),
            rto_in_ms: 0,
            conn,
            vnet: None,
        })
        .await
        .map_err(refused)?;
        let client = Arc::new(client);
        // Closed on every way out but success (then the relay closes it when dropped).
        let mut guard = CloseOnDrop(Some(client.clone()));
        client.listen().await.map_err(refused)?;
        let relay_conn = client.allocate().await.map_err(refused)?;
        let relayed = relay_conn
            .local_addr()
            .map_err(|e| RelayError::Allocation {
                address: address.clone(),
                reason: e.to_string(),
            })?;
        let relay_conn: Arc<dyn Conn + Send + Sync> = Arc::new(relay_conn);
        let reader = relay_conn.clone();
        let reading = tokio::spawn(async move {
            // As large as a TURN message can carry: a larger datagram than the buffer would end
            // the reading.
            let mut buffer = vec![0u8; 65_536];
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
        let (outgoing, mut queue) = mpsc::channel::<(Vec<u8>, SocketAddr)>(RELAY_QUEUE);
        let sender = relay_conn.clone();
        let sending = tokio::spawn(async move {
            while let Some((bytes, destination)) = queue.recv().await {
                if let Err(e) = sender.send_to(&bytes, destination).await {
                    tracing::debug!(error = %e, "TURN send failed");
                }
            }
        });
        let watching = tokio::spawn(async move {
            if ended.wait_for(|ended| *ended).await.is_ok() {
                on_lost(relayed);
            }
        });
        guard.0 = None;
        Ok(Self {
            relayed,
            local,
            outgoing,
            relay_conn,
            client,
            tasks: vec![reading, sending, watching],
        })
    }

    /// Send a datagram to `destination` through the relay.
    pub fn send(&self, bytes: Vec<u8>, destination: SocketAddr) {
        if self.outgoing.try_send((bytes, destination)).is_err() {
            tracing::debug!("the relay's queue is full: a datagram dropped");
        }
    }
}

/// A TCP connection to a TURN server (no Nagle: every message goes at once), and our end of it.
async fn tcp_connect(server: SocketAddr) -> std::io::Result<(TcpStream, SocketAddr)> {
    let stream = TcpStream::connect(server).await?;
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr()?;
    Ok((stream, local))
}

/// A byte stream to a TURN server (TCP, or TLS over TCP).
trait Stream: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Stream for T {}

/// The longest message on a stream: a STUN header and the largest 16-bit length.
const MAX_FRAME: usize = 4 + u16::MAX as usize + 16;

/// A TCP or TLS connection to a TURN server, seen as a datagram [`Conn`]: each `recv_from` is
/// one whole STUN message or ChannelData message, each `send_to` writes one, ChannelData padded
/// to a multiple of four bytes (RFC 8656 §12.5).
struct StreamConn {
    reader: Mutex<ReadHalf<Pin<Box<dyn Stream>>>>,
    writer: Mutex<WriteHalf<Pin<Box<dyn Stream>>>>,
    local: SocketAddr,
    server: SocketAddr,
    /// Set once reading failed: the stream is over (closed, reset, or misframed).
    ended: tokio::sync::watch::Sender<bool>,
}

impl StreamConn {
    fn new(
        stream: Box<dyn Stream>,
        local: SocketAddr,
        server: SocketAddr,
        ended: tokio::sync::watch::Sender<bool>,
    ) -> Self {
        let (reader, writer) = tokio::io::split(Pin::from(stream));
        Self {
            reader: Mutex::new(reader),
            writer: Mutex::new(writer),
            local,
            server,
            ended,
        }
    }

    async fn read_frame(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        let mut reader = self.reader.lock().await;
        let mut header = [0u8; 4];
        reader.read_exact(&mut header).await?;
        let (length, padding) = frame_length(header)?;
        if length > buf.len() || length > MAX_FRAME {
            return Err(webrtc_util::Error::Other(format!(
                "a {length}-byte message on the TURN stream does not fit"
            )));
        }
        buf[..4].copy_from_slice(&header);
        reader.read_exact(&mut buf[4..length]).await?;
        let mut pad = [0u8; 3];
        reader.read_exact(&mut pad[..padding]).await?;
        Ok(length)
    }
}

/// The length of a framed message from its first four bytes: (length without padding, padding).
fn frame_length(header: [u8; 4]) -> Result<(usize, usize), webrtc_util::Error> {
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    match header[0] >> 6 {
        // STUN: a 20-byte header, then `length` bytes of attributes (a multiple of four).
        0 if length % 4 == 0 => Ok((20 + length, 0)),
        // ChannelData (channel numbers 0x4000–0x7FFF): 4 bytes, the data, padding to four.
        1 => Ok((4 + length, (4 - length % 4) % 4)),
        _ => Err(webrtc_util::Error::Other(format!(
            "not a STUN or ChannelData message on the TURN stream (first bytes {header:02x?})"
        ))),
    }
}

#[async_trait::async_trait]
impl Conn for StreamConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(webrtc_util::Error::Other("already connected".into()))
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        match self.read_frame(buf).await {
            Ok(length) => Ok((length, self.server)),
            Err(e) => {
                self.ended.send_replace(true);
                Err(e)
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.send_to(buf, self.server).await
    }

    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> webrtc_util::Result<usize> {
        let padding = match buf.first() {
            Some(first) if first >> 6 == 1 => (4 - buf.len() % 4) % 4,
            _ => 0,
        };
        let mut writer = self.writer.lock().await;
        if padding == 0 {
            writer.write_all(buf).await?;
        } else {
            let mut framed = Vec::with_capacity(buf.len() + padding);
            framed.extend_from_slice(buf);
            framed.resize(buf.len() + padding, 0);
            writer.write_all(&framed).await?;
        }
        writer.flush().await?;
        Ok(buf.len())
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.server)
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        let _ = self.writer.lock().await.shutdown().await;
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_measured_from_their_header() {
        // A STUN binding request with 8 bytes of attributes.
        assert_eq!(frame_length([0x00, 0x01, 0x00, 0x08]).ok(), Some((28, 0)));
        // ChannelData on 0x4000 with 5 bytes: padded to 8.
        assert_eq!(frame_length([0x40, 0x00, 0x00, 0x05]).ok(), Some((9, 3)));
        assert_eq!(frame_length([0x7f, 0xff, 0x00, 0x04]).ok(), Some((8, 0)));
        // A STUN length that is not a multiple of four, and bytes that are neither.
        assert!(frame_length([0x00, 0x01, 0x00, 0x07]).is_err());
        assert!(frame_length([0x80, 0x00, 0x00, 0x04]).is_err());
    }

    #[tokio::test]
    async fn a_stream_carries_whole_messages_and_pads_channel_data() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        let client = TcpStream::connect(server).await.unwrap();
        let local = client.local_addr().unwrap();
        let (mut far, _) = listener.accept().await.unwrap();
        let (ended, mut watch) = tokio::sync::watch::channel(false);
        let conn = StreamConn::new(Box::new(client), local, server, ended);

        // Out: ChannelData with 5 bytes goes out padded to 12 in all.
        conn.send_to(&[0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5], server)
            .await
            .unwrap();
        let mut out = [0u8; 12];
        far.read_exact(&mut out).await.unwrap();
        assert_eq!(out, [0x40, 0, 0, 5, 1, 2, 3, 4, 5, 0, 0, 0]);

        // In: a STUN message and padded ChannelData, written in pieces, read as two messages.
        let mut stun = vec![0x01, 0x01, 0x00, 0x04];
        stun.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        stun.extend_from_slice(&[7; 12]);
        stun.extend_from_slice(&[9; 4]);
        let mut bytes = stun.clone();
        bytes.extend_from_slice(&[0x40, 0x01, 0x00, 0x02, 0xaa, 0xbb, 0, 0]);
        for piece in bytes.chunks(3) {
            far.write_all(piece).await.unwrap();
        }
        let mut buf = vec![0u8; 2048];
        let (n, from) = conn.recv_from(&mut buf).await.unwrap();
        assert_eq!((&buf[..n], from), (stun.as_slice(), server));
        let (n, _) = conn.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], [0x40, 0x01, 0x00, 0x02, 0xaa, 0xbb]);

        // Garbage ends the stream's reading with an error, not a misframed message, and says
        // the stream is over.
        assert!(!*watch.borrow_and_update());
        far.write_all(&[0xff; 8]).await.unwrap();
        assert!(conn.recv_from(&mut buf).await.is_err());
        assert!(*watch.borrow_and_update());
    }
}
