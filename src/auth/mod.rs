//! Bearer-token authentication: HS256 with a shared secret, or RS256/ES256 against a JWKS.

mod jwks;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

pub use jwks::JwksCache;

/// Scope for the GET endpoints.
pub const SCOPE_READ: &str = "users:read";
/// Scope for the POST endpoints.
pub const SCOPE_WRITE: &str = "users:write";
/// Shortest HS256 secret accepted (RFC 7518 §3.2: at least the hash size).
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// OAuth 2.0 style: space-separated scopes (Cognito access tokens use this claim).
    #[serde(default)]
    pub scope: String,
}

impl Claims {
    pub fn has_scope(&self, wanted: &str) -> bool {
        self.scope.split_ascii_whitespace().any(|s| s == wanted)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("a bearer token is required")]
    Missing,
    #[error("the bearer token is invalid or expired")]
    Invalid,
    #[error("the token's signing keys cannot be fetched right now")]
    KeysUnavailable,
}

/// Settings that turn authentication on; `None` from `AuthSettings::from_config` means off.
#[derive(Debug, Clone)]
pub enum KeySource {
    Secret(Vec<u8>),
    Jwks(String),
}

pub struct Authenticator {
    keys: Keys,
    validation: Validation,
}

enum Keys {
    Secret(DecodingKey),
    Jwks(Arc<JwksCache>),
}

impl Authenticator {
    pub fn new(
        source: KeySource,
        issuer: Option<&str>,
        audience: Option<&str>,
        leeway: Duration,
    ) -> anyhow::Result<Self> {
        let (keys, algorithms) = match source {
            KeySource::Secret(secret) => {
                anyhow::ensure!(
                    secret.len() >= MIN_SECRET_BYTES,
                    "AUTH_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes"
                );
                (Keys::Secret(DecodingKey::from_secret(&secret)), vec![Algorithm::HS256])
            }
            KeySource::Jwks(url) => {
                anyhow::ensure!(
                    issuer.is_some() && audience.is_some(),
                    "AUTH_JWKS_URL needs AUTH_ISSUER and AUTH_AUDIENCE"
                );
                (Keys::Jwks(Arc::new(JwksCache::new(url)?)), vec![Algorithm::RS256, Algorithm::ES256])
            }
        };
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.leeway = leeway.as_secs();
        validation.validate_nbf = true;
        let mut required: HashSet<String> = ["exp".to_owned()].into();
        if let Some(issuer) = issuer {
            validation.set_issuer(&[issuer]);
            required.insert("iss".into());
        }
        if let Some(audience) = audience {
            validation.set_audience(&[audience]);
            required.insert("aud".into());
        } else {
            validation.validate_aud = false;
        }
        validation.required_spec_claims = required;
        Ok(Self { keys, validation })
    }

    /// Fetches JWKS keys ahead of the first request (no-op for a shared secret).
    pub async fn warm_up(&self) {
        if let Keys::Jwks(cache) = &self.keys
            && let Err(e) = cache.refresh().await
        {
            tracing::warn!(error = %e, "could not fetch JWKS at start; will retry on demand");
        }
    }

    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let decoded = match &self.keys {
            Keys::Secret(key) => jsonwebtoken::decode::<Claims>(token, key, &self.validation),
            Keys::Jwks(cache) => {
                let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
                if !self.validation.algorithms.contains(&header.alg) {
                    return Err(AuthError::Invalid);
                }
                let key = cache.key_for(header.kid.as_deref()).await?;
                // jsonwebtoken wants every allowed algorithm to fit the key (RS256 and ES256 never
                // both do), so each token is checked against its own, already allowed, algorithm;
                // a key of the other family still refuses it.
                let mut validation = self.validation.clone();
                validation.algorithms = vec![header.alg];
                jsonwebtoken::decode::<Claims>(token, &key, &validation)
            }
        };
        decoded.map(|data| data.claims).map_err(|_| AuthError::Invalid)
    }
}

/// Mints an HS256 token (for `users-api token`, local use and tests).
pub fn mint(secret: &[u8], claims: &Claims) -> anyhow::Result<String> {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret))
        .context("signing the token")
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn claims(scope: &str, exp: u64) -> Claims {
        Claims {
            sub: Some("tester".into()),
            exp,
            iat: None,
            iss: Some("issuer".into()),
            aud: Some("users-api".into()),
            scope: scope.into(),
        }
    }

    fn authenticator() -> Authenticator {
        Authenticator::new(
            KeySource::Secret(SECRET.to_vec()),
            Some("issuer"),
            Some("users-api"),
            Duration::from_secs(30),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_minted_token_verifies_and_carries_its_scopes() {
        let token = mint(SECRET, &claims("users:read users:write", now() + 60)).unwrap();
        let verified = authenticator().verify(&token).await.unwrap();
        assert!(verified.has_scope(SCOPE_READ) && verified.has_scope(SCOPE_WRITE));
        assert!(!verified.has_scope("users"));
    }

    #[tokio::test]
    async fn expired_forged_and_misaddressed_tokens_are_refused() {
        let auth = authenticator();
        let expired = mint(SECRET, &claims(SCOPE_READ, now() - 120)).unwrap();
        assert_eq!(auth.verify(&expired).await.unwrap_err(), AuthError::Invalid);
        let forged = mint(b"another-secret-another-secret-000", &claims(SCOPE_READ, now() + 60)).unwrap();
        assert_eq!(auth.verify(&forged).await.unwrap_err(), AuthError::Invalid);
        let mut wrong_audience = claims(SCOPE_READ, now() + 60);
        wrong_audience.aud = Some("someone-else".into());
        assert_eq!(auth.verify(&mint(SECRET, &wrong_audience).unwrap()).await.unwrap_err(), AuthError::Invalid);
        let mut no_audience = claims(SCOPE_READ, now() + 60);
        no_audience.aud = None;
        assert_eq!(auth.verify(&mint(SECRET, &no_audience).unwrap()).await.unwrap_err(), AuthError::Invalid);
        // alg=none: header {"alg":"none"} with an empty signature.
        let none = "eyJhbGciOiJub25lIn0.eyJleHAiOjk5OTk5OTk5OTksInNjb3BlIjoidXNlcnM6cmVhZCJ9.";
        assert_eq!(auth.verify(none).await.unwrap_err(), AuthError::Invalid);
    }

    #[test]
    fn a_short_secret_is_refused_at_start() {
        assert!(Authenticator::new(KeySource::Secret(b"short".to_vec()), None, None, Duration::ZERO).is_err());
    }
}
