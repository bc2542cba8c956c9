//! Delay and jitter: this kernel has no netem, so packets between the peers go through a TUN
//! device in the router namespace, where a thread holds each for its links' delay (plus a random
//! jitter) and writes it back. A packet crossing two access links (peer to peer) waits for both;
//! one to or from the router's own address (the service, the relay) for its peer's only.
//! Packets of one path (source link to destination link) leave in the order they came (no
//! reordering, as on most real paths); so a packet drawn a short delay right after one drawn a
//! long one waits for it, and dense packet trains see delays nearer the top of the jitter than
//! single packets do.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::sys;

/// The most packets held at once; more are dropped (a full queue), which bounds memory.
const MAX_HELD: usize = 20_000;

/// One access link's delay: `base` ± up to `jitter`, uniform, each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkDelay {
    /// The one-way delay.
    pub base: Duration,
    /// The most it varies by, either way.
    pub jitter: Duration,
}

impl LinkDelay {
    fn sample(&self, rng: &mut impl Rng) -> Duration {
        if self.jitter.is_zero() {
            return self.base;
        }
        let jitter = self.jitter.as_micros() as i64;
        let offset = rng.gen_range(-jitter..=jitter);
        let micros = (self.base.as_micros() as i64 + offset).max(0);
        Duration::from_micros(micros as u64)
    }
}

/// Which peer an address is on (`None`: the router itself, or outside the lab).
pub type Classify = Arc<dyn Fn(Ipv4Addr) -> Option<usize> + Send + Sync>;

/// The delays of every peer's link, by peer index.
pub type Delays = Arc<Mutex<Vec<LinkDelay>>>;

/// The thread that delays packets, and how to stop it.
pub struct DelayRouter {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Packets forwarded and dropped for a full queue, for the curious.
    pub counters: Arc<Mutex<(u64, u64)>>,
}

struct Held {
    due: Instant,
    packet: Vec<u8>,
}

impl DelayRouter {
    /// Start the router on `device`, an open TUN device: every packet read is written back when
    /// its delay is over.
    pub fn start(device: File, delays: Delays, classify: Classify) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Mutex::new((0, 0)));
        let thread = {
            let (stop, counters) = (stop.clone(), counters.clone());
            std::thread::Builder::new()
                .name("netem-delay".into())
                .spawn(move || run(device, &delays, &classify, &stop, &counters))
                .ok()
        };
        Self {
            stop,
            thread,
            counters,
        }
    }
}

impl Drop for DelayRouter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn ipv4_addresses(packet: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    let source = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let destination = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    Some((source, destination))
}

fn run(
    mut device: File,
    delays: &Delays,
    classify: &Classify,
    stop: &AtomicBool,
    counters: &Mutex<(u64, u64)>,
) {
    let mut rng = rand::thread_rng();
    // One queue per path (source link, destination link; the router's own address is `None`),
    // each in due order: a path's packets never overtake each other, and a slow path holds up
    // no other.
    let mut queues: HashMap<(Option<usize>, Option<usize>), VecDeque<Held>> = HashMap::new();
    let mut held = 0usize;
    let mut buffer = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        // Release what is due.
        for queue in queues.values_mut() {
            while queue.front().is_some_and(|h| h.due <= now) {
                if let Some(h) = queue.pop_front() {
                    held -= 1;
                    let _ = device.write(&h.packet);
                    if let Ok(mut c) = counters.lock() {
                        c.0 += 1;
                    }
                }
            }
        }
        let next_due = queues
            .values()
            .filter_map(|q| q.front())
            .map(|h| h.due)
            .min();
        let wait = next_due
            .map(|due| due.saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(50))
            .min(Duration::from_millis(50));
        // Rounded up, so that a wait under a millisecond sleeps rather than spins.
        let wait_ms = i32::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(50);
        match sys::wait_readable(&device, wait_ms) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(_) => break,
        }
        let Ok(n) = device.read(&mut buffer) else {
            continue;
        };
        let arrived = Instant::now();
        let packet = buffer[..n].to_vec();
        let Some((source, destination)) = ipv4_addresses(&packet) else {
            let _ = device.write(&packet);
            continue;
        };
        let (from, to) = (classify(source), classify(destination));
        let delay = {
            let Ok(links) = delays.lock() else { break };
            let link =
                |peer: Option<usize>| peer.and_then(|i| links.get(i).copied()).unwrap_or_default();
            link(from).sample(&mut rng) + link(to).sample(&mut rng)
        };
        if delay.is_zero() && held == 0 {
            let _ = device.write(&packet);
            if let Ok(mut c) = counters.lock() {
                c.0 += 1;
            }
            continue;
        }
        if held >= MAX_HELD {
            if let Ok(mut c) = counters.lock() {
                c.1 += 1;
            }
            continue;
        }
        let queue = queues.entry((from, to)).or_default();
        // No overtaking: a packet leaves no earlier than the one before it to the same place.
        let due = queue
            .back()
            .map_or(arrived + delay, |last| last.due.max(arrived + delay));
        queue.push_back(Held { due, packet });
        held += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_vary_within_the_jitter_and_never_below_zero() {
        let mut rng = rand::thread_rng();
        let link = LinkDelay {
            base: Duration::from_millis(75),
            jitter: Duration::from_millis(15),
        };
        let samples: Vec<Duration> = (0..10_000).map(|_| link.sample(&mut rng)).collect();
        let (min, max) = (samples.iter().min().unwrap(), samples.iter().max().unwrap());
        assert!(*min >= Duration::from_millis(60) && *max <= Duration::from_millis(90));
        assert!(*max - *min > Duration::from_millis(25), "it does vary");
        let short = LinkDelay {
            base: Duration::from_millis(1),
            jitter: Duration::from_millis(10),
        };
        assert!((0..1000).all(|_| short.sample(&mut rng) <= Duration::from_millis(11)));
    }

    #[test]
    fn only_ipv4_headers_are_read() {
        let mut packet = vec![0u8; 20];
        packet[0] = 0x45;
        packet[12..16].copy_from_slice(&[10, 77, 8, 2]);
        packet[16..20].copy_from_slice(&[10, 77, 16, 2]);
        assert_eq!(
            ipv4_addresses(&packet),
            Some((Ipv4Addr::new(10, 77, 8, 2), Ipv4Addr::new(10, 77, 16, 2)))
        );
        packet[0] = 0x60;
        assert_eq!(ipv4_addresses(&packet), None);
        assert_eq!(ipv4_addresses(&[0x45; 10]), None);
    }
}
