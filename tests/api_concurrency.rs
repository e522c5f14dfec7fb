//! Uniqueness and completeness under concurrent writes, on both stores.

mod kit;

use std::collections::HashSet;

use futures_util::future::join_all;
use kit::app::TestApp;

on_both_stores!(
    fifty_simultaneous_posts_of_one_email_give_one_201_and_49_email_taken,
    two_hundred_simultaneous_distinct_posts_all_succeed_and_are_listed,
    the_streamed_list_matches_the_paged_list_for_many_users,
);

async fn fifty_simultaneous_posts_of_one_email_give_one_201_and_49_email_taken(app: TestApp) {
    // Different spellings of one address race each other.
    let requests = (0..50).map(|i| {
        let email =
            if i % 2 == 0 { "Race.Winner@Example.com".to_owned() } else { "race.winner@example.COM".to_owned() };
        let app = &app;
        async move {
            let response = app.create_user("Race Runner", &email).await;
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap();
            (status, body)
        }
    });
    let outcomes = join_all(requests).await;
    let created = outcomes.iter().filter(|(s, _)| *s == 201).count();
    let taken = outcomes.iter().filter(|(s, b)| *s == 400 && b["code"] == "email_taken").count();
    assert_eq!((created, taken), (1, 49), "{outcomes:?}");
    assert_eq!(app.all_users().await.len(), 1);
}

async fn two_hundred_simultaneous_distinct_posts_all_succeed_and_are_listed(app: TestApp) {
    let requests = (0..200).map(|i| {
        let app = &app;
        async move {
            let response = app.create_user("Crowd Member", &format!("crowd{i}@example.com")).await;
            assert_eq!(response.status(), 201, "request {i}");
            response.json::<serde_json::Value>().await.unwrap()["id"].as_i64().unwrap()
        }
    });
    let ids: HashSet<i64> = join_all(requests).await.into_iter().collect();
    assert_eq!(ids.len(), 200, "every user got its own id");

    let users = app.all_users().await;
    assert_eq!(users.len(), 200);
    let listed_ids: HashSet<i64> = users.iter().map(|u| u["id"].as_i64().unwrap()).collect();
    assert_eq!(listed_ids, ids);
    let emails: HashSet<String> = users.iter().map(|u| u["email"].as_str().unwrap().to_owned()).collect();
    let expected: HashSet<String> = (0..200).map(|i| format!("crowd{i}@example.com")).collect();
    assert_eq!(emails, expected);
}

async fn the_streamed_list_matches_the_paged_list_for_many_users(app: TestApp) {
    // More users than one stream chunk, written in concurrent waves.
    for wave in 0..6 {
        let requests = (0..100).map(|i| {
            let app = &app;
            async move {
                assert_eq!(app.create_user("Wave Member", &format!("w{wave}-{i}@example.com")).await.status(), 201);
            }
        });
        join_all(requests).await;
    }
    let streamed = app.all_users().await;
    assert_eq!(streamed.len(), 600);
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page: Vec<serde_json::Value> =
            app.get(&format!("/users?limit=1000&after={after}")).await.json().await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().unwrap()["id"].as_i64().unwrap();
        paged.extend(page);
    }
    assert_eq!(streamed, paged);
}
