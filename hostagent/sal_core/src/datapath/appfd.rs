//! The application's side of a flow: a connected stream socket fd (a Unix
//! socketpair end, or a TCP socket for exposed servers) driven without
//! blocking through tokio's reactor.
//!
//! Ownership: an [`AppFd`] owns its fd and closes it when dropped.
//! [`AppFd::abort`] closes it so that a TCP peer sees a reset (SO_LINGER 0);
//! a Unix socket peer sees end of stream (Unix sockets have no reset).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;

/// Most queued chunks per write to the app ([`AppFd::write_vectored`]).
const WRITE_IOVECS: usize = 16;

/// Bytes queued for the app, in order: whole chunks as delivered (no
/// copy), the front one written from an offset.
#[derive(Default)]
pub(crate) struct AppQueue {
    chunks: VecDeque<Vec<u8>>,
    off: usize,
}

impl AppQueue {
    pub(crate) fn push(&mut self, chunk: Vec<u8>) {
        if !chunk.is_empty() {
            self.chunks.push_back(chunk);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// The next bytes to write, as up to `WRITE_IOVECS` slices.
    pub(crate) fn slices(&self) -> Vec<IoSlice<'_>> {
        let off = self.off;
        (self.chunks.iter().take(WRITE_IOVECS).enumerate())
            .map(|(i, b)| IoSlice::new(if i == 0 { &b[off..] } else { b }))
            .collect()
    }

    /// Drops the first `n` queued bytes (they were written).
    pub(crate) fn consume(&mut self, mut n: usize) {
        while let Some(front) = self.chunks.front() {
            let rest = front.len() - self.off;
            if n < rest {
                self.off += n;
                return;
            }
            n -= rest;
            self.chunks.pop_front();
            self.off = 0;
        }
    }
}

/// A non-blocking app fd registered with the runtime (create inside it).
pub(crate) struct AppFd {
    fd: AsyncFd<OwnedFd>,
}

fn cvt(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets SO_LINGER {on, 0}: closing the socket then resets a TCP connection.
pub(crate) fn set_zero_linger(fd: RawFd) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `l` outlives the call and its size is passed; errors (e.g. on
    // a Unix socket) are ignored on purpose.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// A connected pair of Unix stream sockets (close-on-exec).
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two fds socketpair writes.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
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

/// True if `fd` is an open file descriptor.
pub(crate) fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only queries the descriptor table.
    fd >= 0 && unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0
}

impl AppFd {
    /// Takes `fd`, makes it non-blocking and registers it (needs a runtime).
    pub(crate) fn new(fd: OwnedFd) -> io::Result<Self> {
        set_nonblocking(fd.as_raw_fd())?;
        // SAFETY: an `OwnedFd` is open, stays open and keeps its number
        // until the `AsyncFd` (its sole owner) is dropped.
        let fd = unsafe { AsyncFd::register(fd) }?;
        Ok(AppFd { fd })
    }

    /// Reads into `buf`; `Ok(0)` is end of stream. Cancel-safe.
    pub(crate) async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            let r = guard.try_io(|inner| {
                // SAFETY: `buf` is valid for `buf.len()` bytes of writes.
                cvt(unsafe { libc::read(inner.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
            });
            if let Ok(r) = r {
                return r;
            }
        }
    }

    /// Writes some of `bufs`, in order (`sendmsg`; never raises SIGPIPE). Cancel-safe.
    pub(crate) async fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.writable().await?;
            let r = guard.try_io(|inner| {
                // SAFETY: zeroed is a valid msghdr (no name, no control data).
                let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                // `IoSlice` is ABI-compatible with `iovec` on Unix; sendmsg
                // only reads through the pointer.
                msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
                msg.msg_iovlen = bufs.len() as _;
                // SAFETY: `msg` points at `bufs`, valid for the call.
                cvt(unsafe { libc::sendmsg(inner.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) })
            });
            if let Ok(r) = r {
                return r;
            }
        }
    }

    /// End of our stream to the app (it reads EOF); reading continues.
    pub(crate) fn shutdown_write(&self) {
        // SAFETY: shutdown on our own socket fd.
        unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_WR) };
    }

    /// Closes so that the app sees an error where the socket type allows.
    pub(crate) fn abort(self) {
        set_zero_linger(self.fd.as_raw_fd());
        drop(self);
    }
}
