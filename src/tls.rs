//! TLS under the WebSocket (feature `tls`): rustls with its `ring` crypto provider,
//! chosen explicitly so that no process-wide default provider has to exist.
//!
//! A connection is read by one thread and written by others, and rustls keeps one
//! state for both directions. So the state sits under a mutex that is never held
//! while waiting for the network to deliver: a reader takes raw bytes from the socket
//! first, then the lock to decrypt them. Writers lock, encrypt and send.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

use crate::error::Error;
use crate::lock;
use crate::transport::arm_deadline;

/// TLS over one TCP connection.
pub(crate) struct TlsSocket {
    tcp: TcpStream,
    tls: Mutex<Connection>,
}

impl TlsSocket {
    pub(crate) fn server(tcp: TcpStream, config: Arc<ServerConfig>) -> Result<Self, Error> {
        let conn = ServerConnection::new(config).map_err(|e| Error::Protocol(e.to_string()))?;
        Ok(TlsSocket {
            tcp,
            tls: Mutex::new(conn.into()),
        })
    }

    pub(crate) fn client(
        tcp: TcpStream,
        config: Arc<ClientConfig>,
        host: &str,
    ) -> Result<Self, Error> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| Error::InvalidUrl(format!("{host}: {e}")))?;
        let conn =
            ClientConnection::new(config, name).map_err(|e| Error::Protocol(e.to_string()))?;
        Ok(TlsSocket {
            tcp,
            tls: Mutex::new(conn.into()),
        })
    }

    pub(crate) fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Send whatever rustls has queued (handshake messages, records, alerts).
    fn flush(&self, tls: &mut Connection) -> io::Result<()> {
        while tls.wants_write() {
            tls.write_tls(&mut &self.tcp)?;
        }
        Ok(())
    }

    /// Read plaintext; with a `deadline` (the handshake's), every socket read is held
    /// to it, so a peer sending a record a byte at a time cannot stretch it.
    pub(crate) fn read(&self, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<usize> {
        loop {
            {
                let mut tls = lock(&self.tls);
                match tls.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                self.flush(&mut tls)?;
            }
            // No plaintext: wait for the network without holding the lock. The read
            // timeout (handshake deadline, heartbeat tick) surfaces here as usual.
            let mut raw = [0u8; 4096];
            arm_deadline(&self.tcp, deadline)?;
            let n = (&self.tcp).read(&mut raw)?;
            let mut tls = lock(&self.tls);
            let mut rest = &raw[..n];
            loop {
                // A zero-length read tells rustls the peer closed the connection.
                tls.read_tls(&mut rest)?;
                let processed = tls.process_new_packets();
                // Send what rustls has to say first (a handshake step, or the alert
                // that explains a failure).
                self.flush(&mut tls)?;
                if let Err(e) = processed {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
                if rest.is_empty() {
                    break;
                }
            }
        }
    }

    /// Write all of `buf`: rustls takes at most its buffer limit at a time, so hand
    /// it what it accepts, send the records, repeat.
    pub(crate) fn write(&self, buf: &[u8]) -> io::Result<usize> {
        let mut tls = lock(&self.tls);
        let mut rest = buf;
        while !rest.is_empty() {
            let taken = tls.writer().write(rest)?;
            rest = &rest[taken..];
            if taken == 0 && !tls.wants_write() {
                // Still handshaking with its buffer full: nothing can go out before
                // the handshake ends, so let the buffer hold the rest.
                tls.set_buffer_limit(None);
            }
            self.flush(&mut tls)?;
        }
        Ok(buf.len())
    }
}

/// The client's TLS settings when none are given: the Mozilla root certificates
/// (webpki-roots), with the ring provider.
pub(crate) fn default_client_config() -> Result<Arc<ClientConfig>, Error> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Protocol(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}
