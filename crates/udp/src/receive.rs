//! Batched reads: every datagram waiting on a socket in one call (`recvmmsg`, and GRO where the
//! kernel coalesces), through quinn-udp's safe API.

use std::net::SocketAddr;

/// Bytes of one receive slot: the largest UDP datagram, and the largest list of datagrams GRO
/// coalesces (the kernel stops a list at 64 KiB), so nothing is cut short.
const SLOT_BYTES: usize = 64 * 1024;

/// Where datagrams are read into: [`quinn_udp::BATCH_SIZE`] slots of 64 KiB (2 MiB on Linux).
/// Keep one per thread and share it among the sockets that thread reads (a read never crosses
/// an await), not one per socket: [`with_thread_slots`] does that.
pub struct ReceiveSlots {
    bytes: Vec<u8>,
    meta: [quinn_udp::RecvMeta; quinn_udp::BATCH_SIZE],
}

thread_local! {
    /// This worker thread's slots, made at its first read.
    static RECEIVE_SLOTS: std::cell::RefCell<Option<ReceiveSlots>> = const { std::cell::RefCell::new(None) };
}

/// Run `read` with this thread's slots (made the first time). `read` must not await.
///
/// ```
/// # fn main() -> std::io::Result<()> {
/// let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
/// socket.set_nonblocking(true)?;
/// let state = quinn_udp::UdpSocketState::new((&socket).into())?;
/// let read = consult_udp::with_thread_slots(|slots| slots.read(&state, &socket, |_, _| {}));
/// // Nothing was sent: a non-blocking socket has nothing to read.
/// assert_eq!(read.unwrap_err().kind(), std::io::ErrorKind::WouldBlock);
/// # Ok(())
/// # }
/// ```
pub fn with_thread_slots<R>(read: impl FnOnce(&mut ReceiveSlots) -> R) -> R {
    RECEIVE_SLOTS.with_borrow_mut(|slots| read(slots.get_or_insert_with(ReceiveSlots::new)))
}

impl Default for ReceiveSlots {
    fn default() -> Self {
        Self::new()
    }
}

impl ReceiveSlots {
    /// Slots for one thread's reads.
    pub fn new() -> Self {
        Self {
            bytes: vec![0; SLOT_BYTES * quinn_udp::BATCH_SIZE],
            meta: [quinn_udp::RecvMeta::default(); quinn_udp::BATCH_SIZE],
        }
    }

    /// Read what waits on `socket` (a standard or a tokio socket; one `recvmmsg` on Linux) and hand every datagram to
    /// `each`, with its source. Returns how many datagrams were read, and whether the socket
    /// may hold more (every slot was filled).
    ///
    /// # Errors
    /// The socket's: [`std::io::ErrorKind::WouldBlock`] when a non-blocking socket has nothing.
    pub fn read<S>(
        &mut self,
        state: &quinn_udp::UdpSocketState,
        socket: &S,
        mut each: impl FnMut(SocketAddr, &[u8]),
    ) -> std::io::Result<(usize, bool)>
    where
        for<'s> &'s S: Into<quinn_udp::UdpSockRef<'s>>,
    {
        let filled = {
            let mut chunks = self.bytes.chunks_mut(SLOT_BYTES);
            let mut slices: [std::io::IoSliceMut<'_>; quinn_udp::BATCH_SIZE] =
                std::array::from_fn(|_| {
                    std::io::IoSliceMut::new(chunks.next().unwrap_or_default())
                });
            state.recv(socket.into(), &mut slices, &mut self.meta)?
        };
        let mut datagrams = 0;
        for (meta, slot) in self.meta[..filled]
            .iter()
            .zip(self.bytes.chunks(SLOT_BYTES))
        {
            let received = &slot[..meta.len.min(slot.len())];
            // With GRO, the datagrams of one slot lie `stride` bytes apart (the last may be shorter).
            for datagram in received.chunks(meta.stride.max(1)) {
                each(meta.addr, datagram);
                datagrams += 1;
            }
        }
        Ok((datagrams, filled == quinn_udp::BATCH_SIZE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::{Duration, Instant};

    /// The batched reads: every datagram once, in order, whole (the largest IPv4 takes too),
    /// from its sender, with "more" said only while a batch came back full, and nothing handed
    /// over for an empty datagram.
    #[test]
    fn batched_reads_hand_over_every_datagram_whole_and_in_order() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        let state = quinn_udp::UdpSocketState::new((&receiver).into()).unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = receiver.local_addr().unwrap();
        let mut slots = ReceiveSlots::new();
        // Two rounds, each within the socket's default receive buffer.
        let rounds: [Vec<Vec<u8>>; 2] = [
            (0..quinn_udp::BATCH_SIZE * 2 + 5)
                .map(|i| (0..1 + (i * 97) % 1400).map(|b| (b + i) as u8).collect())
                .collect(),
            vec![Vec::new(), vec![0xa5; 65_507], vec![7; 3]],
        ];
        for (round, sent) in rounds.iter().enumerate() {
            for datagram in sent {
                sender.send_to(datagram, to).unwrap();
            }
            let expected: Vec<&Vec<u8>> = sent.iter().filter(|d| !d.is_empty()).collect();
            let mut received = Vec::new();
            let mut batches = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(5);
            while received.len() < expected.len() && Instant::now() < deadline {
                match slots.read(&state, &receiver, |from, datagram| {
                    assert_eq!(from, sender.local_addr().unwrap());
                    received.push(datagram.to_vec());
                }) {
                    Ok(batch) => batches.push(batch),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            assert!(
                received.iter().eq(expected.iter().copied()),
                "round {round}"
            );
            assert!(
                batches
                    .iter()
                    .all(|(n, more)| !more || *n >= quinn_udp::BATCH_SIZE),
                "{batches:?}"
            );
            if round == 0 {
                assert!(
                    batches.iter().filter(|(_, more)| *more).count() >= 2,
                    "{batches:?}"
                );
            }
        }
        assert!(matches!(
            slots.read(&state, &receiver, |_, _| panic!("nothing more was sent")),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        ));
    }
}
