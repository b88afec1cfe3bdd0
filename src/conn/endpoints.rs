//! HTTP endpoints that need the shard: `/health`, `/api/send`,
//! `/api/publish`, `/admin/dlq`, `/admin/dlq/replay`. Each takes a parsed
//! request and returns the response; the connection task does the I/O.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use base64::Engine;
use futures_lite::future;
use glommio::timer::Timer;
use serde_json::{json, Value};

use crate::conn::commands::{self, Action, CommandContext};
use crate::delivery::dlq::DeadLetter;
use crate::http::router::Endpoint;
use crate::http::{RequestHead, Response};
use crate::metrics::{export, DASHBOARD_HTML};
use crate::protocol::ErrorCode;
use crate::routing::envelope::MessageBody;
use crate::routing::Target;
use crate::shard::mesh::Failure;
use crate::shard::messaging::{held_word, RouteOutcome, SCHEDULE_HORIZON_MS};
use crate::shard::observe::ExportFormat;
use crate::shard::ShardState;

/// The chat demo page (`/demo`): self-contained, plain `WebSocket`.
pub const DEMO_HTML: &str = include_str!("../demo.html");

/// The sender name of messages injected over `/api/*`.
pub const API_SENDER: &str = "api";
/// How long `/api/*` waits for the routing outcome.
pub const API_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest page of `/admin/dlq`.
pub const DLQ_PAGE_MAX: usize = 1000;

/// Serves one endpoint (everything but the WebSocket upgrade).
pub async fn serve(
    shard: &Rc<ShardState>,
    endpoint: Endpoint,
    head: &RequestHead,
    body: &[u8],
    peer: SocketAddr,
) -> Response {
    if endpoint.is_privileged() {
        if let Err(refusal) = authorize(shard.config.admin_token(), head, peer) {
            return refusal;
        }
    }
    match endpoint {
        Endpoint::WebSocket => Response::error(500, "the upgrade is not an HTTP endpoint"),
        Endpoint::Health => {
            let health = shard.cluster_health().await;
            let body = health.to_json(shard.started_at.elapsed().as_secs());
            Response::json(health.status().1, body)
        }
        Endpoint::ApiSend => api_route(shard, "send", body).await,
        Endpoint::ApiPublish => api_route(shard, "publish", body).await,
        Endpoint::DeadLetters => dead_letters(shard, &head.query).await,
        Endpoint::Metrics => Response::new(
            200,
            export::PROMETHEUS_CONTENT_TYPE,
            shard.render_metrics(ExportFormat::Prometheus).await,
        ),
        Endpoint::MetricsJson => Response::new(
            200,
            export::JSON_CONTENT_TYPE,
            shard.render_metrics(ExportFormat::Json).await,
        ),
        Endpoint::MetricsCsv => Response::new(
            200,
            export::CSV_CONTENT_TYPE,
            shard.render_metrics(ExportFormat::Csv).await,
        ),
        Endpoint::Dashboard => Response::new(200, "text/html; charset=utf-8", DASHBOARD_HTML),
        Endpoint::Demo => Response::new(200, "text/html; charset=utf-8", DEMO_HTML),
        Endpoint::Connections => connections(shard, &head.query).await,
        Endpoint::ReplayDeadLetters => replay(shard, body).await,
    }
}

/// `/api/*` and `/admin/*`: the bearer token when one is configured,
/// otherwise loopback callers only.
pub fn authorize(
    token: Option<&str>,
    head: &RequestHead,
    peer: SocketAddr,
) -> Result<(), Response> {
    match token {
        Some(token) => {
            let given = head.bearer().unwrap_or_default();
            if constant_time_eq(given.as_bytes(), token.as_bytes()) {
                Ok(())
            } else {
                Err(Response::error(
                    401,
                    "missing or wrong admin token (Authorization: Bearer ...)",
                )
                .with_header("WWW-Authenticate", "Bearer"))
            }
        }
        None if peer.ip().is_loopback() => Ok(()),
        None => Err(Response::error(
            403,
            "no admin token is configured, so /api and /admin answer loopback clients only",
        )),
    }
}

/// Compares secrets without an early exit on the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error_response(status: u16, code: ErrorCode, reason: &str) -> Response {
    Response::json(
        status,
        json!({"op":"error","code":code.as_str(),"reason":reason}).to_string(),
    )
}

fn failure_response(f: &Failure) -> Response {
    let status = match f.code {
        ErrorCode::Overloaded | ErrorCode::ClusterUnavailable => 503,
        ErrorCode::Internal => 500,
        ErrorCode::NoMembers => 404,
        _ => 400,
    };
    error_response(status, f.code, &f.reason)
}

/// `POST /api/send` and `/api/publish`: the body is the command's JSON
/// (`op` optional); the message comes `from` `"api"`.
async fn api_route(shard: &Rc<ShardState>, op: &str, body: &[u8]) -> Response {
    let mut command: Value = match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Value::Object(map),
        Ok(_) => {
            return error_response(400, ErrorCode::BadRequest, "the body must be a JSON object")
        }
        Err(e) => return error_response(400, ErrorCode::BadJson, &format!("invalid JSON: {e}")),
    };
    match command.get("op") {
        None => command["op"] = json!(op),
        Some(Value::String(given)) if given == op => {}
        Some(_) => {
            return error_response(
                400,
                ErrorCode::BadRequest,
                &format!("this endpoint takes `op` {op:?}"),
            );
        }
    }
    let text = command.to_string();
    let mut next_id = || shard.next_api_message_id();
    let mut ctx = CommandContext {
        user: API_SENDER,
        max_message_bytes: shard.config.max_message_bytes,
        compress_min_bytes: shard.config.compress_min_bytes,
        wants_lz4: false,
        taken_in_unix_us: std::cell::OnceCell::new(),
        schedule_max_ms: SCHEDULE_HORIZON_MS,
        next_message_id: &mut next_id,
        processors: &shard.processors,
        errors: Vec::new(),
    };
    let action = match commands::decode_action(&text, &mut ctx) {
        Ok(action) => action,
        Err(e) => return error_response(400, e.code, &e.reason),
    };
    let Action::Route {
        target,
        envelope,
        deliver_at_unix_ms,
        ..
    } = action
    else {
        return error_response(
            400,
            ErrorCode::BadRequest,
            "only `send` and `publish` are served here",
        );
    };
    let (tx, rx) = glommio::channels::local_channel::new_bounded(1);
    shard.submit_api_route(target, envelope, deliver_at_unix_ms, tx);
    let outcome = future::or(async { rx.recv().await }, async {
        Timer::new(API_TIMEOUT).await;
        None
    })
    .await;
    match outcome {
        Some(RouteOutcome::Ok {
            id,
            delivered,
            held,
        }) => {
            let mut body = json!({"op":"ok","id":id,"delivered":delivered});
            if let Some(h) = held_word(held) {
                body["held"] = json!(h);
            }
            Response::json(200, body.to_string())
        }
        Some(RouteOutcome::Failed(f)) => failure_response(&f),
        None => error_response(504, ErrorCode::Internal, "no routing outcome in time"),
    }
}

/// One dead letter as JSON.
fn letter_json(letter: &DeadLetter, shard: usize) -> Value {
    let msg = &letter.msg;
    let target = match &letter.target {
        Target::User(u) => json!({"user": u}),
        Target::Group { group, .. } => json!({"group": group}),
        Target::Anycast(g) => json!({"anycast": g}),
    };
    let mut v = json!({
        "id": msg.id,
        "reason": letter.reason.as_str(),
        "dead_at": letter.at_unix_ms,
        "attempts": letter.attempts,
        "shard": shard,
        "target": target,
        "from": msg.from,
        "to": msg.to,
        "group": msg.group,
        "priority": msg.priority.as_str(),
        "ts": msg.ts_unix_ms,
        "ack": msg.ack,
    });
    match &msg.body {
        MessageBody::Json(data) => {
            v["data"] = serde_json::from_str(data).unwrap_or(Value::Null);
        }
        MessageBody::Binary { payload, .. } => {
            v["payload_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(payload));
        }
    }
    v
}

fn query_usize(query: &str, key: &str) -> Result<Option<usize>, Response> {
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k == key {
            return v.parse().map(Some).map_err(|_| {
                error_response(
                    400,
                    ErrorCode::BadRequest,
                    &format!("`{key}` must be a whole number"),
                )
            });
        }
    }
    Ok(None)
}

/// `GET /admin/dlq?offset=0&limit=100`: dead letters of every shard,
/// oldest first.
async fn dead_letters(shard: &Rc<ShardState>, query: &str) -> Response {
    let offset = match query_usize(query, "offset") {
        Ok(v) => v.unwrap_or(0),
        Err(r) => return r,
    };
    let limit = match query_usize(query, "limit") {
        Ok(v) => v.unwrap_or(100).clamp(1, DLQ_PAGE_MAX),
        Err(r) => return r,
    };
    let (all, evicted) = shard.dead_letters().await;
    let entries: Vec<Value> = all
        .iter()
        .skip(offset)
        .take(limit)
        .map(|v| letter_json(&v.letter, v.shard))
        .collect();
    let body = json!({
        "total": all.len(),
        "offset": offset,
        "limit": limit,
        "evicted": evicted,
        "entries": entries,
    });
    Response::json(200, body.to_string())
}

/// `GET /admin/connections?sort=queue|latency&limit=20`: the connections
/// with the deepest outboxes or the slowest ping round trips, all shards.
async fn connections(shard: &Rc<ShardState>, query: &str) -> Response {
    let limit = match query_usize(query, "limit") {
        Ok(v) => v.unwrap_or(20).clamp(1, 1000),
        Err(r) => return r,
    };
    let mut by_latency = false;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k == "sort" {
            match v.as_ref() {
                "queue" => by_latency = false,
                "latency" => by_latency = true,
                _ => {
                    return error_response(400, ErrorCode::BadRequest, "`sort` is queue or latency")
                }
            }
        }
    }
    let mut all = shard.connection_views().await;
    if by_latency {
        all.sort_by_key(|c| std::cmp::Reverse(c.last_rtt_us));
    } else {
        all.sort_by_key(|c| std::cmp::Reverse(c.outbox_bytes));
    }
    let total = all.len();
    let entries: Vec<Value> = all
        .into_iter()
        .take(limit)
        .map(|c| {
            json!({
                "conn": c.conn, "shard": c.shard, "user": c.user,
                "outbox_msgs": c.outbox_msgs, "outbox_bytes": c.outbox_bytes,
                "ping_rtt_us": c.last_rtt_us, "idle_ms": c.idle_ms,
            })
        })
        .collect();
    let sort = if by_latency { "latency" } else { "queue" };
    Response::json(
        200,
        json!({"total": total, "sort": sort, "connections": entries}).to_string(),
    )
}

/// `POST /admin/dlq/replay` with `{}` (all) or `{"ids":[...]}`.
async fn replay(shard: &Rc<ShardState>, body: &[u8]) -> Response {
    let ids = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => match map.get("ids") {
                None => None,
                Some(Value::Array(ids)) => {
                    let mut out = Vec::with_capacity(ids.len());
                    for id in ids {
                        match id.as_str() {
                            Some(s) => out.push(s.to_string()),
                            None => {
                                return error_response(
                                    400,
                                    ErrorCode::BadRequest,
                                    "`ids` must be strings",
                                )
                            }
                        }
                    }
                    Some(out)
                }
                Some(_) => {
                    return error_response(400, ErrorCode::BadRequest, "`ids` must be an array")
                }
            },
            Ok(_) => {
                return error_response(400, ErrorCode::BadRequest, "the body must be a JSON object")
            }
            Err(e) => {
                return error_response(400, ErrorCode::BadJson, &format!("invalid JSON: {e}"))
            }
        }
    };
    let replayed = shard.replay_all_dead_letters(ids).await;
    Response::json(200, json!({"replayed": replayed}).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(auth: Option<&str>) -> RequestHead {
        RequestHead {
            method: "POST".into(),
            path: "/api/send".into(),
            query: String::new(),
            headers: auth
                .map(|a| vec![("Authorization".to_string(), a.as_bytes().to_vec())])
                .unwrap_or_default(),
            head_len: 0,
        }
    }

    #[test]
    fn tokens_and_loopback() {
        let lo: SocketAddr = "127.0.0.1:5".parse().unwrap();
        let far: SocketAddr = "192.0.2.1:5".parse().unwrap();
        assert!(authorize(None, &head(None), lo).is_ok());
        assert_eq!(authorize(None, &head(None), far).unwrap_err().status, 403);
        assert!(authorize(Some("s3"), &head(Some("Bearer s3")), far).is_ok());
        assert_eq!(
            authorize(Some("s3"), &head(Some("Bearer s4")), lo)
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(
            authorize(Some("s3"), &head(None), lo).unwrap_err().status,
            401
        );
    }
}
