//! A JWKS fetched over HTTPS, cached, refreshed periodically and on an unknown key id.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::JwkSet;
use tokio::sync::RwLock;

use super::AuthError;

/// Keys older than this are refetched.
const MAX_AGE: Duration = Duration::from_secs(600);
/// An unknown `kid` triggers at most one refetch per this interval (no amplification).
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

pub struct JwksCache {
    url: String,
    client: reqwest::Client,
    state: RwLock<State>,
}

#[derive(Default)]
struct State {
    keys: HashMap<String, DecodingKey>,
    fetched_at: Option<Instant>,
    attempted_at: Option<Instant>,
}

impl JwksCache {
    pub fn new(url: String) -> anyhow::Result<Self> {
        anyhow::ensure!(
            url.starts_with("https://") || url.starts_with("http://127.0.0.1") || url.starts_with("http://localhost"),
            "AUTH_JWKS_URL must be https:// (plain http only on loopback)"
        );
        let client =
            reqwest::Client::builder().timeout(Duration::from_secs(5)).build().context("building the JWKS client")?;
        Ok(Self { url, client, state: RwLock::new(State::default()) })
    }

    pub async fn refresh(&self) -> anyhow::Result<()> {
        self.state.write().await.attempted_at = Some(Instant::now());
        let set: JwkSet = self
            .client
            .get(&self.url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("fetching {}", self.url))?
            .json()
            .await
            .context("parsing the JWKS")?;
        let keys: HashMap<String, DecodingKey> = set
            .keys
            .iter()
            .filter_map(|jwk| Some((jwk.common.key_id.clone()?, DecodingKey::from_jwk(jwk).ok()?)))
            .collect();
        tracing::info!(keys = keys.len(), "JWKS refreshed");
        let mut state = self.state.write().await;
        state.keys = keys;
        state.fetched_at = Some(Instant::now());
        Ok(())
    }

    pub async fn key_for(&self, kid: Option<&str>) -> Result<DecodingKey, AuthError> {
        let kid = kid.ok_or(AuthError::Invalid)?;
        {
            let state = self.state.read().await;
            let fresh = state.fetched_at.is_some_and(|t| t.elapsed() < MAX_AGE);
            if fresh && let Some(key) = state.keys.get(kid) {
                return Ok(key.clone());
            }
            let may_refetch = state.attempted_at.is_none_or(|t| t.elapsed() >= MIN_REFRESH_INTERVAL);
            if !may_refetch {
                return state.keys.get(kid).cloned().ok_or(AuthError::Invalid);
            }
        }
        if let Err(e) = self.refresh().await {
            tracing::warn!(error = %e, "JWKS refresh failed");
            // Keys we already hold stay usable while the issuer is unreachable.
            let state = self.state.read().await;
            return state.keys.get(kid).cloned().ok_or(AuthError::KeysUnavailable);
        }
        self.state.read().await.keys.get(kid).cloned().ok_or(AuthError::Invalid)
    }
}
