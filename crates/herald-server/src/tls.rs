//! TLS on the listener, so browsers can use `https://` and `wss://` without a proxy in front.
//!
//! The certificate chain and key named in the settings are loaded once at startup into a
//! [`TlsAcceptor`] (rustls with the `ring` provider, ALPN `http/1.1`); a file that cannot be
//! used is a startup error naming it. Each connection's handshake runs inside that
//! connection's own task, never in the accept loop, and is bounded by
//! `tls-handshake-timeout`, so a client that opens TCP and never says hello cannot hold a
//! socket. A client that speaks plain HTTP to the TLS port gets a `400` explaining that the
//! port wants TLS instead of a stream of alert bytes.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// A server-side TLS connection over TCP, as hyper and the WebSocket transport see it.
pub type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// The first byte of every TLS record that starts a handshake (content type 22).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Why the TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The certificate file is missing, unreadable, or holds no PEM certificate.
    #[error("cannot use TLS certificate file {path}: {message}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The key file is missing, unreadable, or holds no PEM private key.
    #[error("cannot use TLS key file {path}: {message}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Both files parse, but rustls refuses them (unsupported key type, key not matching the
    /// certificate, …).
    #[error("cannot use TLS certificate {cert} with key {key}: {message}")]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        message: String,
    },
}

/// Loads the PEM certificate chain (leaf first) and private key into an acceptor.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsSetupError> {
    let cert_error = |message: String| TlsSetupError::Certificate {
        path: cert.into(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| cert_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("no PEM `CERTIFICATE` block found".into()));
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsSetupError::Key {
        path: key.into(),
        message: match e {
            rustls::pki_types::pem::Error::NoItemsFound => "no PEM private key block found".into(),
            other => other.to_string(),
        },
    })?;
    let pair_error = |e: rustls::Error| TlsSetupError::Pair {
        cert: cert.into(),
        key: key.into(),
        message: e.to_string(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(pair_error)?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(pair_error)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Completes the server side of the handshake on `stream` within `limit`.
///
/// A client whose first bytes are not a TLS handshake record (plain HTTP sent to the TLS port)
/// is answered with a `400` JSON error and an error is returned.
pub async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    limit: Duration,
) -> io::Result<TlsStream> {
    let attempt = async {
        let mut first = [0u8; 1];
        if stream.peek(&mut first).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the TLS handshake",
            ));
        }
        if first[0] != TLS_HANDSHAKE_RECORD {
            refuse_plain_http(stream).await;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a TLS handshake (plain HTTP on the TLS port?)",
            ));
        }
        acceptor.accept(stream).await
    };
    match tokio::time::timeout(limit, attempt).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no TLS handshake within {limit:?}"),
        )),
    }
}

/// Answers a plain-text request on the TLS port with a `400` and closes, reading what the
/// client sent until it closes so the answer is not lost to a reset. Bounded by the caller's
/// handshake timeout.
async fn refuse_plain_http(stream: TcpStream) {
    const BODY: &str = r#"{"error":"this port speaks TLS: use https:// or wss://"}"#;
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    // The client is told or gone; the handshake error says why the connection ends.
    let _ = crate::admission::answer(stream, response.as_bytes()).await;
}
