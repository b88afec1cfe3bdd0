//! Which endpoint a request is for. Later endpoints (`/metrics`, `/api/*`,
//! `/admin/*`, `/dashboard`) are new `Endpoint` variants and table rows.

use super::{RequestHead, Response};

/// An endpoint the connection task knows how to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// The configured WebSocket path: upgrade.
    WebSocket,
    /// `GET /health`: liveness and the connection count over all shards.
    Health,
}

/// The outcome of routing: an endpoint, or a response decided already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Serve(Endpoint),
    Respond(Response),
}

/// Routes one request. `ws_path` is the configured upgrade path.
pub fn route(head: &RequestHead, ws_path: &str) -> Route {
    let table: [(&str, &[&str], Endpoint); 2] = [
        (ws_path, &["GET"], Endpoint::WebSocket),
        ("/health", &["GET"], Endpoint::Health),
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
        match route(&head("GET", "/ws"), "/live") {
            Route::Respond(r) => assert_eq!(r.status, 404),
            other => panic!("{other:?}"),
        }
    }
}
