//! TLS for PostgreSQL connections (RDS refuses plain connections with rds.force_ssl).
//!
//! With `DATABASE_CA_FILE` the server's chain and host name are verified against those roots
//! and TLS is required (libpq's verify-full): never the plain connection that `sslmode=prefer`,
//! the default, falls back to when a server (or someone in between) declines TLS. Without it,
//! `sslmode=require` encrypts without checking the certificate, as libpq does.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's verifying modes, which tokio-postgres does not parse; both are verified in full here.
const LIBPQ_VERIFY_MODES: [&str; 2] = ["sslmode=verify-full", "sslmode=verify-ca"];

/// The connection settings of `url`, with the TLS mode that `ca_file` and the URL ask for
/// together; a contradiction between them stops the start instead of weakening either.
pub fn parse_url(url: &str, ca_file: Option<&Path>) -> anyhow::Result<tokio_postgres::Config> {
    let verify_requested = LIBPQ_VERIFY_MODES.iter().any(|mode| url.contains(mode));
    let url = LIBPQ_VERIFY_MODES.iter().fold(url.to_owned(), |url, mode| url.replace(mode, "sslmode=require"));
    let mut config = tokio_postgres::Config::from_str(&url).context("parsing the PostgreSQL DATABASE_URL")?;
    match ca_file {
        None if verify_requested => {
            anyhow::bail!("DATABASE_URL asks for sslmode=verify-full/verify-ca: set DATABASE_CA_FILE to the CA bundle")
        }
        None if config.get_ssl_mode() == SslMode::Require => {
            tracing::warn!("sslmode=require without DATABASE_CA_FILE: encrypted, but the server is not authenticated");
        }
        None => {}
        Some(_) => {
            anyhow::ensure!(
                config.get_ssl_mode() != SslMode::Disable,
                "DATABASE_CA_FILE is set but DATABASE_URL says sslmode=disable"
            );
            config.ssl_mode(SslMode::Require);
        }
    }
    Ok(config)
}

pub fn connector(ca_file: Option<&Path>) -> anyhow::Result<MakeRustlsConnect> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let config = match ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("reading DATABASE_CA_FILE {}", path.display()))?
            {
                roots.add(cert.context("parsing a certificate of DATABASE_CA_FILE")?)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(EncryptOnly(provider))).with_no_client_auth()
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

/// Accepts any certificate, but still checks that the server holds its key.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
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
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: Option<&str> = Some("ca.pem");

    fn mode(url: &str, ca_file: Option<&str>) -> Result<SslMode, String> {
        parse_url(url, ca_file.map(Path::new)).map(|c| c.get_ssl_mode()).map_err(|e| e.to_string())
    }

    #[test]
    fn a_ca_file_means_tls_is_required_whatever_the_url_leaves_open() {
        assert_eq!(mode("postgres://u@db/x", CA), Ok(SslMode::Require), "prefer would fall back to plain");
        assert_eq!(mode("postgres://u@db/x?sslmode=prefer", CA), Ok(SslMode::Require));
        assert_eq!(mode("postgres://u@db/x?sslmode=require", CA), Ok(SslMode::Require));
        assert_eq!(mode("postgres://u@db/x?sslmode=verify-full", CA), Ok(SslMode::Require));
        assert_eq!(mode("host=db user=u sslmode=verify-ca", CA), Ok(SslMode::Require));
        assert!(mode("postgres://u@db/x?sslmode=disable", CA).unwrap_err().contains("sslmode=disable"));
    }

    #[test]
    fn without_a_ca_file_the_url_decides_and_verification_cannot_be_asked_for() {
        assert_eq!(mode("postgres://u@db/x?sslmode=require", None), Ok(SslMode::Require));
        assert_eq!(mode("postgres://u@db/x?sslmode=disable", None), Ok(SslMode::Disable));
        assert_eq!(mode("postgres://u@db/x", None), Ok(SslMode::Prefer));
        let refused = mode("postgres://u@db/x?sslmode=verify-full", None).unwrap_err();
        assert!(refused.contains("DATABASE_CA_FILE"), "{refused}");
    }
}
