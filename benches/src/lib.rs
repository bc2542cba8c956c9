//! Shared pieces of the benchmarks: two sans-IO peers on real loopback UDP sockets.

use std::net::SocketAddr;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use consult_peer::{Output, Peer, PeerConfig, PeerEvent, RemoteDescriptionOutcome};
use consult_udp::{ReceiveSlots, SendBatch};

/// How a [`UdpPeer`] uses its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketIo {
    /// One system call per datagram each way, the peer drained after every datagram.
    PerDatagram,
    /// Batches each way (`recvmmsg`/GRO in, GSO out, through consult-udp), the peer drained after
    /// at most [`consult_peer::RECEIVE_BATCH`] datagrams, and 4 MiB socket buffers.
    Batched,
}

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
    outputs: Outputs,
    io: SocketIo,
    state: quinn_udp::UdpSocketState,
}

/// When the peer wants time, and the datagrams it gave for the next batched send.
struct Outputs {
    next_timeout: Instant,
    outgoing: SendBatch,
}

impl UdpPeer {
    fn new(config: PeerConfig, io: SocketIo) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("socket");
        socket.set_nonblocking(true).expect("non-blocking");
        let state = quinn_udp::UdpSocketState::new((&socket).into()).expect("socket state");
        if io == SocketIo::Batched {
            consult_udp::enlarge_buffers(&state, &socket).expect("buffers");
        }
        let addr = socket.local_addr().expect("address");
        let mut peer = Peer::new(config, Instant::now());
        peer.add_host_candidate(addr).expect("candidate");
        Self {
            peer,
            socket,
            addr,
            events: Vec::new(),
            outputs: Outputs {
                next_timeout: Instant::now(),
                outgoing: SendBatch::default(),
            },
            io,
            state,
        }
    }

    /// Read what is waiting on the socket and run timers; true if anything happened.
    pub fn poll(&mut self, slots: &mut ReceiveSlots) -> bool {
        let mut busy = false;
        match self.io {
            SocketIo::PerDatagram => {
                let mut buffer = [0u8; 2048];
                while let Ok((n, source)) = self.socket.recv_from(&mut buffer) {
                    let _ =
                        self.peer
                            .handle_receive(Instant::now(), source, self.addr, &buffer[..n]);
                    self.drain();
                    busy = true;
                }
            }
            SocketIo::Batched => loop {
                let (peer, events, outputs) = (&mut self.peer, &mut self.events, &mut self.outputs);
                let mut fed = 0;
                let read = slots.read(&self.state, &self.socket, |source, datagram| {
                    let _ = peer.handle_receive(Instant::now(), source, self.addr, datagram);
                    fed += 1;
                    if fed % consult_peer::RECEIVE_BATCH == 0 {
                        outputs.drain(peer, events, self.io, &self.socket);
                    }
                });
                self.drain();
                self.flush();
                match read {
                    Ok((_, more)) => {
                        busy = true;
                        if !more {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            },
        }
        if Instant::now() >= self.outputs.next_timeout {
            self.peer.handle_timeout(Instant::now()).expect("timeout");
            busy = true;
        }
        self.drain();
        self.flush();
        busy
    }

    fn drain(&mut self) {
        self.outputs
            .drain(&mut self.peer, &mut self.events, self.io, &self.socket);
    }

    fn flush(&mut self) {
        if self.outputs.outgoing.is_empty() {
            return;
        }
        // A full send buffer: what it did not take waits for the next poll.
        let _ = self.outputs.outgoing.flush(&self.state, &self.socket);
    }
}

impl Outputs {
    /// Everything the peer has to say until it waits: datagrams sent (or gathered), events kept.
    fn drain(
        &mut self,
        peer: &mut Peer,
        events: &mut Vec<PeerEvent>,
        io: SocketIo,
        socket: &UdpSocket,
    ) {
        loop {
            match peer.poll_output().expect("poll") {
                Output::Transmit(t) => match io {
                    SocketIo::PerDatagram => {
                        let _ = socket.send_to(&t.contents, t.destination);
                    }
                    SocketIo::Batched => self.outgoing.push(t.destination, &t.contents),
                },
                Output::Event(e) => events.push(e),
                Output::Timeout(at) => {
                    self.next_timeout = at;
                    return;
                }
            }
        }
    }
}

/// Two peers, negotiated (a offers), not yet connected.
pub fn negotiated_pair(config: PeerConfig, io: SocketIo) -> (UdpPeer, UdpPeer) {
    let mut a = UdpPeer::new(
        PeerConfig {
            polite: false,
            ..config.clone()
        },
        io,
    );
    let mut b = UdpPeer::new(
        PeerConfig {
            polite: true,
            ..config
        },
        io,
    );
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
    a.flush();
    b.flush();
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
    consult_udp::with_thread_slots(|slots| {
        while !done(a, b) {
            assert!(Instant::now() < deadline, "benchmark setup timed out");
            let busy = a.poll(slots) | b.poll(slots);
            if !busy {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    })
}

/// Run each peer on a thread of its own, as two native clients run, until `a_done` holds on `a`;
/// `b_step` is called on `b` after each of its polls (to answer what it saw). A peer with
/// nothing to do yields its thread and looks again. Panics after `limit`.
pub fn run_apart(
    a: &mut UdpPeer,
    b: &mut UdpPeer,
    limit: Duration,
    mut a_done: impl FnMut(&UdpPeer) -> bool,
    mut b_step: impl FnMut(&mut UdpPeer) + Send,
) {
    let deadline = Instant::now() + limit;
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            consult_udp::with_thread_slots(|slots| {
                while !done.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline
                {
                    if !b.poll(slots) {
                        std::thread::yield_now();
                    }
                    b_step(b);
                }
            })
        });
        consult_udp::with_thread_slots(|slots| {
            while !a_done(a) && Instant::now() < deadline {
                if !a.poll(slots) {
                    std::thread::yield_now();
                }
            }
        });
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert!(a_done(a), "benchmark step timed out");
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
