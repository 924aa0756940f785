//! TLS for every connection the bridge makes: the POS's replication connection (pgwire), and the ordinary
//! connections to the POS and the ERP (tokio-postgres), with rustls and ring.
//!
//! The connection URL (or key=value string) says what is wanted, as for libpq:
//! - `sslmode=disable`: never TLS;
//! - `sslmode=prefer` (the default): TLS when the server offers it, any certificate accepted (encryption only);
//! - `sslmode=require`: TLS or no connection, any certificate accepted;
//! - `sslmode=verify-ca`: TLS, and the server's certificate must chain to a certificate of `sslrootcert`;
//! - `sslmode=verify-full`: as verify-ca, and the certificate must name the host the URL connects to (its
//!   subjectAltName, a DNS name or an IP address).
//!
//! `sslrootcert=FILE` is a PEM file with one or more CA certificates. Given with `prefer` or `require`, the chain is
//! checked as for `verify-ca` (libpq does the same for `require`). Client certificates (`sslcert`, `sslkey`) are
//! not supported, nor is channel binding (SCRAM runs without it, as over a plain connection). The drivers see the
//! URL without `sslrootcert` and with `sslmode` as they know it (`require` for both verify modes); the checks are
//! the rustls verifiers here.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a connection asks of TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(v: &str) -> Result<SslMode, TlsError> {
        Ok(match v {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            // libpq's "allow" tries plain first: the bridge does not downgrade on purpose
            other => return Err(TlsError::Mode(other.to_string())),
        })
    }

    /// The mode as the drivers know it: they connect, the verifiers check.
    fn for_driver(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => "require",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Why a connection's TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "sslmode={0} is not supported; use disable, prefer, require, verify-ca or verify-full"
    )]
    Mode(String),
    #[error("sslmode={} needs sslrootcert=FILE, a PEM file with the CA certificate(s) that signed the server's certificate", .0.as_str())]
    RootCertNeeded(SslMode),
    #[error("sslrootcert {path}: {reason}")]
    RootCert { path: PathBuf, reason: String },
    #[error(
        "{0} is not supported (client certificates are not); remove it from the connection string"
    )]
    Unsupported(String),
    #[error("malformed connection string: {0}")]
    Malformed(&'static str),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS verifier: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
}

/// A connection string split into what the driver reads and what TLS needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The connection string for the driver: without `sslrootcert`, with the driver's `sslmode`.
    pub url: String,
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
}

fn percent_decode(s: &str) -> Result<String, TlsError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(TlsError::Malformed("a % not followed by two hex digits"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| TlsError::Malformed("a value that is not UTF-8"))
}

/// One `key = value` of a key=value connection string: the key, the value unquoted, the text as written.
fn kv_tokens(s: &str) -> Result<Vec<(String, String, String)>, TlsError> {
    let mut out = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= chars.len() {
            return Ok(out);
        }
        let start = i;
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            i += 1;
        }
        let key: String = chars[start..i].iter().collect();
        skip_ws(&mut i);
        if chars.get(i) != Some(&'=') {
            return Err(TlsError::Malformed("a key without = in a key=value string"));
        }
        i += 1;
        skip_ws(&mut i);
        let mut value = String::new();
        if chars.get(i) == Some(&'\'') {
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(TlsError::Malformed("an unterminated quoted value")),
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some('\\') => {
                        if let Some(c) = chars.get(i + 1) {
                            value.push(*c);
                        }
                        i += 2;
                    }
                    Some(c) => {
                        value.push(*c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < chars.len() && !chars[i].is_whitespace() {
                if chars[i] == '\\' {
                    if let Some(c) = chars.get(i + 1) {
                        value.push(*c);
                    }
                    i += 2;
                } else {
                    value.push(chars[i]);
                    i += 1;
                }
            }
        }
        let raw: String = chars[start..i.min(chars.len())].iter().collect();
        out.push((key, value, raw));
    }
}

/// Splits a connection URL (`postgres://...?sslmode=verify-full&sslrootcert=/etc/ca.pem`) or key=value string
/// into the driver's connection string and the TLS settings.
pub fn parse(url: &str) -> Result<Target, TlsError> {
    let mut mode = None;
    let mut root_cert = None;
    let mut take = |key: &str, value: String| -> Result<bool, TlsError> {
        match key {
            "sslmode" => mode = Some(SslMode::parse(&value)?),
            "sslrootcert" => root_cert = Some(PathBuf::from(value)),
            "sslcert" | "sslkey" | "sslpassword" => return Err(TlsError::Unsupported(key.into())),
            _ => return Ok(false),
        }
        Ok(true)
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if !take(&percent_decode(k)?, percent_decode(v)?)? {
                kept.push(pair);
            }
        }
        (base.to_string(), kept.join("&"), true)
    } else {
        let mut kept = Vec::new();
        for (k, v, raw) in kv_tokens(url)? {
            if !take(&k, v)? {
                kept.push(raw);
            }
        }
        (String::new(), kept.join(" "), false)
    };
    let mode = mode.unwrap_or(SslMode::Prefer);
    let (base, kept, is_url) = rest;
    let driver_mode = format!("sslmode={}", mode.for_driver());
    let url = if is_url {
        if kept.is_empty() {
            format!("{base}?{driver_mode}")
        } else {
            format!("{base}?{kept}&{driver_mode}")
        }
    } else if kept.is_empty() {
        driver_mode
    } else {
        format!("{kept} {driver_mode}")
    };
    Ok(Target {
        url,
        mode,
        root_cert,
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let bad = |reason: String| TlsError::RootCert {
        path: path.to_path_buf(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(Arc::new(roots))
}

/// Accepts any certificate (`prefer` and `require` without a CA file: encryption, no authentication), but still
/// checks that the server holds the key of the certificate it shows.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
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

/// `verify-ca`: the chain must lead to a trusted CA; the name in the certificate is not compared with the host.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // the full verifier checks the chain first and the name last: a name mismatch means the chain is good
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
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

impl Target {
    /// The rustls configuration for this target; None for `sslmode=disable`.
    pub fn client_config(&self) -> Result<Option<Arc<ClientConfig>>, TlsError> {
        if self.mode == SslMode::Disable {
            return Ok(None);
        }
        let provider = provider();
        let roots = self.root_cert.as_deref().map(load_roots).transpose()?;
        let verifier: Arc<dyn ServerCertVerifier> = match (self.mode, roots) {
            (SslMode::VerifyFull, Some(roots)) => {
                WebPkiServerVerifier::builder_with_provider(roots, provider.clone()).build()?
            }
            (_, Some(roots)) => Arc::new(ChainOnly(
                WebPkiServerVerifier::builder_with_provider(roots, provider.clone()).build()?,
            )),
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(TlsError::RootCertNeeded(self.mode))
            }
            (_, None) => Arc::new(AnyCertificate(provider.clone())),
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Some(Arc::new(config)))
    }
}

/// Checks a connection string's TLS settings (mode, CA file) before anything connects.
pub fn validate(url: &str) -> Result<(), TlsError> {
    parse(url)?.client_config().map(|_| ())
}

/// The TLS connector for pgwire's client (the replication connection), and the driver's connection string.
pub fn for_replication(
    url: &str,
) -> Result<(String, Option<tokio_rustls::TlsConnector>), TlsError> {
    let target = parse(url)?;
    let connector = target
        .client_config()?
        .map(tokio_rustls::TlsConnector::from);
    Ok((target.url, connector))
}

/// Why an ordinary connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{}", crate::pgerr::describe(.0))]
    Db(#[from] tokio_postgres::Error),
}

impl ConnectError {
    /// The server's error, when the server refused.
    pub fn db(&self) -> Option<&tokio_postgres::Error> {
        match self {
            ConnectError::Db(e) => Some(e),
            ConnectError::Tls(_) => None,
        }
    }
}

/// Connects to `url` with the TLS it asks for; the connection's driver runs as its own task.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, ConnectError> {
    let target = parse(url)?;
    let log_end = |r: Result<(), tokio_postgres::Error>| {
        if let Err(e) = r {
            tracing::debug!(error = %crate::pgerr::describe(&e), "connection ended");
        }
    };
    match target.client_config()? {
        None => {
            let (client, connection) =
                tokio_postgres::connect(&target.url, tokio_postgres::NoTls).await?;
            tokio::spawn(async move { log_end(connection.await) });
            Ok(client)
        }
        Some(config) => {
            let (client, connection) =
                tokio_postgres::connect(&target.url, MakeRustls(config)).await?;
            tokio::spawn(async move { log_end(connection.await) });
            Ok(client)
        }
    }
}

/// tokio-postgres's TLS hook, with rustls.
#[derive(Clone)]
pub struct MakeRustls(Arc<ClientConfig>);

impl tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket> for MakeRustls {
    type Stream = RustlsStream<tokio_postgres::Socket>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, io::Error> {
        let name = ServerName::try_from(domain.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(RustlsConnect {
            connector: tokio_rustls::TlsConnector::from(self.0.clone()),
            name,
        })
    }
}

/// One TLS handshake to a named server.
pub struct RustlsConnect {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

type Handshake<S> = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

impl<S> tokio_postgres::tls::TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Handshake<S>;

    fn connect(self, stream: S) -> Handshake<S> {
        Box::pin(async move {
            let tls = self.connector.connect(self.name, stream).await?;
            Ok(RustlsStream(Box::new(tls)))
        })
    }
}

/// A TLS session over a driver's socket.
pub struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.0.as_mut()).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.0.as_mut()).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.0.as_mut()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.0.as_mut()).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        tokio_postgres::tls::ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_everything_but_the_tls_settings_for_the_driver() {
        let t = parse(
            "postgres://bridge:p%40ss@pos42:5432/pos?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            t.url,
            "postgres://bridge:p%40ss@pos42:5432/pos?application_name=x&sslmode=require"
        );
        assert_eq!(t.mode, SslMode::VerifyFull);
        assert_eq!(t.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        let t = parse("postgres://bridge@pos42/pos").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (t.url.as_str(), t.mode),
            (
                "postgres://bridge@pos42/pos?sslmode=prefer",
                SslMode::Prefer
            )
        );
        let t =
            parse("host=pos42 password='a b\\'c' sslmode=verify-ca sslrootcert='/etc/my ca.pem'")
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.url, "host=pos42 password='a b\\'c' sslmode=require");
        assert_eq!(t.root_cert, Some(PathBuf::from("/etc/my ca.pem")));
        assert_eq!(
            parse("host=pos42 sslmode=disable")
                .map(|t| t.url)
                .unwrap_or_default(),
            "host=pos42 sslmode=disable"
        );
    }

    #[test]
    fn unsupported_settings_are_refused_with_what_to_do() {
        let e = |u: &str| parse(u).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e("postgres://h/db?sslmode=allow").contains("sslmode=allow is not supported"));
        assert!(e("postgres://h/db?sslcert=/c.pem").contains("sslcert is not supported"));
        assert!(e("host=h sslmode='verify-full").contains("unterminated"));
        let needs = parse("postgres://h/db?sslmode=verify-full")
            .and_then(|t| t.client_config())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(needs.contains("needs sslrootcert=FILE"), "{needs}");
        let missing = validate("postgres://h/db?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            missing.starts_with("sslrootcert /nonexistent/ca.pem: "),
            "{missing}"
        );
        assert!(validate("postgres://h/db?sslmode=require").is_ok());
        assert!(validate("postgres://h/db?sslmode=disable").is_ok());
    }
}
