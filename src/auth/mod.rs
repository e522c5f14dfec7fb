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
    /// One audience or several (RFC 7519 §4.1.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// OAuth 2.0 style: space-separated scopes (Cognito access tokens use this claim).
    #[serde(default)]
    pub scope: String,
    /// Cognito access tokens name the app client here instead of in `aud`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Cognito: `access` or `id`; only access tokens authorise API calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_use: Option<String>,
}

/// The `aud` claim: a string or an array of strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn contains(&self, wanted: &str) -> bool {
        match self {
            Self::One(aud) => aud == wanted,
            Self::Many(auds) => auds.iter().any(|aud| aud == wanted),
        }
    }
}

impl From<&str> for Audience {
    fn from(aud: &str) -> Self {
        Self::One(aud.to_owned())
    }
}

impl From<String> for Audience {
    fn from(aud: String) -> Self {
        Self::One(aud)
    }
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

/// What a token must satisfy besides its signature.
#[derive(Debug, Clone, Default)]
pub struct TokenPolicy {
    /// Required `iss` (required with a JWKS).
    pub issuer: Option<String>,
    /// Required in `aud`, or, for an access token without `aud`, as its `client_id` (Cognito).
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// Prefix of the resource server's scopes (`users-api/` makes `users-api/users:read` count
    /// as `users:read`); when set, scopes without it count for nothing.
    pub scope_prefix: Option<String>,
    /// Longest lifetime accepted: `exp - iat`, or `exp - now` when `iat` is absent.
    pub max_lifetime: Duration,
}

pub struct Authenticator {
    keys: Keys,
    validation: Validation,
    policy: TokenPolicy,
}

enum Keys {
    Secret(DecodingKey),
    Jwks(Arc<JwksCache>),
}

impl Authenticator {
    pub fn new(source: KeySource, policy: TokenPolicy) -> anyhow::Result<Self> {
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
                    policy.issuer.is_some() && policy.audience.is_some(),
                    "AUTH_JWKS_URL needs AUTH_ISSUER and AUTH_AUDIENCE"
                );
                (Keys::Jwks(Arc::new(JwksCache::new(url)?)), vec![Algorithm::RS256, Algorithm::ES256])
            }
        };
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.leeway = policy.leeway.as_secs();
        validation.validate_nbf = true;
        let mut required: HashSet<String> = ["exp".to_owned()].into();
        if let Some(issuer) = &policy.issuer {
            validation.set_issuer(&[issuer]);
            required.insert("iss".into());
        }
        // The audience is checked in `addressed_to_us`: a Cognito access token has none.
        validation.validate_aud = false;
        validation.required_spec_claims = required;
        Ok(Self { keys, validation, policy })
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
        let mut claims = decoded.map_err(|_| AuthError::Invalid)?.claims;
        if !self.addressed_to_us(&claims) || !self.lifetime_within_bounds(&claims) {
            return Err(AuthError::Invalid);
        }
        claims.scope = self.local_scopes(&claims.scope);
        Ok(claims)
    }

    fn addressed_to_us(&self, claims: &Claims) -> bool {
        // An ID token says who someone is, not what a client may do.
        if claims.token_use.as_deref().is_some_and(|usage| usage != "access") {
            return false;
        }
        let Some(audience) = &self.policy.audience else { return true };
        match &claims.aud {
            Some(aud) => aud.contains(audience),
            None => claims.token_use.as_deref() == Some("access") && claims.client_id.as_deref() == Some(audience),
        }
    }

    /// A stolen token is worth at most `max_lifetime`, whatever expiry its issuer wrote.
    fn lifetime_within_bounds(&self, claims: &Claims) -> bool {
        let now = now();
        let leeway = self.policy.leeway.as_secs();
        let max = self.policy.max_lifetime.as_secs();
        match claims.iat {
            Some(iat) => iat <= now.saturating_add(leeway) && claims.exp.saturating_sub(iat) <= max,
            None => claims.exp.saturating_sub(now) <= max.saturating_add(leeway),
        }
    }

    /// The token's scopes as this service names them: with a prefix, only prefixed scopes,
    /// the prefix removed.
    fn local_scopes(&self, scopes: &str) -> String {
        match &self.policy.scope_prefix {
            None => scopes.to_owned(),
            Some(prefix) => scopes
                .split_ascii_whitespace()
                .filter_map(|scope| scope.strip_prefix(prefix.as_str()))
                .collect::<Vec<_>>()
                .join(" "),
        }
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
            client_id: None,
            token_use: None,
        }
    }

    fn policy() -> TokenPolicy {
        TokenPolicy {
            issuer: Some("issuer".into()),
            audience: Some("users-api".into()),
            leeway: Duration::from_secs(30),
            scope_prefix: None,
            max_lifetime: Duration::from_secs(86_400),
        }
    }

    fn authenticator() -> Authenticator {
        Authenticator::new(KeySource::Secret(SECRET.to_vec()), policy()).unwrap()
    }

    async fn verify(auth: &Authenticator, claims: &Claims) -> Result<Claims, AuthError> {
        auth.verify(&mint(SECRET, claims).unwrap()).await
    }

    #[tokio::test]
    async fn aud_may_be_an_array_that_names_us() {
        let auth = authenticator();
        let mut many = claims(SCOPE_READ, now() + 60);
        many.aud = Some(Audience::Many(vec!["other".into(), "users-api".into()]));
        assert!(verify(&auth, &many).await.is_ok());
        many.aud = Some(Audience::Many(vec!["other".into(), "another".into()]));
        assert_eq!(verify(&auth, &many).await.unwrap_err(), AuthError::Invalid);
        many.aud = Some(Audience::Many(vec![]));
        assert_eq!(verify(&auth, &many).await.unwrap_err(), AuthError::Invalid);
    }

    #[tokio::test]
    async fn a_cognito_access_token_is_addressed_by_client_id_and_token_use() {
        let auth = authenticator();
        let access = Claims {
            aud: None,
            client_id: Some("users-api".into()),
            token_use: Some("access".into()),
            ..claims(SCOPE_READ, now() + 60)
        };
        assert!(verify(&auth, &access).await.is_ok());
        let cases = [
            ("another client", Claims { client_id: Some("other".into()), ..access.clone() }),
            ("no client_id", Claims { client_id: None, ..access.clone() }),
            ("no token_use", Claims { token_use: None, ..access.clone() }),
            ("an ID token", Claims { token_use: Some("id".into()), ..access.clone() }),
            (
                "an ID token with our aud",
                Claims { aud: Some("users-api".into()), token_use: Some("id".into()), ..access.clone() },
            ),
        ];
        for (what, claims) in cases {
            assert_eq!(verify(&auth, &claims).await.unwrap_err(), AuthError::Invalid, "{what}");
        }
    }

    #[tokio::test]
    async fn with_a_scope_prefix_only_prefixed_scopes_count() {
        let auth = Authenticator::new(
            KeySource::Secret(SECRET.to_vec()),
            TokenPolicy { scope_prefix: Some("users-api/".into()), ..policy() },
        )
        .unwrap();
        let verified = verify(&auth, &claims("openid users-api/users:read other-api/users:write", now() + 60)).await;
        let verified = verified.unwrap();
        assert!(verified.has_scope(SCOPE_READ));
        assert!(!verified.has_scope(SCOPE_WRITE), "another resource server's scope is not ours");
        let unprefixed = verify(&auth, &claims("users:read users:write", now() + 60)).await.unwrap();
        assert!(!unprefixed.has_scope(SCOPE_READ) && !unprefixed.has_scope(SCOPE_WRITE));
    }

    #[tokio::test]
    async fn a_token_living_longer_than_the_maximum_is_refused() {
        let auth = Authenticator::new(
            KeySource::Secret(SECRET.to_vec()),
            TokenPolicy { max_lifetime: Duration::from_secs(3600), ..policy() },
        )
        .unwrap();
        let now = now();
        let cases = [
            (Some(now), now + 3600, true),
            (Some(now - 600), now + 3000, true),
            (Some(now), now + 3601, false),
            (Some(now - 10), now + 10 * 365 * 86_400, false),
            // Issued in the future (beyond the leeway): not yet a token.
            (Some(now + 600), now + 1200, false),
            (None, now + 3600, true),
            (None, now + 3600 + 30, true),
            (None, now + 7200, false),
        ];
        for (iat, exp, accepted) in cases {
            let token = Claims { iat, ..claims(SCOPE_READ, exp) };
            assert_eq!(verify(&auth, &token).await.is_ok(), accepted, "iat {iat:?}, exp {exp}, now {now}");
        }
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
        assert!(Authenticator::new(KeySource::Secret(b"short".to_vec()), TokenPolicy::default()).is_err());
    }
}
