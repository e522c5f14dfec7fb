//! A JWKS fetched over HTTPS, cached, refreshed periodically and on an unknown key id; one
//! fetch at a time (single flight): requests that need fresh keys wait for the fetch in
//! progress and use its result.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::JwkSet;
use tokio::sync::{Mutex, RwLock};

use super::AuthError;

/// Keys older than this are refetched.
const MAX_AGE: Duration = Duration::from_secs(600);
/// An unknown `kid` triggers at most one refetch per this interval (no amplification).
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

pub struct JwksCache {
    url: String,
    client: reqwest::Client,
    state: RwLock<State>,
    /// Held for the length of a fetch.
    fetching: Mutex<()>,
}

#[derive(Default)]
struct State {
    keys: HashMap<String, DecodingKey>,
    fetched_at: Option<Instant>,
    attempted_at: Option<Instant>,
    last_fetch_failed: bool,
}

impl State {
    /// At most one fetch per `MIN_REFRESH_INTERVAL` (an unknown kid cannot amplify).
    fn may_refetch(&self) -> bool {
        self.attempted_at.is_none_or(|t| t.elapsed() >= MIN_REFRESH_INTERVAL)
    }
}

impl JwksCache {
    pub fn new(url: String) -> anyhow::Result<Self> {
        anyhow::ensure!(
            url.starts_with("https://") || url.starts_with("http://127.0.0.1") || url.starts_with("http://localhost"),
            "AUTH_JWKS_URL must be https:// (plain http only on loopback)"
        );
        let client =
            reqwest::Client::builder().timeout(Duration::from_secs(5)).build().context("building the JWKS client")?;
        Ok(Self { url, client, state: RwLock::new(State::default()), fetching: Mutex::new(()) })
    }

    /// The fetch at start. It does not count against `MIN_REFRESH_INTERVAL`, which limits the
    /// fetches tokens trigger: a key rotated right after a deploy is still found at once.
    pub async fn refresh(&self) -> anyhow::Result<()> {
        let _only_fetch = self.fetching.lock().await;
        self.fetch(false).await
    }

    /// Call with `fetching` held.
    async fn fetch(&self, triggered_by_a_token: bool) -> anyhow::Result<()> {
        if triggered_by_a_token {
            self.state.write().await.attempted_at = Some(Instant::now());
        }
        let outcome = self.fetch_keys().await;
        let mut state = self.state.write().await;
        state.last_fetch_failed = outcome.is_err();
        let keys = outcome?;
        tracing::info!(keys = keys.len(), "JWKS refreshed");
        state.keys = keys;
        state.fetched_at = Some(Instant::now());
        Ok(())
    }

    async fn fetch_keys(&self) -> anyhow::Result<HashMap<String, DecodingKey>> {
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
        Ok(set
            .keys
            .iter()
            .filter_map(|jwk| Some((jwk.common.key_id.clone()?, DecodingKey::from_jwk(jwk).ok()?)))
            .collect())
    }

    pub async fn key_for(&self, kid: Option<&str>) -> Result<DecodingKey, AuthError> {
        let kid = kid.ok_or(AuthError::Invalid)?;
        {
            let state = self.state.read().await;
            let fresh = state.fetched_at.is_some_and(|t| t.elapsed() < MAX_AGE);
            if fresh && let Some(key) = state.keys.get(kid) {
                return Ok(key.clone());
            }
            // Tried lately and no fetch in progress: what we hold is the answer.
            if !state.may_refetch() && self.fetching.try_lock().is_ok() {
                return state.keys.get(kid).cloned().ok_or(AuthError::Invalid);
            }
        }
        let _only_fetch = self.fetching.lock().await;
        // Whoever held the lock before us may have just fetched: then their result is ours.
        let may_refetch = self.state.read().await.may_refetch();
        if may_refetch && let Err(e) = self.fetch(true).await {
            tracing::warn!(error = %e, "JWKS refresh failed");
        }
        let state = self.state.read().await;
        match state.keys.get(kid) {
            Some(key) => Ok(key.clone()),
            // Keys we already hold stay usable while the issuer is unreachable.
            None if state.last_fetch_failed => Err(AuthError::KeysUnavailable),
            None => Err(AuthError::Invalid),
        }
    }
}
