//! Serving over TLS, optionally mutual (mTLS), with certificates re-read while serving. The
//! server certificate and key, the client CA and the identity mapping (`auth::certs`) are files;
//! a watcher checks their contents every `tls_reload_interval_ms` and, when one
//! changed, builds a new rustls `ServerConfig` (ring) that every later handshake uses. A file
//! that fails to load leaves the previous configuration in force (and is logged).
//!
//! Handshakes run on their own tasks with a deadline, so a slow or hostile client cannot hold
//! up accepting others; connections that fail the handshake (a certificate from another CA, no
//! certificate when one is required) never reach gRPC.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;

use crate::auth::certs::CertIdentities;

/// Longest TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections handshaken but not yet taken by the server.
pub const ACCEPTED_BACKLOG: usize = 256;
/// Most concurrent handshakes.
pub const HANDSHAKES_MAX: usize = 1_024;

/// The files TLS is served from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Verify client certificates against this CA (mTLS).
    pub client_ca: Option<PathBuf>,
    /// With a client CA: accept connections without a client certificate (they then need a
    /// bearer credential). Certificates that are presented are verified either way.
    pub client_cert_optional: bool,
    /// Client certificate names → tenant and role.
    pub identities: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> Vec<&Path> {
        [Some(self.cert.as_path()), Some(self.key.as_path()), self.client_ca.as_deref(), self.identities.as_deref()].into_iter().flatten().collect()
    }
}

/// The TLS configuration in force, and how to renew it.
pub struct Reloadable {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    stamps: Mutex<Vec<Option<[u8; 32]>>>,
    pub identities: CertIdentities,
}

/// Why the TLS files could not be used.
#[derive(Debug, thiserror::Error)]
#[error("tls: {0}")]
pub struct TlsError(String);

/// The files' contents as hashes: a change is seen whatever the file system's timestamps do
/// (the files are small; reading them each interval costs nothing).
fn stamps(files: &TlsFiles) -> Vec<Option<[u8; 32]>> {
    use sha2::Digest as _;
    files.paths().iter().map(|p| std::fs::read(p).ok().map(|bytes| sha2::Sha256::digest(bytes).into())).collect()
}

/// Builds a server configuration from the files.
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let err = |what: &str, path: &Path, e: &dyn std::fmt::Display| TlsError(format!("{what} {}: {e}", path.display()));
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| err("certificate", &files.cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| err("certificate", &files.cert, &e))?;
    if chain.is_empty() {
        return Err(err("certificate", &files.cert, &"no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| err("key", &files.key, &e))?;
    let builder = ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().map_err(|e| TlsError(e.to_string()))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| err("client CA", ca, &e))? {
                roots.add(cert.map_err(|e| err("client CA", ca, &e))?).map_err(|e| err("client CA", ca, &e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if files.client_cert_optional { verifier.allow_unauthenticated() } else { verifier };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| err("client CA", ca, &e))?)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| err("certificate", &files.cert, &e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

impl Reloadable {
    /// Loads every file; any failure stops start-up.
    pub fn load(files: TlsFiles) -> Result<Arc<Reloadable>, TlsError> {
        let identities = CertIdentities::default();
        if let Some(path) = &files.identities {
            identities.load(path).map_err(TlsError)?;
        }
        let config = server_config(&files)?;
        Ok(Arc::new(Reloadable { stamps: Mutex::new(stamps(&files)), files, current: RwLock::new(Arc::new(config)), identities }))
    }

    /// The configuration new handshakes use.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reloads when a file changed; returns whether a new configuration is in force.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamps(&self.files);
        {
            let mut seen = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return Ok(false);
            }
            *seen = now;
        }
        let config = server_config(&self.files)?;
        if let Some(path) = &self.files.identities {
            self.identities.load(path).map_err(TlsError)?;
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        tracing::info!("tls certificates reloaded");
        Ok(true)
    }

    /// Checks the files every `interval` until `stop`.
    pub async fn watch(self: Arc<Self>, interval: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => return,
            }
            if let Err(err) = self.reload_if_changed() {
                tracing::warn!(error = %err, "tls reload failed, the previous certificates stay in force");
            }
        }
    }
}

/// The stream of handshaken connections on `listener`, for `serve_with_incoming_shutdown`. The
/// accept loop ends when the stream is dropped.
pub fn incoming(listener: TcpListener, tls: Arc<Reloadable>) -> tokio_stream::wrappers::ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(ACCEPTED_BACKLOG);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_MAX));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::debug!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                tracing::warn!(peer = %peer, "too many tls handshakes in progress, connection dropped");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(err)) => tracing::debug!(peer = %peer, error = %err, "tls handshake refused"),
                    Err(_) => tracing::debug!(peer = %peer, "tls handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
