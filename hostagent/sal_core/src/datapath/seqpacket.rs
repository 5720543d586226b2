//! The application's side of a datagram flow: one end of a Unix
//! `SOCK_SEQPACKET` socketpair (message boundaries and end of stream),
//! driven without blocking through tokio's reactor.
//!
//! Contract: one `send` = one message; `recv` returns one whole message and
//! its real length (`MSG_TRUNC`), so an oversized message is recognised and
//! dropped rather than cut. A read of 0 bytes is end of stream when the
//! peer hung up, else a zero-length message (not carried: ignored).
//! Ownership: [`AppMsgFd`] owns its fd and closes it when dropped.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;

/// A connected pair of Unix seqpacket sockets (close-on-exec).
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two fds socketpair writes.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socketpair succeeded, so both fds are open and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// True if `fd` is a `SOCK_SEQPACKET` socket.
pub(crate) fn is_seqpacket(fd: RawFd) -> bool {
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `ty` and `len` outlive the call; the kernel writes at most `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut ty as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    r == 0 && ty == libc::SOCK_SEQPACKET
}

fn cvt(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// What one read from the app produced.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AppRead {
    /// A message of this real length (may exceed the buffer: truncated).
    Message(usize),
    /// A zero-length message (not carried).
    Empty,
    /// The app closed its end.
    Eof,
}

/// A non-blocking seqpacket app fd registered with the runtime.
pub(crate) struct AppMsgFd {
    fd: AsyncFd<OwnedFd>,
}

impl AppMsgFd {
    /// Takes `fd`, makes it non-blocking and registers it (needs a runtime).
    pub(crate) fn new(fd: OwnedFd) -> io::Result<Self> {
        let raw = fd.as_raw_fd();
        // SAFETY: fcntl on an fd we own; no memory is passed.
        let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: an `OwnedFd` stays open until the `AsyncFd` (its sole owner) drops it.
        let fd = unsafe { AsyncFd::register(fd) }?;
        Ok(AppMsgFd { fd })
    }

    /// Reads one message into `buf`. Cancel-safe.
    pub(crate) async fn recv(&self, buf: &mut [u8]) -> io::Result<AppRead> {
        loop {
            let mut guard = self.fd.readable().await?;
            let r = guard.try_io(|inner| {
                // SAFETY: `buf` is valid for `buf.len()` bytes of writes.
                cvt(unsafe {
                    libc::recv(
                        inner.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_TRUNC,
                    )
                })
            });
            match r {
                Ok(Ok(0)) if self.hung_up() => return Ok(AppRead::Eof),
                Ok(Ok(0)) => return Ok(AppRead::Empty),
                Ok(Ok(n)) => return Ok(AppRead::Message(n)),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    fn hung_up(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let r = unsafe { libc::poll(&mut p, 1, 0) };
        r > 0 && p.revents & (libc::POLLHUP | libc::POLLRDHUP) != 0
    }

    /// Sends one message once the app's socket has room. Cancel-safe
    /// (a message is sent whole or not at all).
    pub(crate) async fn send(&self, msg: &[u8]) -> io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            let r = guard.try_io(|inner| {
                // SAFETY: `msg` is valid for `msg.len()` bytes of reads.
                cvt(unsafe {
                    libc::send(
                        inner.as_raw_fd(),
                        msg.as_ptr().cast(),
                        msg.len(),
                        libc::MSG_NOSIGNAL,
                    )
                })
            });
            if let Ok(r) = r {
                return r.map(|_| ());
            }
        }
    }

    /// End of our direction: the app reads end of stream.
    pub(crate) fn shutdown_write(&self) {
        // SAFETY: shutdown on our own socket fd.
        unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_WR) };
    }
}
