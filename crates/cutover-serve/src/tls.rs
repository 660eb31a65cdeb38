//! HTTPS for `--tls-cert`/`--tls-key`: rustls, with handshakes done off
//! the accept loop (a client that stalls its handshake holds no one else).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cutover_engine::EngineError;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::guard::Guarded;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub fn config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, EngineError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| {
            EngineError::usage(
                format!("--tls-cert {}: {e}", cert.display()),
                "give a PEM file with the certificate chain, leaf first",
            )
        })?;
    if certs.is_empty() {
        return Err(EngineError::usage(
            format!("--tls-cert {} holds no certificate", cert.display()),
            "give a PEM file with the certificate chain, leaf first",
        ));
    }
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key)
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        if mode & 0o077 != 0 {
            return Err(EngineError::usage(
                format!(
                    "--tls-key {} can be read by other users (mode {:o})",
                    key.display(),
                    mode & 0o777
                ),
                format!("chmod 600 {}", key.display()),
            ));
        }
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        EngineError::usage(
            format!("--tls-key {}: {e}", key.display()),
            "give a PEM file with the certificate's private key",
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| {
            EngineError::usage(
                format!("the TLS certificate and key do not make a server: {e}"),
                "check that --tls-key is the key of --tls-cert",
            )
        })?;
    Ok(Arc::new(cfg))
}

/// Accepted, handshaken TLS connections.
pub struct TlsListener {
    rx: mpsc::Receiver<(Guarded<TlsStream<TcpStream>>, SocketAddr)>,
    local: std::io::Result<SocketAddr>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, cfg: Arc<rustls::ServerConfig>) -> TlsListener {
        let local = tcp.local_addr();
        let (tx, rx) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(cfg);
        let slots = Arc::new(tokio::sync::Semaphore::new(crate::guard::MAX_CONNECTIONS));
        tokio::spawn(async move {
            loop {
                // A handshake in progress holds a slot too.
                let permit = crate::guard::slot(&slots).await;
                let Ok((stream, peer)) = tcp.accept().await else {
                    // Out of descriptors, say: try again shortly.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    if let Ok(Ok(tls)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        let _ = tx.send((Guarded::new(tls, permit), peer)).await;
                    }
                });
            }
        });
        TlsListener { rx, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = Guarded<TlsStream<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        match &self.local {
            Ok(a) => Ok(*a),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}
