//! The route templates, and the label of a request's route for its metrics, span and access line.
//!
//! The observing middleware wraps the whole router, not each route: wrapped per route, axum
//! boxes every route again and clones it on every request (~1,000 instructions of a `/health`).
//! Outside the router, axum's `MatchedPath` is not yet known, so the label comes from the same
//! templates, matched by the same matcher axum uses (matchit); a test holds the two equal.

pub const HEALTH: &str = "/health";
pub const READY: &str = "/ready";
pub const USERS: &str = "/users";
pub const USER: &str = "/user";
pub const USER_BY_ID: &str = "/users/{id}";
pub const OPENAPI: &str = "/openapi.json";
/// Swagger UI; it also serves `DOCS/` and everything below it.
pub const DOCS: &str = "/docs";
const DOCS_ROUTES: [&str; 3] = [DOCS, "/docs/", "/docs/{*rest}"];

/// The route label of a request no route matched (404s).
pub const UNMATCHED: &str = "unmatched";

/// Finds which template a path matched, as the router will.
pub struct RouteLabels {
    /// The templates without parameters: a path equal to one of them is that route (a static
    /// route wins over any other in matchit), found without the tree's walk (~130 instructions).
    statics: Vec<&'static str>,
    router: matchit::Router<&'static str>,
}

impl RouteLabels {
    pub fn new() -> Self {
        let templates = || [HEALTH, READY, USERS, USER, USER_BY_ID, OPENAPI].into_iter().chain(DOCS_ROUTES);
        let mut router = matchit::Router::new();
        for template in templates() {
            router.insert(template, template).expect("route templates do not overlap");
        }
        Self { statics: templates().filter(|t| !t.contains('{')).collect(), router }
    }

    pub fn label(&self, path: &str) -> &'static str {
        match self.statics.iter().find(|template| **template == path) {
            Some(template) => template,
            None => self.router.at(path).map_or(UNMATCHED, |matched| matched.value),
        }
    }
}
