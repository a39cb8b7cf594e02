//! A connection's byte stream, plain TCP or TLS over it: read by one thread and
//! written by others at the same time (`&Socket` is `Read + Write`), and, where the
//! platform allows, written without waiting.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

/// A connection's byte stream: plain TCP, or TLS over it.
pub(crate) enum Socket {
    Plain(TcpStream),
    /// Boxed: the TLS state is large, a plain connection should not pay for it.
    #[cfg(feature = "tls")]
    Tls(Box<crate::tls::TlsSocket>),
}

impl Socket {
    fn tcp(&self) -> &TcpStream {
        match self {
            Socket::Plain(tcp) => tcp,
            #[cfg(feature = "tls")]
            Socket::Tls(tls) => tls.tcp(),
        }
    }

    pub(crate) fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.tcp().set_read_timeout(timeout)
    }

    /// How long a blocking write may wait for the peer to make room.
    pub(crate) fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.tcp().set_write_timeout(timeout)
    }

    /// Read, failing with `TimedOut` once `deadline` (if any) has passed, however the
    /// peer spaces out its bytes: TLS may need many socket reads for one read here.
    pub(crate) fn read_before(
        &self,
        buf: &mut [u8],
        deadline: Option<Instant>,
    ) -> io::Result<usize> {
        match self {
            Socket::Plain(tcp) => {
                arm_deadline(tcp, deadline)?;
                (&*tcp).read(buf)
            }
            #[cfg(feature = "tls")]
            Socket::Tls(tls) => tls.read(buf, deadline),
        }
    }

    /// Write what the kernel's send buffer takes now, without waiting: `Some(0)` when
    /// it is full. `None` where a write cannot be made without waiting (TLS, whose
    /// records are written whole, and platforms without `MSG_DONTWAIT`): the caller
    /// then leaves the write to a thread that may wait.
    ///
    /// A per-call flag rather than a non-blocking socket: the connection's reader
    /// blocks in `read` on the same socket at the same time.
    pub(crate) fn try_write(&self, bufs: &[IoSlice<'_>]) -> Option<io::Result<usize>> {
        match self {
            #[cfg(unix)]
            Socket::Plain(tcp) => {
                let socket = socket2::SockRef::from(tcp);
                let flags = libc::MSG_DONTWAIT | NO_SIGNAL;
                let sent = match bufs {
                    [one] => socket.send_with_flags(one, flags),
                    _ => socket.send_vectored_with_flags(bufs, flags),
                };
                Some(match sent {
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                        ) =>
                    {
                        Ok(0)
                    }
                    other => other,
                })
            }
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// Whether [`Socket::try_write`] can write at all.
    pub(crate) fn writes_without_waiting(&self) -> bool {
        cfg!(unix) && matches!(self, Socket::Plain(_))
    }

    /// Write what fits, waiting for room up to the write timeout. Like std's own
    /// writes, never raises SIGPIPE on a connection the peer has reset (a plain
    /// `writev` would, killing a host process that has not ignored it).
    pub(crate) fn write_waiting(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            #[cfg(unix)]
            Socket::Plain(tcp) => {
                socket2::SockRef::from(tcp).send_vectored_with_flags(bufs, NO_SIGNAL)
            }
            #[allow(unreachable_patterns)]
            _ => (&*self).write_vectored(bufs),
        }
    }

    /// Drop the TCP connection at once, waking a reader blocked on it.
    pub(crate) fn shutdown(&self) {
        let _ = self.tcp().shutdown(Shutdown::Both);
    }
}

/// The flag that keeps a send to a reset connection from raising SIGPIPE, where
/// there is one (elsewhere std sets `SO_NOSIGPIPE` on its sockets).
#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly"
))]
const NO_SIGNAL: libc::c_int = libc::MSG_NOSIGNAL;
#[cfg(all(
    unix,
    not(any(
        target_os = "linux",
        target_os = "android",
        target_os = "freebsd",
        target_os = "netbsd",
        target_os = "openbsd",
        target_os = "dragonfly"
    ))
))]
const NO_SIGNAL: libc::c_int = 0;

/// Set the read timeout to what is left before `deadline`; `TimedOut` if nothing is.
pub(crate) fn arm_deadline(tcp: &TcpStream, deadline: Option<Instant>) -> io::Result<()> {
    let Some(deadline) = deadline else {
        return Ok(());
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "handshake timed out",
        ));
    }
    tcp.set_read_timeout(Some(left))
}

impl Read for &Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_before(buf, None)
    }
}

impl Write for &Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Plain(tcp) => (&*tcp).write(buf),
            #[cfg(feature = "tls")]
            Socket::Tls(tls) => tls.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Socket::Plain(tcp) => (&*tcp).write_vectored(bufs),
            #[cfg(feature = "tls")]
            Socket::Tls(tls) => {
                let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
                tls.write(first)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    #[cfg(unix)]
    fn a_write_that_would_wait_takes_what_fits_and_returns() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        // The peer never reads: the buffers fill up and a blocking write would wait.
        let (_peer, _) = listener.accept().unwrap();
        let socket = Socket::Plain(tcp);
        let chunk = vec![7u8; 64 << 10];
        let mut total = 0;
        let full = (0..10_000).any(|_| {
            let n = socket.try_write(&[IoSlice::new(&chunk)]).unwrap().unwrap();
            total += n;
            n == 0
        });
        assert!(full, "the send buffer never filled ({total} bytes taken)");
        assert!(total > 0, "nothing was taken while there was room");
    }
}
