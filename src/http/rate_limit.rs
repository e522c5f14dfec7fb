//! Per-client request rate limit: a second line behind the proxy's own limit.

use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use super::error::ApiError;

pub struct RateLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    trust_forwarded_for: bool,
}

impl RateLimiter {
    /// `None` when `per_second` is 0 (limit off).
    pub fn new(per_second: u32, burst: Option<u32>, trust_forwarded_for: bool) -> Option<Arc<Self>> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = burst.and_then(NonZeroU32::new).unwrap_or(rate);
        let limiter = governor::RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst));
        let limiter = Arc::new(Self { limiter, trust_forwarded_for });
        // Forget idle clients so the table stays as small as the set of active ones.
        let weak = Arc::downgrade(&limiter);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let Some(limiter) = weak.upgrade() else { break };
                limiter.limiter.retain_recent();
                limiter.limiter.shrink_to_fit();
            }
        });
        Some(limiter)
    }

    fn client(&self, request: &Request) -> IpAddr {
        if self.trust_forwarded_for
            && let Some(ip) = appended_hop(request)
        {
            return ip;
        }
        crate::server::peer().map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |peer| peer.ip())
    }
}

/// The address the trusted proxy appended: the rightmost hop of the last X-Forwarded-For line.
/// Everything left of it, and any earlier line, came from the client and may be forged.
fn appended_hop(request: &Request) -> Option<IpAddr> {
    let last_line = request.headers().get_all("x-forwarded-for").iter().next_back()?;
    last_line.to_str().ok()?.rsplit(',').next()?.trim().parse().ok()
}

pub async fn limit(
    State(limiter): State<Arc<RateLimiter>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let client = limiter.client(&request);
    if let Err(not_until) = limiter.limiter.check_key(&client) {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        return Err(ApiError::RateLimited { retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64 });
    }
    Ok(next.run(request).await)
}
