//! Which endpoint a request is for: a table of path, methods, endpoint.

use super::{RequestHead, Response};

/// An endpoint the connection task knows how to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// The configured WebSocket path: upgrade.
    WebSocket,
    /// `GET /health`: liveness and the connection count over all shards.
    Health,
    /// `GET /admin/dlq`: the dead-letter queue, paged.
    DeadLetters,
    /// `POST /admin/dlq/replay`: deliver dead letters again.
    ReplayDeadLetters,
    /// `POST /api/send`: a backend sends to a user.
    ApiSend,
    /// `POST /api/publish`: a backend publishes to a group.
    ApiPublish,
    /// `GET /metrics`: Prometheus text format 0.0.4.
    Metrics,
    /// `GET /metrics.json`: the same figures as JSON.
    MetricsJson,
    /// `GET /metrics.csv`: the same figures as CSV.
    MetricsCsv,
    /// `GET /dashboard`: the live page.
    Dashboard,
    /// `GET /demo`: the chat demo page.
    Demo,
    /// `GET /admin/connections`: the top connections by queue or latency.
    Connections,
}

impl Endpoint {
    /// Whether `/api/*` / `/admin/*` access rules apply.
    pub fn is_privileged(self) -> bool {
        matches!(
            self,
            Endpoint::DeadLetters
                | Endpoint::ReplayDeadLetters
                | Endpoint::ApiSend
                | Endpoint::ApiPublish
                | Endpoint::Connections
        )
    }
}

/// The outcome of routing: an endpoint, or a response decided already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Serve(Endpoint),
    Respond(Response),
}

/// Routes one request. `ws_path` is the configured upgrade path.
pub fn route(head: &RequestHead, ws_path: &str) -> Route {
    let table: [(&str, &[&str], Endpoint); 12] = [
        ("/demo", &["GET"], Endpoint::Demo),
        ("/metrics", &["GET"], Endpoint::Metrics),
        ("/metrics.json", &["GET"], Endpoint::MetricsJson),
        ("/metrics.csv", &["GET"], Endpoint::MetricsCsv),
        ("/dashboard", &["GET"], Endpoint::Dashboard),
        ("/admin/connections", &["GET"], Endpoint::Connections),
        (ws_path, &["GET"], Endpoint::WebSocket),
        ("/health", &["GET"], Endpoint::Health),
        ("/admin/dlq", &["GET"], Endpoint::DeadLetters),
        ("/admin/dlq/replay", &["POST"], Endpoint::ReplayDeadLetters),
        ("/api/send", &["POST"], Endpoint::ApiSend),
        ("/api/publish", &["POST"], Endpoint::ApiPublish),
    ];
    for (path, methods, endpoint) in table {
        if head.path == path {
            return if methods.contains(&head.method.as_str()) {
                Route::Serve(endpoint)
            } else {
                Route::Respond(
                    Response::error(405, &format!("{} allows {}", path, methods.join(", ")))
                        .with_header("Allow", methods.join(", ")),
                )
            };
        }
    }
    Route::Respond(Response::error(
        404,
        &format!("no such path: {}", head.path),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: &str, path: &str) -> RequestHead {
        RequestHead {
            method: method.into(),
            path: path.into(),
            query: String::new(),
            headers: vec![],
            head_len: 0,
        }
    }

    #[test]
    fn routes() {
        assert_eq!(
            route(&head("GET", "/ws"), "/ws"),
            Route::Serve(Endpoint::WebSocket)
        );
        assert_eq!(
            route(&head("GET", "/live"), "/live"),
            Route::Serve(Endpoint::WebSocket)
        );
        assert_eq!(
            route(&head("GET", "/health"), "/ws"),
            Route::Serve(Endpoint::Health)
        );
        match route(&head("POST", "/health"), "/ws") {
            Route::Respond(r) => {
                assert_eq!(r.status, 405);
                assert!(r.headers.iter().any(|(n, v)| *n == "Allow" && v == "GET"));
            }
            other => panic!("{other:?}"),
        }
        match route(&head("GET", "/nope"), "/ws") {
            Route::Respond(r) => assert_eq!(r.status, 404),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            route(&head("POST", "/api/send"), "/ws"),
            Route::Serve(Endpoint::ApiSend)
        );
        assert_eq!(
            route(&head("GET", "/demo"), "/ws"),
            Route::Serve(Endpoint::Demo)
        );
        match route(&head("GET", "/api/send"), "/ws") {
            Route::Respond(r) => assert_eq!(r.status, 405),
            other => panic!("{other:?}"),
        }
        match route(&head("GET", "/ws"), "/live") {
            Route::Respond(r) => assert_eq!(r.status, 404),
            other => panic!("{other:?}"),
        }
    }
}
