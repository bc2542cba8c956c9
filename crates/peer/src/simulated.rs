//! A simulated network for whole calls between sans-IO peers: per-direction loss and delay,
//! a seeded random source, and a virtual clock — a call of many seconds runs in milliseconds.
//!
//! ```
//! use consult_peer::simulated::{Link, SimulatedCall};
//! use consult_peer::PeerConfig;
//!
//! let mut call = SimulatedCall::new(PeerConfig::default(), PeerConfig::default(), Link::perfect(), 1);
//! call.negotiate().unwrap();
//! call.run_until(std::time::Duration::from_secs(5), |c| c.a.connected && c.b.connected).unwrap();
//! assert!(call.a.connected);
//! ```

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::{Output, Peer, PeerConfig, PeerError, PeerEvent, RemoteDescriptionOutcome, Transmit};

/// One direction of the simulated network.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// One-way delay.
    pub delay: Duration,
}

impl Link {
    /// No loss, 1 ms.
    pub fn perfect() -> Self {
        Self {
            loss: 0.0,
            delay: Duration::from_millis(1),
        }
    }
}

/// One side of a simulated call.
pub struct Side {
    /// The peer.
    pub peer: Peer,
    /// Its (pretend) address.
    pub addr: SocketAddr,
    /// Every event it produced, with the virtual time.
    pub events: Vec<(Duration, PeerEvent)>,
    /// Whether it reported `Connected`.
    pub connected: bool,
    next_timeout: Instant,
    inbox: BinaryHeap<Reverse<(Instant, u64, Datagram)>>,
    /// Datagrams this side sent and the network dropped.
    pub dropped: u64,
    /// Datagrams this side sent.
    pub sent: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Datagram {
    source: SocketAddr,
    destination: SocketAddr,
    contents: Vec<u8>,
}

/// Two peers on a simulated link.
pub struct SimulatedCall {
    /// The offering side.
    pub a: Side,
    /// The answering side.
    pub b: Side,
    /// a → b.
    pub a_to_b: Link,
    /// b → a.
    pub b_to_a: Link,
    start: Instant,
    now: Instant,
    rng: rand::rngs::StdRng,
    seq: u64,
}

impl SimulatedCall {
    /// Two peers; `seed` fixes the loss pattern.
    pub fn new(a: PeerConfig, b: PeerConfig, link: Link, seed: u64) -> Self {
        // str0m wants real Instants as a base; the clock then only moves forward virtually.
        let start = Instant::now();
        let side = |config: PeerConfig, port: u16, ip: [u8; 4]| Side {
            peer: Peer::new(config, start),
            addr: SocketAddr::from((ip, port)),
            events: Vec::new(),
            connected: false,
            next_timeout: start,
            inbox: BinaryHeap::new(),
            dropped: 0,
            sent: 0,
        };
        Self {
            a: side(PeerConfig { polite: false, ..a }, 10_000, [127, 0, 0, 1]),
            b: side(PeerConfig { polite: true, ..b }, 20_000, [127, 0, 0, 2]),
            a_to_b: link,
            b_to_a: link,
            start,
            now: start,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            seq: 0,
        }
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// The virtual now.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Exchange host candidates and an offer/answer (a offers), as signaling would.
    pub fn negotiate(&mut self) -> Result<(), PeerError> {
        let a_candidate = self.a.peer.add_host_candidate(self.a.addr)?;
        let b_candidate = self.b.peer.add_host_candidate(self.b.addr)?;
        let offer = self
            .a
            .peer
            .create_offer()?
            .ok_or(PeerError::NotNegotiated("offer"))?;
        let RemoteDescriptionOutcome::Answer(answer) = self.b.peer.handle_remote_offer(&offer)?
        else {
            return Err(PeerError::UnexpectedAnswer);
        };
        self.a.peer.handle_remote_answer(&answer)?;
        if let Some(c) = b_candidate {
            self.a.peer.add_remote_candidate(&c)?;
        }
        if let Some(c) = a_candidate {
            self.b.peer.add_remote_candidate(&c)?;
        }
        self.drain_both()
    }

    fn drain_both(&mut self) -> Result<(), PeerError> {
        let now = self.now;
        for from_a in [true, false] {
            let (from, to, link) = if from_a {
                (&mut self.a, &mut self.b, self.a_to_b)
            } else {
                (&mut self.b, &mut self.a, self.b_to_a)
            };
            drain(
                from,
                to,
                link,
                now,
                self.start,
                &mut self.rng,
                &mut self.seq,
            )?;
        }
        Ok(())
    }

    /// Advance to the next thing that happens (a timeout or a datagram arriving) and handle it.
    pub fn step(&mut self) -> Result<(), PeerError> {
        let next_packet = |s: &Side| s.inbox.peek().map(|Reverse((t, _, _))| *t);
        let candidates = [
            Some(self.a.next_timeout),
            Some(self.b.next_timeout),
            next_packet(&self.a),
            next_packet(&self.b),
        ];
        let next = candidates.into_iter().flatten().min().unwrap_or(self.now);
        // Always move a little, so a peer that asks for "now" again cannot stall the clock.
        self.now = next.max(self.now + Duration::from_micros(100));
        for side in [&mut self.a, &mut self.b] {
            while let Some(Reverse((at, _, _))) = side.inbox.peek() {
                if *at > self.now {
                    break;
                }
                let Some(Reverse((at, _, datagram))) = side.inbox.pop() else {
                    break;
                };
                // Garbage is the peer's to reject; a rejected datagram does not end the call.
                let _ = side.peer.handle_receive(
                    at,
                    datagram.source,
                    datagram.destination,
                    &datagram.contents,
                );
            }
            if side.next_timeout <= self.now {
                side.peer.handle_timeout(self.now)?;
            }
        }
        self.drain_both()
    }

    /// Step until `done` holds or `limit` of virtual time has passed; true if `done` held.
    pub fn run_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Self) -> bool,
    ) -> Result<bool, PeerError> {
        let deadline = self.now + limit;
        while self.now < deadline {
            if done(self) {
                return Ok(true);
            }
            self.step()?;
        }
        Ok(done(self))
    }

    /// Deliver a datagram to side b as if it came from the network (for garbage tests).
    pub fn inject_to_b(&mut self, contents: Vec<u8>) {
        let datagram = Datagram {
            source: self.a.addr,
            destination: self.b.addr,
            contents,
        };
        self.seq += 1;
        self.b.inbox.push(Reverse((self.now, self.seq, datagram)));
    }
}

fn drain(
    from: &mut Side,
    to: &mut Side,
    link: Link,
    now: Instant,
    start: Instant,
    rng: &mut rand::rngs::StdRng,
    seq: &mut u64,
) -> Result<(), PeerError> {
    loop {
        match from.peer.poll_output()? {
            Output::Transmit(Transmit {
                source,
                destination,
                contents,
            }) => {
                from.sent += 1;
                if rng.gen_bool(link.loss) {
                    from.dropped += 1;
                    continue;
                }
                *seq += 1;
                to.inbox.push(Reverse((
                    now + link.delay,
                    *seq,
                    Datagram {
                        source,
                        destination,
                        contents,
                    },
                )));
            }
            Output::Event(event) => {
                if matches!(event, PeerEvent::Connected) {
                    from.connected = true;
                }
                from.events.push((now - start, event));
            }
            Output::Timeout(at) => {
                from.next_timeout = at;
                return Ok(());
            }
        }
    }
}
