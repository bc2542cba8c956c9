//! Shared pieces of the benchmarks: two sans-IO peers on real loopback UDP sockets.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use consult_peer::{Output, Peer, PeerConfig, PeerEvent, RemoteDescriptionOutcome};
use std::net::UdpSocket;

/// A peer with its own non-blocking UDP socket on 127.0.0.1.
pub struct UdpPeer {
    /// The sans-IO peer.
    pub peer: Peer,
    /// Its socket.
    pub socket: UdpSocket,
    /// The socket's address.
    pub addr: SocketAddr,
    /// Events seen so far.
    pub events: Vec<PeerEvent>,
    next_timeout: Instant,
}

impl UdpPeer {
    fn new(config: PeerConfig) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("socket");
        socket.set_nonblocking(true).expect("non-blocking");
        // STACK-NOTES: default receive buffers drop packets at data-channel rates.
        let addr = socket.local_addr().expect("address");
        let mut peer = Peer::new(config, Instant::now());
        peer.add_host_candidate(addr).expect("candidate");
        Self {
            peer,
            socket,
            addr,
            events: Vec::new(),
            next_timeout: Instant::now(),
        }
    }

    fn drain(&mut self) {
        loop {
            match self.peer.poll_output().expect("poll") {
                Output::Transmit(t) => {
                    let _ = self.socket.send_to(&t.contents, t.destination);
                }
                Output::Event(e) => self.events.push(e),
                Output::Timeout(at) => {
                    self.next_timeout = at;
                    return;
                }
            }
        }
    }

    /// Read what is waiting on the socket and run timers; true if anything happened.
    pub fn poll(&mut self, buffer: &mut [u8]) -> bool {
        let mut busy = false;
        while let Ok((n, source)) = self.socket.recv_from(buffer) {
            let _ = self
                .peer
                .handle_receive(Instant::now(), source, self.addr, &buffer[..n]);
            self.drain();
            busy = true;
        }
        if Instant::now() >= self.next_timeout {
            self.peer.handle_timeout(Instant::now()).expect("timeout");
            busy = true;
        }
        self.drain();
        busy
    }
}

/// Two peers, negotiated (a offers), not yet connected.
pub fn negotiated_pair(config: PeerConfig) -> (UdpPeer, UdpPeer) {
    let mut a = UdpPeer::new(PeerConfig {
        polite: false,
        ..config.clone()
    });
    let mut b = UdpPeer::new(PeerConfig {
        polite: true,
        ..config
    });
    let offer = a
        .peer
        .create_offer()
        .expect("offer")
        .expect("something to offer");
    let RemoteDescriptionOutcome::Answer(answer) =
        b.peer.handle_remote_offer(&offer).expect("answer")
    else {
        panic!("no answer")
    };
    a.peer.handle_remote_answer(&answer).expect("applied");
    let (a_line, b_line) = (
        format!(
            "candidate:1 1 udp 2130706431 {} {} typ host",
            a.addr.ip(),
            a.addr.port()
        ),
        format!(
            "candidate:1 1 udp 2130706431 {} {} typ host",
            b.addr.ip(),
            b.addr.port()
        ),
    );
    a.peer.add_remote_candidate(&b_line).expect("candidate");
    b.peer.add_remote_candidate(&a_line).expect("candidate");
    a.drain();
    b.drain();
    (a, b)
}

/// Run both peers until `done` holds (busy-polling the sockets); panics after `limit`.
pub fn run_until(
    a: &mut UdpPeer,
    b: &mut UdpPeer,
    limit: Duration,
    mut done: impl FnMut(&UdpPeer, &UdpPeer) -> bool,
) {
    let deadline = Instant::now() + limit;
    let mut buffer = vec![0u8; 2048];
    while !done(a, b) {
        assert!(Instant::now() < deadline, "benchmark setup timed out");
        let busy = a.poll(&mut buffer) | b.poll(&mut buffer);
        if !busy {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// Both data channels are open on both sides.
pub fn channels_open(a: &UdpPeer, b: &UdpPeer) -> bool {
    [a, b].iter().all(|p| {
        p.events
            .iter()
            .filter(|e| matches!(e, PeerEvent::ChannelOpen { .. }))
            .count()
            == 2
    })
}
