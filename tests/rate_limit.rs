//! The service's own per-client rate limit (a second line behind nginx).

mod kit;

use kit::app::{Backend, TestApp};
use kit::http::expect_problem;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_gets_429_with_retry_after_and_probes_stay_open() {
    let app = TestApp::spawn_with(Backend::Sqlite, &["--rate-limit-per-second", "1", "--rate-limit-burst", "3"]).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(app.get("/users?limit=1").await.status().as_u16());
    }
    assert_eq!(&statuses[..3], [200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].contains(&429), "{statuses:?}");

    let response = app.get("/users?limit=1").await;
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after));
    expect_problem(response, 429, "rate_limited").await;
    assert_eq!(app.get("/health").await.status(), 200, "probes are not rate limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget() {
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &["--rate-limit-per-second", "1", "--rate-limit-burst", "2", "--trust-forwarded-for"],
    )
    .await;
    let get = |client: &'static str| {
        let request = app.client.get(app.url("/users?limit=1")).header("x-forwarded-for", client);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!([get("203.0.113.1").await, get("203.0.113.1").await, get("203.0.113.1").await], [200, 200, 429]);
    assert_eq!(get("203.0.113.2").await, 200, "another client is not throttled by the first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_pick_its_budget_with_a_forged_forwarded_for() {
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &["--rate-limit-per-second", "1", "--rate-limit-burst", "2", "--trust-forwarded-for"],
    )
    .await;
    // Each request forges a fresh first hop, in the same line and as an earlier line; the proxy
    // appended 198.51.100.7 every time, so all of them spend that one budget.
    let started = std::time::Instant::now();
    let mut statuses = Vec::new();
    for forged in 1..=8 {
        let line = format!("10.0.0.{forged}, 198.51.100.7");
        let request = app.client.get(app.url("/users?limit=1")).header("x-forwarded-for", line);
        statuses.push(request.send().await.unwrap().status().as_u16());
        let request = app
            .client
            .get(app.url("/users?limit=1"))
            .header("x-forwarded-for", format!("10.1.0.{forged}"))
            .header("x-forwarded-for", "198.51.100.7");
        statuses.push(request.send().await.unwrap().status().as_u16());
    }
    // The burst, plus one per second the loop took (1/s refills); forged hops would add 8.
    let allowed = 2 + started.elapsed().as_secs_f64().ceil() as usize;
    let served = statuses.iter().filter(|s| **s == 200).count();
    assert!(served <= allowed, "forged first hops got fresh budgets: {served} served, {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    println!("forged X-Forwarded-For hops: {served} of {} served, {:?}", statuses.len(), started.elapsed());
}
