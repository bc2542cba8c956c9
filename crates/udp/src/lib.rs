//! Batched UDP datagram I/O for the media paths: every datagram waiting on a socket in one read
//! (`recvmmsg`, and GRO where the kernel coalesces) with [`ReceiveSlots`], and runs of equal
//! datagrams to one destination in one send (GSO) with [`SendBatch`]. Both on quinn-udp's safe
//! API, on plain (non-blocking) standard sockets.
//!
//! A sans-IO peer is driven with them as: read a batch, hand each datagram to the peer (draining
//! its output now and then, see the peer's docs), gather what it transmits in a [`SendBatch`],
//! flush the batch once the peer waits for time or input.

mod receive;
mod send;

pub use receive::{with_thread_slots, ReceiveSlots};
pub use send::SendBatch;

/// Receive and send buffers asked for on a busy media socket (the kernel's default 208 KiB
/// drops datagrams at data-channel rates; the kernel may grant less, up to its
/// `net.core.rmem_max`/`wmem_max`, or twice this as Linux counts its bookkeeping).
pub const BUSY_SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Ask for [`BUSY_SOCKET_BUFFER_BYTES`] of receive and send buffer on `socket` (a standard or a
/// tokio socket).
///
/// # Errors
/// The socket's, if it refuses the option (the kernel grants less without an error).
pub fn enlarge_buffers<S>(state: &quinn_udp::UdpSocketState, socket: &S) -> std::io::Result<()>
where
    for<'s> &'s S: Into<quinn_udp::UdpSockRef<'s>>,
{
    state.set_recv_buffer_size(socket.into(), BUSY_SOCKET_BUFFER_BYTES)?;
    state.set_send_buffer_size(socket.into(), BUSY_SOCKET_BUFFER_BYTES)
}
