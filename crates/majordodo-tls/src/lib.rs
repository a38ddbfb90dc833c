//! TLS for Majordodo's two ports and its clients, on rustls with the `ring` provider.
//!
//! - Server side ([`ServerTls`]): a certificate chain and key read from PEM files, optionally a
//!   CA whose certificates clients must present (the worker port's client-certificate
//!   authentication). [`ServerTls::accept`] wraps an accepted socket at once and performs the
//!   handshake on the stream's first read or write (bounded by [`HANDSHAKE_TIMEOUT`]), so an
//!   accept loop never waits on a slow peer. [`ServerTls::reload`] (on SIGHUP) and
//!   [`ServerTls::watch`] (on a change of the files) swap the configuration for new handshakes;
//!   connections already established keep their session.
//! - Worker identity ([`check_worker_identity`]): a worker's client certificate binds the
//!   worker ids it may connect as through its subjectAltName DNS names.
//! - Client side ([`client_config`], [`connect`]): servers are always verified, against the
//!   system's roots or the certificates of a CA file.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use rustls::ClientConfig;

/// Longest a peer may take to complete the TLS handshake after the connection was accepted:
/// a peer that stalls it (a slowloris on the handshake) is cut off after this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often [`ServerTls::watch`] looks at the certificate files for a change.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// A TLS setting that cannot be used. Not retryable: fix the files or the configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file holds no usable PEM item of the kind expected.
    #[error("{}: {what}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong, for example `no certificate found`.
        what: String,
    },
    /// rustls refused the certificates or the key (for example a key that does not match the
    /// certificate, or a CA certificate it cannot parse).
    #[error("{what}: {source}")]
    Rustls {
        /// What was being built.
        what: String,
        /// Why.
        source: rustls::Error,
    },
    /// A client-certificate verifier could not be built from the CA file.
    #[error("client CA {}: {source}", path.display())]
    ClientCa {
        /// The CA file.
        path: PathBuf,
        /// Why.
        source: rustls::server::VerifierBuilderError,
    },
}

/// The files of a server's TLS configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// PEM certificate chain, the server's certificate first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of that certificate.
    pub key_file: PathBuf,
    /// PEM certificates of the CA(s) that issue client certificates; set, every client must
    /// present a certificate issued by one of them.
    pub client_ca_file: Option<PathBuf>,
}

impl ServerTlsFiles {
    fn paths(&self) -> Vec<&Path> {
        let mut paths = vec![self.cert_file.as_path(), self.key_file.as_path()];
        paths.extend(self.client_ca_file.as_deref());
        paths
    }
}

/// The crypto provider of every configuration made here: rustls's `ring` provider.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads every certificate of a PEM file; at least one.
///
/// # Errors
/// [`TlsError`] when the file cannot be read or holds no certificate.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            what: format!("bad PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "no certificate found (expected -----BEGIN CERTIFICATE-----)".into(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        what: format!("no usable private key: {e}"),
    })
}

fn root_store(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|source| TlsError::Rustls {
            what: format!("CA certificate in {}", path.display()),
            source,
        })?;
    }
    Ok(roots)
}

fn server_config(files: &ServerTlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = load_certs(&files.cert_file)?;
    let key = load_key(&files.key_file)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions");
    let builder = match &files.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(ca)?), provider())
                    .build()
                    .map_err(|source| TlsError::ClientCa {
                        path: ca.clone(),
                        source,
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|source| TlsError::Rustls {
            what: format!(
                "certificate {} with key {}",
                files.cert_file.display(),
                files.key_file.display()
            ),
            source,
        })?;
    Ok(Arc::new(config))
}

/// What identifies a version of the files: each one's modification time and length.
type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(files: &ServerTlsFiles) -> Stamp {
    files
        .paths()
        .into_iter()
        .map(|p| {
            let meta = fs::metadata(p).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}

/// A server's TLS configuration, shared by its accept loop and whatever reloads it. Cloning
/// shares it.
#[derive(Clone)]
pub struct ServerTls {
    inner: Arc<Inner>,
}

struct Inner {
    /// Which port, in logs (`HTTP API`, `worker port`).
    what: &'static str,
    /// Where the configuration is read from, again on every reload.
    files: ServerTlsFiles,
    /// The configuration new handshakes use; replaced whole by a reload.
    current: RwLock<Arc<rustls::ServerConfig>>,
    /// The files' stamp when `current` was read, to notice a change.
    stamp: Mutex<Stamp>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("what", &self.inner.what)
            .field("files", &self.inner.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads `files` for the port named `what`.
    ///
    /// # Errors
    /// [`TlsError`] naming the file at fault.
    pub fn load(what: &'static str, files: ServerTlsFiles) -> Result<ServerTls, TlsError> {
        let stamp = stamp(&files);
        let config = server_config(&files)?;
        Ok(ServerTls {
            inner: Arc::new(Inner {
                what,
                files,
                current: RwLock::new(config),
                stamp: Mutex::new(stamp),
            }),
        })
    }

    /// The files it reads.
    pub fn files(&self) -> &ServerTlsFiles {
        &self.inner.files
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_cert(&self) -> bool {
        self.inner.files.client_ca_file.is_some()
    }

    /// Reads the files again; new handshakes use them, established connections are left alone.
    /// On an error the configuration in use is kept.
    ///
    /// # Errors
    /// [`TlsError`] naming the file at fault.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamp = stamp(&self.inner.files);
        let config = server_config(&self.inner.files)?;
        *self.inner.current.write().expect("no panic while held") = config;
        *self.inner.stamp.lock().expect("no panic while held") = stamp;
        info!(port = self.inner.what, "tls certificates reloaded");
        Ok(())
    }

    /// Reloads when a file changed since the last load (modification time or length);
    /// `Ok(true)` if it did.
    ///
    /// # Errors
    /// As [`ServerTls::reload`]; the change is noticed again next time.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamp(&self.inner.files);
        if *self.inner.stamp.lock().expect("no panic while held") == now {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }

    /// Checks the files every `interval` and reloads them when they changed, until `stop`. A
    /// reload that fails is logged and the certificates in use are kept.
    pub async fn watch(self, interval: Duration, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            let tls = self.clone();
            let result = tokio::task::spawn_blocking(move || tls.reload_if_changed()).await;
            if let Ok(Err(error)) = result {
                warn!(port = self.inner.what, %error, "tls certificates changed but cannot be used; keeping the previous ones");
            }
        }
    }

    /// Wraps an accepted socket; the handshake happens on the first read or write, with the
    /// configuration current at this call.
    pub fn accept(&self, socket: TcpStream) -> ServerStream {
        let config = self
            .inner
            .current
            .read()
            .expect("no panic while held")
            .clone();
        let accept = tokio_rustls::TlsAcceptor::from(config).accept(socket);
        ServerStream::Tls(Box::new(LazyTls::Handshaking {
            accept,
            deadline: Box::pin(tokio::time::sleep(HANDSHAKE_TIMEOUT)),
        }))
    }
}

/// Wraps an accepted socket in TLS when `tls` is set, else leaves it plain.
pub fn accept(tls: Option<&ServerTls>, socket: TcpStream) -> ServerStream {
    match tls {
        Some(tls) => tls.accept(socket),
        None => ServerStream::Plain(socket),
    }
}

/// An accepted connection, plain or TLS.
pub enum ServerStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS; boxed since the session is large.
    Tls(Box<LazyTls>),
}

/// A server-side TLS stream whose handshake runs on first use.
pub enum LazyTls {
    /// The handshake is in progress.
    Handshaking {
        /// The handshake.
        accept: tokio_rustls::Accept<TcpStream>,
        /// When it is given up.
        deadline: Pin<Box<tokio::time::Sleep>>,
    },
    /// The handshake completed.
    Ready(tokio_rustls::server::TlsStream<TcpStream>),
    /// The handshake failed; every further use fails.
    Failed,
}

impl ServerStream {
    /// Whether this connection is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, ServerStream::Tls(_))
    }

    /// The certificate the client presented, once the handshake completed (`None` for plain
    /// TCP, before the handshake, or when the client sent none).
    pub fn peer_certificate(&self) -> Option<&CertificateDer<'static>> {
        match self {
            ServerStream::Tls(tls) => match tls.as_ref() {
                LazyTls::Ready(stream) => stream.get_ref().1.peer_certificates()?.first(),
                _ => None,
            },
            ServerStream::Plain(_) => None,
        }
    }

    /// Drives the handshake; `Ready(Ok)` once the stream can carry data.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let ServerStream::Tls(tls) = self else {
            return Poll::Ready(Ok(()));
        };
        loop {
            match tls.as_mut() {
                LazyTls::Ready(_) => return Poll::Ready(Ok(())),
                LazyTls::Failed => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        "tls handshake failed",
                    )));
                }
                LazyTls::Handshaking { accept, deadline } => {
                    if deadline.as_mut().poll(cx).is_ready() {
                        **tls = LazyTls::Failed;
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "tls handshake timed out",
                        )));
                    }
                    match ready!(Pin::new(accept).poll(cx)) {
                        Ok(stream) => **tls = LazyTls::Ready(stream),
                        Err(error) => {
                            **tls = LazyTls::Failed;
                            return Poll::Ready(Err(error));
                        }
                    }
                }
            }
        }
    }
}

use std::future::Future;

impl AsyncRead for ServerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_ready(cx))?;
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ServerStream::Tls(tls) => match tls.as_mut() {
                LazyTls::Ready(s) => Pin::new(s).poll_read(cx, buf),
                _ => unreachable!("poll_ready returned Ok"),
            },
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_ready(cx))?;
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ServerStream::Tls(tls) => match tls.as_mut() {
                LazyTls::Ready(s) => Pin::new(s).poll_write(cx, buf),
                _ => unreachable!("poll_ready returned Ok"),
            },
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_ready(cx))?;
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ServerStream::Tls(tls) => match tls.as_mut() {
                LazyTls::Ready(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                _ => unreachable!("poll_ready returned Ok"),
            },
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerStream::Plain(s) => s.is_write_vectored(),
            ServerStream::Tls(_) => false,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_ready(cx))?;
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ServerStream::Tls(tls) => match tls.as_mut() {
                LazyTls::Ready(s) => Pin::new(s).poll_flush(cx),
                _ => unreachable!("poll_ready returned Ok"),
            },
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ServerStream::Tls(tls) => match tls.as_mut() {
                LazyTls::Ready(s) => Pin::new(s).poll_shutdown(cx),
                // Nothing was exchanged: there is no session to close.
                _ => Poll::Ready(Ok(())),
            },
        }
    }
}

/// Why a worker's client certificate does not allow the worker id it claims.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The port requires client certificates and the connection has none (a plain connection,
    /// or a handshake without one).
    #[error("no client certificate")]
    NoCertificate,
    /// The certificate does not parse.
    #[error("client certificate does not parse: {0}")]
    BadCertificate(String),
    /// The worker id is not a DNS name, so no certificate can name it.
    #[error("worker id {0:?} is not a DNS name, so no certificate can name it")]
    NotADnsName(String),
    /// The certificate names other worker ids.
    #[error("client certificate names {names:?}, not worker id {worker_id:?}")]
    NotNamed {
        /// The claimed id.
        worker_id: String,
        /// The DNS names of its subjectAltName.
        names: Vec<String>,
    },
}

/// Checks that `cert` (already verified against the client CA by the handshake) names
/// `worker_id` among the DNS names of its subjectAltName, as TLS server names are matched (the
/// subject's common name is not used; a wildcard name such as `*.workers.example` matches
/// every id one label under it).
///
/// # Errors
/// [`IdentityError`] saying what does not match.
pub fn check_worker_identity(
    cert: Option<&CertificateDer<'_>>,
    worker_id: &str,
) -> Result<(), IdentityError> {
    let cert = cert.ok_or(IdentityError::NoCertificate)?;
    let parsed = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    let name = ServerName::try_from(worker_id)
        .ok()
        .filter(|n| matches!(n, ServerName::DnsName(_)))
        .ok_or_else(|| IdentityError::NotADnsName(worker_id.to_owned()))?;
    parsed
        .verify_is_valid_for_subject_name(&name)
        .map_err(|_| IdentityError::NotNamed {
            worker_id: worker_id.to_owned(),
            names: parsed.valid_dns_names().map(str::to_owned).collect(),
        })
}

/// How a client verifies servers and, optionally, proves who it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// PEM certificates of the CA(s) to trust instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain presented to the server (a worker's client certificate).
    pub cert_file: Option<PathBuf>,
    /// Its private key; set with `cert_file`.
    pub key_file: Option<PathBuf>,
}

/// A client configuration that verifies servers: against the certificates of `files.ca_file`
/// when set (only those are trusted), else against the system's root certificates. With
/// `cert_file` and `key_file`, it presents that certificate when asked.
///
/// # Errors
/// [`TlsError`] naming the file at fault; without a CA file, when the system has no root
/// certificate.
pub fn client_config(files: &ClientTlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match &files.ca_file {
        Some(path) => root_store(path)?,
        None => system_roots()?,
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .with_root_certificates(roots);
    let config = match (&files.cert_file, &files.key_file) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|source| TlsError::Rustls {
                what: format!(
                    "client certificate {} with key {}",
                    cert.display(),
                    key.display()
                ),
                source,
            })?,
        (None, None) => builder.with_no_client_auth(),
        (Some(path), None) | (None, Some(path)) => {
            return Err(TlsError::Pem {
                path: path.clone(),
                what: "a client certificate needs both a certificate file and a key file".into(),
            });
        }
    };
    Ok(Arc::new(config))
}

fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        warn!(%error, "could not read some system root certificates");
    }
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(TlsError::Pem {
            path: PathBuf::from("(system root certificates)"),
            what: "none found; give a CA file (--ca-file) to verify the server".into(),
        });
    }
    Ok(roots)
}

/// A connection to a server, plain or TLS.
pub enum ClientStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS; boxed since the session is large.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Performs the TLS handshake on `socket` with a server that must present a certificate valid
/// for `host` (a DNS name or an IP address) and issued by a CA `config` trusts.
///
/// # Errors
/// The handshake's error; an untrusted or mismatched certificate reads
/// `invalid peer certificate: ...`.
pub async fn connect(
    config: Arc<ClientConfig>,
    host: &str,
    socket: TcpStream,
) -> io::Result<ClientStream> {
    let name = ServerName::try_from(host.to_owned()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host:?} is not a host name or IP address for TLS: {e}"),
        )
    })?;
    let stream = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_rustls::TlsConnector::from(config).connect(name, socket),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "tls handshake timed out"))??;
    Ok(ClientStream::Tls(Box::new(stream)))
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Whether a listen address (`host:port`) is on the loopback interface only: a loopback IP
/// address, or the name `localhost`. A wildcard or any other address is not.
pub fn is_loopback_listen(listen: &str) -> bool {
    if let Ok(addr) = listen.parse::<std::net::SocketAddr>() {
        return addr.ip().is_loopback();
    }
    match listen.rsplit_once(':') {
        Some((host, _port)) => host.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[cfg(test)]
mod tests;
