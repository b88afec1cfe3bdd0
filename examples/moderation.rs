//! A chat room with moderation, as a custom processor on ws-uring.
//!
//! Run: `cargo run --release --example moderation -- --port 8765`
//! (every ws-uring flag works). Clients then send
//! `{"op":"say","group":"room","text":"hello"}`: the text is published to
//! the group (sender included) as `{"user":..,"text":..}`, unless it holds
//! a blocked word, in which case the sender gets a `forbidden` error and
//! nobody else sees it.

use std::process::ExitCode;

use serde_json::{json, Value};
use ws_uring::config::{Config, Flags};
use ws_uring::protocol::{ErrorCode, Priority};
use ws_uring::{ProcessorContext, ProcessorRequest, Server};

/// Words the room does not accept (a real deployment would load a list).
const BLOCKED_WORDS: [&str; 3] = ["spam", "scam", "phishing"];
/// Longest message the room accepts, in characters.
const TEXT_MAX_CHARS: usize = 500;

/// The `say` processor: checks a chat line, then publishes it.
fn say(request: &ProcessorRequest<'_>, ctx: &mut ProcessorContext) {
    let group = request.command.get("group").and_then(Value::as_str);
    let text = request.command.get("text").and_then(Value::as_str);
    let (Some(group), Some(text)) = (group, text) else {
        return ctx.error(
            ErrorCode::BadRequest,
            "`say` needs `group` and `text` strings",
        );
    };
    if text.chars().count() > TEXT_MAX_CHARS {
        return ctx.error(
            ErrorCode::TooLarge,
            format!("at most {TEXT_MAX_CHARS} characters"),
        );
    }
    let lower = text.to_lowercase();
    if let Some(word) = BLOCKED_WORDS.iter().find(|w| lower.contains(*w)) {
        return ctx.error(
            ErrorCode::Forbidden,
            format!("message blocked by moderation ({word:?})"),
        );
    }
    ctx.publish(
        group,
        json!({"user": request.user, "text": text}),
        Priority::Normal,
        true,
    );
    ctx.ok();
}

fn main() -> ExitCode {
    let flags: Flags = ws_uring_flags::from_env();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = match Config::from_process(&flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("moderation: {e}");
            return ExitCode::from(2);
        }
    };
    let server = match Server::builder(config).processor("say", say) {
        Ok(builder) => builder.build(),
        Err(e) => {
            eprintln!("moderation: {e}");
            return ExitCode::FAILURE;
        }
    };
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moderation: {e}");
            ExitCode::FAILURE
        }
    }
}
