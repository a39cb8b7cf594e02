//! TLS under the WebSocket (feature `tls`): rustls with its `ring` crypto provider,
//! chosen explicitly so that no process-wide default provider has to exist.
//!
//! A connection is read by one thread and written by others, and rustls keeps one
//! state for both directions. So the state sits under a mutex that is never held
//! while waiting for the network, in either direction: a reader takes raw bytes from
//! the socket first, then the lock to decrypt them; a writer encrypts under the lock,
//! then sends outside it (under a second lock that keeps records in order).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

use crate::error::Error;
use crate::lock;
use crate::socket::arm_deadline;

/// TLS over one TCP connection.
pub(crate) struct TlsSocket {
    tcp: TcpStream,
    tls: Mutex<Connection>,
    /// Held while TLS output is taken from rustls and written to the socket, so records
    /// go out in order. Always taken before `tls`, and `tls` is never held while
    /// writing: a write blocked on a peer that does not read stops other writers, not
    /// the reader's decrypting.
    output: Mutex<()>,
    /// Raw bytes read from the socket that rustls could not take yet: it holds at most
    /// 16 KiB of decrypted data not read by us. Only the reading thread uses it.
    unread: Mutex<Vec<u8>>,
}

/// Decrypted data waiting in rustls past which no more raw bytes are fed to it.
const PLAINTEXT_HIGH: usize = 8 << 10;

impl TlsSocket {
    fn new(tcp: TcpStream, conn: Connection) -> Self {
        TlsSocket {
            tcp,
            tls: Mutex::new(conn),
            output: Mutex::new(()),
            unread: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn server(tcp: TcpStream, config: Arc<ServerConfig>) -> Result<Self, Error> {
        let conn = ServerConnection::new(config).map_err(Error::protocol)?;
        Ok(TlsSocket::new(tcp, conn.into()))
    }

    pub(crate) fn client(
        tcp: TcpStream,
        config: Arc<ClientConfig>,
        host: &str,
    ) -> Result<Self, Error> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| Error::InvalidUrl(format!("{host}: {e}")))?;
        let conn = ClientConnection::new(config, name).map_err(Error::protocol)?;
        Ok(TlsSocket::new(tcp, conn.into()))
    }

    pub(crate) fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Send whatever rustls has queued (handshake messages, alerts), taking the locks
    /// in order; the caller holds neither.
    fn send_queued(&self) -> io::Result<()> {
        let _output = lock(&self.output);
        let bytes = take_output(&mut lock(&self.tls))?;
        (&self.tcp).write_all(&bytes)
    }

    /// Read plaintext; with a `deadline` (the handshake's), every socket read is held
    /// to it, so a peer sending a record a byte at a time cannot stretch it.
    pub(crate) fn read(&self, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<usize> {
        loop {
            let queued = {
                let mut tls = lock(&self.tls);
                match tls.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                tls.wants_write()
            };
            if queued {
                self.send_queued()?;
            }
            // No plaintext: feed rustls what it could not take before, or wait for the
            // network without holding a lock. The read timeout (handshake deadline,
            // heartbeat tick) surfaces here as usual.
            let mut unread = lock(&self.unread);
            if unread.is_empty() {
                let mut raw = [0u8; 4096];
                arm_deadline(&self.tcp, deadline)?;
                let n = (&self.tcp).read(&mut raw)?;
                if n == 0 {
                    // Tell rustls the peer closed the connection.
                    lock(&self.tls).read_tls(&mut &[][..])?;
                    continue;
                }
                unread.extend_from_slice(&raw[..n]);
            }
            let (processed, queued) = {
                let mut tls = lock(&self.tls);
                let mut rest = &unread[..];
                let processed = loop {
                    tls.read_tls(&mut rest)?;
                    match tls.process_new_packets() {
                        Err(e) => break Err(e),
                        // Past the high mark rustls would refuse more: keep the rest.
                        Ok(state)
                            if rest.is_empty()
                                || state.plaintext_bytes_to_read() >= PLAINTEXT_HIGH =>
                        {
                            break Ok(());
                        }
                        Ok(_) => {}
                    }
                };
                let consumed = unread.len() - rest.len();
                unread.drain(..consumed);
                (processed, tls.wants_write())
            };
            drop(unread);
            // Send what rustls has to say first (a handshake step, or the alert that
            // explains a failure).
            if queued {
                self.send_queued()?;
            }
            processed.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
    }

    /// Write all of `buf`: rustls takes at most its buffer limit at a time, so hand
    /// it what it accepts, send the records, repeat.
    pub(crate) fn write(&self, buf: &[u8]) -> io::Result<usize> {
        let _output = lock(&self.output);
        let mut rest = buf;
        while !rest.is_empty() {
            let bytes = {
                let mut tls = lock(&self.tls);
                let taken = tls.writer().write(rest)?;
                rest = &rest[taken..];
                if taken == 0 && !tls.wants_write() {
                    // Still handshaking with its buffer full: nothing can go out before
                    // the handshake ends, so let the buffer hold the rest.
                    tls.set_buffer_limit(None);
                }
                take_output(&mut tls)?
            };
            (&self.tcp).write_all(&bytes)?;
        }
        Ok(buf.len())
    }
}

/// What rustls has queued to send, taken out of it.
fn take_output(tls: &mut Connection) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    while tls.wants_write() {
        tls.write_tls(&mut bytes)?;
    }
    Ok(bytes)
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
            .map_err(Error::protocol)?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}
