//! The two system calls std has no safe wrapper for: entering a network namespace (`setns`) and
//! making a TUN device (`TUNSETIFF`). The only unsafe code of the crate.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;

/// Move the calling thread into the network namespace `/run/netns/{name}` (threads it starts
/// afterwards are born there; sockets it opens belong there for good).
pub fn enter_namespace(name: &str) -> io::Result<()> {
    let file = File::open(format!("/run/netns/{name}"))?;
    // SAFETY: `file` is an open namespace file for the duration of the call; setns only reads
    // the descriptor and changes the calling thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (the rest is padding).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Open a TUN device named `name` (IP packets, no packet information header) in the calling
/// thread's network namespace. The device goes when the file is closed.
pub fn open_tun(name: &str) -> io::Result<File> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad device name",
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut request = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: `request` is a valid, initialised `ifreq`-shaped buffer of the size the kernel
    // reads for TUNSETIFF, alive for the call; the descriptor is open.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// Wait until `file` is readable or `timeout_ms` passed; true when readable.
pub fn wait_readable(file: &File, timeout_ms: i32) -> io::Result<bool> {
    let mut fds = [libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: `fds` is a valid array of one pollfd for the duration of the call.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 1, timeout_ms) };
    match rc {
        n if n > 0 => Ok(true),
        0 => Ok(false),
        _ => {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(error)
            }
        }
    }
}
