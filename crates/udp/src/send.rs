//! Batched sends: datagrams gathered while a peer is drained, then sent with as few system calls
//! as the kernel allows — a run of equal datagrams to one destination in one `sendmsg` that the
//! kernel cuts into datagrams (GSO, `UDP_SEGMENT`), through quinn-udp's safe API.

use std::io;
use std::net::SocketAddr;

/// Most bytes of one GSO send: a UDP datagram's limit, less room for the headers.
const MAX_RUN_BYTES: usize = 65_000;

/// Most datagrams of one GSO send (Linux's `UDP_MAX_SEGMENTS` is 64 on older kernels).
const MAX_RUN_DATAGRAMS: usize = 64;

/// Datagrams waiting to be sent, in the order they were pushed, their bytes in one buffer that is
/// kept between flushes (no allocation per datagram once it has grown).
///
/// ```
/// # fn main() -> std::io::Result<()> {
/// use std::net::UdpSocket;
/// let receiver = UdpSocket::bind("127.0.0.1:0")?;
/// let socket = UdpSocket::bind("127.0.0.1:0")?;
/// let state = quinn_udp::UdpSocketState::new((&socket).into())?;
/// let mut batch = consult_udp::SendBatch::default();
/// for n in 0..10u8 {
///     batch.push(receiver.local_addr()?, &[n; 1200]);
/// }
/// batch.flush(&state, &socket)?; // one system call where the kernel has GSO
/// assert!(batch.is_empty());
/// let mut buffer = [0; 2048];
/// let (length, _) = receiver.recv_from(&mut buffer)?;
/// assert_eq!(&buffer[..length], &[0; 1200]);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Default)]
pub struct SendBatch {
    bytes: Vec<u8>,
    /// Each datagram's destination and length; its bytes follow the previous one's.
    datagrams: Vec<(SocketAddr, usize)>,
    /// Datagrams (and their bytes) at the front already sent by an interrupted flush.
    sent: usize,
    sent_bytes: usize,
}

impl SendBatch {
    /// Add a datagram to the batch (copied; nothing is sent until [`SendBatch::flush`]).
    pub fn push(&mut self, destination: SocketAddr, datagram: &[u8]) {
        self.bytes.extend_from_slice(datagram);
        self.datagrams.push((destination, datagram.len()));
    }

    /// Whether nothing waits to be sent.
    pub fn is_empty(&self) -> bool {
        self.sent == self.datagrams.len()
    }

    /// How many datagrams wait to be sent.
    pub fn len(&self) -> usize {
        self.datagrams.len() - self.sent
    }

    /// Forget what waits (a socket that will not take it again).
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.datagrams.clear();
        self.sent = 0;
        self.sent_bytes = 0;
    }

    /// Send what waits on `socket` (a standard or a tokio socket), in order: each run of
    /// datagrams of one length to one destination (its last may be shorter) in one system call
    /// where the socket has GSO, anything else one by one.
    ///
    /// # Errors
    /// - [`io::ErrorKind::WouldBlock`]: the socket's send buffer is full; what it did not take
    ///   still waits, in order, for the next flush.
    /// - Any other error of the socket's (an unreachable destination, a datagram too large): the
    ///   datagram it refused is dropped, as a network would drop it, and the flush goes on with
    ///   the rest; the first such error is returned once everything else was sent.
    pub fn flush<S>(&mut self, state: &quinn_udp::UdpSocketState, socket: &S) -> io::Result<()>
    where
        for<'s> &'s S: Into<quinn_udp::UdpSockRef<'s>>,
    {
        let most = state.max_gso_segments().clamp(1, MAX_RUN_DATAGRAMS);
        // Datagrams before this index go one by one (what is left of a run the kernel refused).
        let mut one_by_one_until = 0;
        let mut refused = None;
        while self.sent < self.datagrams.len() {
            let most = if self.sent < one_by_one_until {
                1
            } else {
                most
            };
            let (destination, length) = self.datagrams[self.sent];
            let (count, bytes) = self.run_at(self.sent, most);
            let contents = &self.bytes[self.sent_bytes..self.sent_bytes + bytes];
            let segment_size = (count > 1).then_some(length);
            match state.try_send(
                socket.into(),
                &transmit(destination, contents, segment_size),
            ) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                // The kernel may refuse a run it cannot cut (a segment over the route's MTU, no
                // GSO on the device): each datagram of it on its own, then.
                Err(_) if count > 1 => {
                    one_by_one_until = self.sent + count;
                    continue;
                }
                Err(e) => {
                    refused.get_or_insert(e);
                }
            }
            self.sent += count;
            self.sent_bytes += bytes;
        }
        self.clear();
        refused.map_or(Ok(()), Err)
    }

    /// The run that starts at datagram `first`: how many datagrams and bytes. One destination,
    /// every datagram as long as the first but the last (which may be shorter), at most `most`
    /// datagrams and [`MAX_RUN_BYTES`].
    fn run_at(&self, first: usize, most: usize) -> (usize, usize) {
        let (destination, length) = self.datagrams[first];
        let mut count = 1;
        let mut bytes = length;
        for &(next_destination, next_length) in &self.datagrams[first + 1..] {
            if count == most
                || next_destination != destination
                || next_length > length
                || next_length == 0
                || bytes + next_length > MAX_RUN_BYTES
            {
                break;
            }
            count += 1;
            bytes += next_length;
            if next_length < length {
                break;
            }
        }
        (count, bytes)
    }
}

/// One send: `contents` to `destination`, cut into datagrams of `segment_size` if given.
fn transmit(
    destination: SocketAddr,
    contents: &[u8],
    segment_size: Option<usize>,
) -> quinn_udp::Transmit<'_> {
    quinn_udp::Transmit {
        destination,
        ecn: None,
        contents,
        segment_size,
        src_ip: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::{Duration, Instant};

    fn batch_of(datagrams: &[(SocketAddr, usize)]) -> SendBatch {
        let mut batch = SendBatch::default();
        for (n, &(to, length)) in datagrams.iter().enumerate() {
            batch.push(to, &vec![n as u8; length]);
        }
        batch
    }

    /// Runs: one destination, equal lengths with a shorter last, never an empty datagram in a
    /// run, at most the segments the socket takes and the bytes of one datagram.
    #[test]
    fn runs_join_only_what_one_gso_send_can_carry() {
        let (a, b): (SocketAddr, SocketAddr) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        let batch = batch_of(&[
            (a, 1200),
            (a, 1200),
            (a, 700),
            (a, 1200),
            (b, 1200),
            (b, 1300),
        ]);
        assert_eq!(
            batch.run_at(0, 64),
            (3, 3100),
            "a shorter datagram ends a run"
        );
        assert_eq!(
            batch.run_at(3, 64),
            (1, 1200),
            "another destination ends a run"
        );
        assert_eq!(
            batch.run_at(4, 64),
            (1, 1200),
            "a longer datagram ends a run"
        );
        assert_eq!(batch.run_at(0, 2), (2, 2400), "the socket's most segments");
        assert_eq!(batch.run_at(0, 1), (1, 1200), "no GSO");

        let batch = batch_of(&[(a, 0), (a, 0), (a, 10), (a, 0)]);
        assert_eq!(batch.run_at(0, 64), (1, 0));
        assert_eq!(batch.run_at(1, 64), (1, 0));
        assert_eq!(batch.run_at(2, 64), (1, 10), "no empty segment");

        let batch = batch_of(&vec![(a, 1500); 100]);
        assert_eq!(
            batch.run_at(0, 64),
            (43, 43 * 1500),
            "within one datagram's bytes"
        );
        let batch = batch_of(&vec![(a, 100); 100]);
        assert_eq!(batch.run_at(0, 64), (MAX_RUN_DATAGRAMS, 6400));
        let batch = batch_of(&[(a, 65_507), (a, 65_507)]);
        assert_eq!(batch.run_at(0, 64), (1, 65_507));
    }

    /// A sender with its batching state and `count` receivers, all with large buffers.
    fn sender_and_receivers(
        count: usize,
    ) -> (UdpSocket, quinn_udp::UdpSocketState, Vec<UdpSocket>) {
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let state = quinn_udp::UdpSocketState::new((&sender).into()).unwrap();
        crate::enlarge_buffers(&state, &sender).unwrap();
        let receivers: Vec<UdpSocket> = (0..count)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for receiver in &receivers {
            state
                .set_recv_buffer_size(receiver.into(), crate::BUSY_SOCKET_BUFFER_BYTES)
                .unwrap();
        }
        (sender, state, receivers)
    }

    fn receive_all(socket: &UdpSocket, count: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        socket.set_nonblocking(true).unwrap();
        let mut buffer = vec![0; 65_536];
        let mut received = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while received.len() < count && Instant::now() < deadline {
            match socket.recv_from(&mut buffer) {
                Ok((n, from)) => received.push((from, buffer[..n].to_vec())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
        }
        received
    }

    /// Everything pushed arrives once, whole, in order and where it was sent, whatever the mix
    /// of lengths and destinations; the batch is empty after and is reused.
    #[test]
    fn a_flush_delivers_every_datagram_whole_and_in_order() {
        let (sender, state, receivers) = sender_and_receivers(2);
        let mut batch = SendBatch::default();
        for round in 0..2 {
            let mut expected: [Vec<Vec<u8>>; 2] = Default::default();
            let mut lengths: Vec<usize> = vec![1229; 150];
            lengths.extend([1229, 800, 1229, 1229, 0, 0, 65_507, 3, 3, 3, 1, 1500, 1229]);
            lengths.extend((0..40).map(|i| 1 + (i * 331) % 1400));
            for (n, length) in lengths.into_iter().enumerate() {
                // Mostly to the first receiver, every seventh to the second.
                let to = usize::from(n % 7 == 6);
                let datagram: Vec<u8> = (0..length).map(|b| (b * 31 + n + round) as u8).collect();
                batch.push(receivers[to].local_addr().unwrap(), &datagram);
                expected[to].push(datagram);
            }
            assert_eq!(batch.len(), expected[0].len() + expected[1].len());
            batch.flush(&state, &sender).unwrap();
            assert!(batch.is_empty());
            for (receiver, expected) in receivers.iter().zip(&expected) {
                let received = receive_all(receiver, expected.len());
                assert!(received
                    .iter()
                    .all(|(from, _)| *from == sender.local_addr().unwrap()));
                let received: Vec<Vec<u8>> = received.into_iter().map(|(_, d)| d).collect();
                assert_eq!(received.len(), expected.len(), "round {round}");
                assert!(
                    received == *expected,
                    "round {round}: bytes or order differ"
                );
            }
        }
    }

    /// A datagram the socket refuses (here one to an address of another family, and one larger
    /// than UDP carries) is dropped with its error returned, and everything around it still
    /// goes, in order.
    #[test]
    fn a_refused_datagram_is_dropped_and_the_rest_still_goes() {
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let state = quinn_udp::UdpSocketState::new((&sender).into()).unwrap();
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = receiver.local_addr().unwrap();
        let elsewhere: SocketAddr = "[::1]:9".parse().unwrap();
        let mut batch = SendBatch::default();
        batch.push(to, &[1; 1200]);
        batch.push(to, &[2; 1200]);
        batch.push(elsewhere, &[3; 1200]);
        batch.push(elsewhere, &[4; 1200]);
        batch.push(to, &[5; 1200]);
        // Larger than any UDP datagram.
        batch.push(to, &vec![9; 70_000]);
        batch.push(to, &[6; 10]);
        assert!(batch.flush(&state, &sender).is_err());
        assert!(
            batch.is_empty(),
            "nothing is kept after an error but a full buffer"
        );
        let received: Vec<u8> = receive_all(&receiver, 4)
            .iter()
            .map(|(_, d)| d[0])
            .collect();
        assert_eq!(received, [1, 2, 5, 6]);
        // The socket is still usable, with GSO or without.
        batch.push(to, &[7; 1200]);
        batch.push(to, &[8; 1200]);
        batch.flush(&state, &sender).unwrap();
        let received: Vec<u8> = receive_all(&receiver, 2)
            .iter()
            .map(|(_, d)| d[0])
            .collect();
        assert_eq!(received, [7, 8]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]

        /// Whatever is pushed, the runs cut the batch into consecutive pieces, each one
        /// destination, equal lengths but a shorter last, no empty datagram among several,
        /// within the segments and bytes of one send.
        #[test]
        fn runs_cut_any_batch_into_sendable_pieces(
            datagrams in proptest::collection::vec((0u16..3, proptest::sample::select(vec![0usize, 1, 3, 700, 1200, 1229, 1229, 1229, 1500, 9000, 65_507])), 0..300),
            most in 1usize..=64,
        ) {
            let datagrams: Vec<(SocketAddr, usize)> = datagrams
                .into_iter()
                .map(|(port, length)| (SocketAddr::from(([127, 0, 0, 1], 1 + port)), length))
                .collect();
            let batch = batch_of(&datagrams);
            let mut first = 0;
            while first < datagrams.len() {
                let (count, bytes) = batch.run_at(first, most);
                let run = &datagrams[first..first + count];
                proptest::prop_assert!(count >= 1 && count <= most);
                proptest::prop_assert_eq!(bytes, run.iter().map(|(_, l)| l).sum::<usize>());
                if count > 1 {
                    proptest::prop_assert!(bytes <= MAX_RUN_BYTES);
                    proptest::prop_assert!(run.iter().all(|(to, _)| *to == run[0].0));
                    proptest::prop_assert!(run[..count - 1].iter().all(|(_, l)| *l == run[0].1));
                    proptest::prop_assert!(run[count - 1].1 <= run[0].1 && run[count - 1].1 > 0);
                }
                first += count;
            }
        }
    }

    /// Random batches through real sockets, against the reference of each datagram on its
    /// own: every receiver gets exactly what was sent to it, byte for byte and in order.
    #[test]
    fn random_batches_arrive_as_datagrams_sent_one_by_one_would() {
        use rand::{Rng, SeedableRng};
        let mut random = rand::rngs::StdRng::seed_from_u64(20_261_207);
        let (sender, state, receivers) = sender_and_receivers(3);
        let mut batch = SendBatch::default();
        for round in 0..40 {
            let mut expected: Vec<Vec<Vec<u8>>> = vec![Vec::new(); receivers.len()];
            let mut length = 1229;
            for _ in 0..random.gen_range(1..200) {
                // Mostly runs of one length, as a peer sends; now and then another length.
                if random.gen_bool(0.2) {
                    length = random.gen_range(0..1500);
                }
                let to = if random.gen_bool(0.8) {
                    0
                } else {
                    random.gen_range(0..receivers.len())
                };
                let datagram: Vec<u8> = (0..length).map(|_| random.r#gen()).collect();
                batch.push(receivers[to].local_addr().unwrap(), &datagram);
                expected[to].push(datagram);
            }
            batch.flush(&state, &sender).unwrap();
            for (receiver, expected) in receivers.iter().zip(&expected) {
                let received: Vec<Vec<u8>> = receive_all(receiver, expected.len())
                    .into_iter()
                    .map(|(_, d)| d)
                    .collect();
                assert!(received == *expected, "round {round}");
            }
        }
    }
}
