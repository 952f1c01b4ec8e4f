//! TLS to the PostgreSQL server: `sslmode=require`, `verify-ca` and `verify-full` in the
//! store URL, with rustls (ring) as the daemon's own TLS, no OpenSSL.
//!
//! As libpq: `require` encrypts but does not check the server's certificate; `verify-ca`
//! checks that a trusted authority signed it; `verify-full` also that it names the host of
//! the URL. The trusted authorities are the file `sslrootcert=` names (PEM), else the
//! system's. `disable`, `prefer` and no `sslmode` connect without TLS (provisio does not
//! try TLS first as libpq's `prefer` does).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_postgres::Socket;

/// What the URL asks of TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsMode {
    /// No TLS (`disable`, `prefer`, nothing).
    Off,
    /// Encrypted, the certificate not checked.
    Require,
    /// Encrypted, the certificate signed by a trusted authority.
    VerifyCa,
    /// As `VerifyCa`, and naming the URL's host.
    VerifyFull,
}

impl TlsMode {
    /// The `sslmode` value.
    pub(crate) fn name(self) -> &'static str {
        match self {
            TlsMode::Off => "disable",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }
}

/// The URL's TLS settings, and the URL without the parameters tokio-postgres does not read
/// (`sslmode=verify-ca|verify-full` become `require`; `sslrootcert` is removed).
pub(crate) struct TlsSettings {
    pub(crate) url: String,
    pub(crate) mode: TlsMode,
    pub(crate) root_file: Option<String>,
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads `sslmode` and `sslrootcert` from the URL's query.
pub(crate) fn split_url(url: &str) -> TlsSettings {
    let Some((head, query)) = url.split_once('?') else {
        return TlsSettings {
            url: url.to_string(),
            mode: TlsMode::Off,
            root_file: None,
        };
    };
    let mut mode = TlsMode::Off;
    let mut root_file = None;
    let mut kept = Vec::new();
    for p in query.split('&') {
        match p.split_once('=') {
            Some(("sslmode", v)) => {
                mode = match v {
                    "require" => TlsMode::Require,
                    "verify-ca" => TlsMode::VerifyCa,
                    "verify-full" => TlsMode::VerifyFull,
                    // disable, prefer; anything else is tokio-postgres's to refuse.
                    _ => {
                        kept.push(p.to_string());
                        continue;
                    }
                };
                kept.push("sslmode=require".to_string());
            }
            Some(("sslrootcert", v)) => root_file = Some(percent_decode(v)),
            _ => kept.push(p.to_string()),
        }
    }
    let url = if kept.is_empty() {
        head.to_string()
    } else {
        format!("{head}?{}", kept.join("&"))
    };
    TlsSettings {
        url,
        mode,
        root_file,
    }
}

/// rustls's *ring* provider, as the daemon's own TLS (src/serve/tls.rs says why not
/// aws-lc-rs).
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client configuration for `mode` (`None`: no TLS).
pub(crate) fn client_config(
    mode: TlsMode,
    root_file: Option<&str>,
) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
    if mode == TlsMode::Off {
        return Ok(None);
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = if mode == TlsMode::Require {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match root_file {
            Some(file) => {
                use rustls::pki_types::pem::PemObject as _;
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
                    .and_then(|i| i.collect::<Result<_, _>>())
                    .map_err(|e| {
                        format!("cannot read the certificates of sslrootcert `{file}`: {e}")
                    })?;
                if certs.is_empty() {
                    return Err(format!("sslrootcert `{file}` holds no PEM certificate"));
                }
                for c in certs {
                    roots
                        .add(c)
                        .map_err(|e| format!("sslrootcert `{file}`: {e}"))?;
                }
            }
            None => {
                for c in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(c);
                }
                if roots.is_empty() {
                    return Err(format!("sslmode={} needs trusted authorities, and the system has none: name the CA's certificate with `sslrootcert=/path/ca.pem`", mode.name()));
                }
            }
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| e.to_string())?;
        if mode == TlsMode::VerifyCa {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyName(webpki)))
                .with_no_client_auth()
        } else {
            builder.with_webpki_verifier(webpki).with_no_client_auth()
        }
    };
    Ok(Some(Arc::new(config)))
}

/// `sslmode=require`: any certificate (the handshake's signatures are still checked).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `sslmode=verify-ca`: a trusted chain, whatever host it names.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Makes the TLS connection of each new session (never asked when the URL wants none:
/// its `sslmode` is then `disable`).
#[derive(Clone)]
pub(crate) struct MakeTls(pub(crate) Option<Arc<rustls::ClientConfig>>);

impl MakeTlsConnect<Socket> for MakeTls {
    type Stream = TlsStream;
    type TlsConnect = Connector;
    type Error = std::io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Connector, std::io::Error> {
        let name = ServerName::try_from(domain.to_string()).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("`{domain}` is not a host name for TLS: {e}"),
            )
        })?;
        Ok(Connector {
            config: self.0.clone(),
            name,
        })
    }
}

/// The TLS handshake of one session.
pub(crate) struct Connector {
    config: Option<Arc<rustls::ClientConfig>>,
    name: ServerName<'static>,
}

impl TlsConnect<Socket> for Connector {
    type Stream = TlsStream;
    type Error = std::io::Error;
    type Future = futures::future::BoxFuture<'static, Result<TlsStream, std::io::Error>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let config = self.config.ok_or_else(|| {
                std::io::Error::other("TLS was asked of a store URL that wants none")
            })?;
            let s = tokio_rustls::TlsConnector::from(config)
                .connect(self.name, stream)
                .await?;
            Ok(TlsStream(Box::new(s)))
        })
    }
}

/// A session's TLS stream.
pub(crate) struct TlsStream(Box<tokio_rustls::client::TlsStream<Socket>>);

impl AsyncRead for TlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl tokio_postgres::tls::TlsStream for TlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM without channel binding (the password exchange is still protected).
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_modes_become_require_and_the_root_file_is_taken_out() {
        let s = split_url(
            "postgres://u:p@db/x?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=3",
        );
        assert_eq!(s.mode, TlsMode::VerifyFull);
        assert_eq!(s.root_file.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(
            s.url,
            "postgres://u:p@db/x?sslmode=require&connect_timeout=3"
        );
        let s = split_url("postgres://u:p@db/x?sslmode=disable");
        assert_eq!(s.mode, TlsMode::Off);
        assert_eq!(s.url, "postgres://u:p@db/x?sslmode=disable");
        let s = split_url("postgres://u:p@db/x");
        assert_eq!(
            (s.mode, s.url.as_str()),
            (TlsMode::Off, "postgres://u:p@db/x")
        );
    }
}
