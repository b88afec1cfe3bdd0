//! What a connection does with each data message, sans-IO: a message in,
//! an `Action` out. Connection-local commands (`ping`, `echo`) and every
//! error are answered here as ready-to-write frames; commands that involve
//! other connections become actions the shard carries out. A bad command
//! never closes the connection.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;
use tungstenite::Message;

use crate::processor::{ProcessorContext, ProcessorOutput, ProcessorRequest, Processors};
use crate::protocol::{self, compress, Command, CommandError, ErrorCode, StrategyKind};
use crate::routing::envelope::{MessageBody, MessageParts};
use crate::routing::{Envelope, Target};
use crate::ws::{encode_frame, OPCODE_BINARY, OPCODE_TEXT};
use serde_json::Value;

/// How the WebSocket path behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The ws-uring protocol.
    Protocol,
    /// `--echo`: every data message back verbatim.
    Echo,
}

impl Mode {
    /// The mode the configuration asks for (`--echo` or the protocol).
    pub fn of(config: &crate::config::Config) -> Mode {
        if config.echo {
            Mode::Echo
        } else {
            Mode::Protocol
        }
    }
}

/// What the shard must do for one message.
#[derive(Debug)]
pub enum Action {
    /// Queue this frame to the sender itself (reply lane).
    Reply(Bytes),
    Join {
        reference: Option<String>,
        group: String,
        weight: u32,
    },
    Leave {
        reference: Option<String>,
        group: String,
    },
    SetStrategy {
        reference: Option<String>,
        group: String,
        strategy: StrategyKind,
    },
    /// Deliver a message (`send`, `publish`, `anycast`), now or at
    /// `deliver_at_unix_ms`.
    Route {
        reference: Option<String>,
        target: Target,
        envelope: Arc<Envelope>,
        deliver_at_unix_ms: Option<u64>,
    },
    /// Confirm delivery of message `id` to this connection.
    Ack {
        reference: Option<String>,
        id: String,
    },
    /// Several actions, in order (from a custom processor).
    Batch(Vec<Action>),
}

/// What command handling needs to know about the sender and the server.
pub struct CommandContext<'a> {
    pub user: &'a str,
    pub max_message_bytes: usize,
    pub compress_min_bytes: usize,
    /// The connection chose `wsu.v1.lz4` (a binary `echo` is answered
    /// compressed from `compress_min_bytes`, as a message would be).
    pub wants_lz4: bool,
    /// When the message was taken in (unix µs): its timestamp, the start
    /// of its delivery latency and of its TTL and delay. Read from the
    /// clock on first use (`now_unix_us`), so one read serves all of these
    /// and a command that needs none (echo, ping) reads nothing; a test
    /// sets it with `OnceCell::from`.
    pub taken_in_unix_us: std::cell::OnceCell<u64>,
    /// Furthest ahead `delay_ms` / `at` may schedule.
    pub schedule_max_ms: u64,
    /// Makes the id of a new message.
    pub next_message_id: &'a mut dyn FnMut() -> String,
    /// Custom processors for ops the protocol does not define.
    pub processors: &'a Processors,
    /// Every error answered while handling the message (for metrics).
    pub errors: Vec<ErrorCode>,
}

impl CommandContext<'_> {
    /// When the message was taken in, in unix µs.
    pub fn now_unix_us(&self) -> u64 {
        *self
            .taken_in_unix_us
            .get_or_init(crate::routing::envelope::unix_us)
    }

    /// `now_unix_us` in milliseconds.
    pub fn now_unix_ms(&self) -> u64 {
        self.now_unix_us() / 1000
    }
}

/// Handles one data message (control frames are the session's business).
pub fn handle_message(
    message: Message,
    mode: Mode,
    ctx: &mut CommandContext<'_>,
) -> Option<Action> {
    match (mode, message) {
        (Mode::Echo, Message::Text(t)) => Some(Action::Reply(frame(OPCODE_TEXT, t.as_bytes()))),
        (Mode::Echo, Message::Binary(b)) => Some(Action::Reply(frame(OPCODE_BINARY, &b))),
        (Mode::Protocol, Message::Text(text)) => {
            Some(handle_text(&text, ctx).unwrap_or_else(|e| {
                ctx.errors.push(e.code);
                Action::Reply(error_frame(&e))
            }))
        }
        (Mode::Protocol, Message::Binary(bytes)) => {
            Some(handle_binary(&bytes, ctx).unwrap_or_else(|e| {
                ctx.errors.push(e.code);
                Action::Reply(error_frame(&e))
            }))
        }
        _ => None,
    }
}

fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    Bytes::from(encode_frame(opcode, &[payload]))
}

fn text_frame(event: &str) -> Bytes {
    frame(OPCODE_TEXT, event.as_bytes())
}

/// An `error` event as a text frame.
pub fn error_frame(e: &CommandError) -> Bytes {
    text_frame(&protocol::encode_error(e))
}

/// Decodes a text command into its action (used for WebSocket text
/// frames and for `/api/*` request bodies).
pub fn decode_action(text: &str, ctx: &mut CommandContext<'_>) -> Result<Action, CommandError> {
    handle_text(text, ctx)
}

fn handle_text(text: &str, ctx: &mut CommandContext<'_>) -> Result<Action, CommandError> {
    let request = match protocol::decode_command(text) {
        Ok(r) => r,
        Err(e) if e.code == ErrorCode::UnknownOp && !ctx.processors.is_empty() => {
            return run_processor(text, e, ctx);
        }
        Err(e) => return Err(e),
    };
    let reference = request.reference;
    match request.command {
        Command::Ping { t } => Ok(Action::Reply(text_frame(&protocol::encode_pong(
            reference, t,
        )))),
        Command::Echo { data } => {
            let data = data.ok_or_else(|| missing(reference, "data"))?;
            Ok(Action::Reply(text_frame(&protocol::encode_echo(
                reference, data,
            ))))
        }
        command => {
            let data = data_of(&command).ok_or_else(|| missing(reference, "data"));
            route_or_membership(command, reference, ctx, || {
                Ok(MessageBody::Json(data.clone()?.get().to_string()))
            })
        }
    }
}

/// A binary frame: JSON header, `\n`, payload. The payload is the data.
fn handle_binary(bytes: &[u8], ctx: &mut CommandContext<'_>) -> Result<Action, CommandError> {
    let (header, payload) = protocol::split_binary(bytes)?;
    let request = match protocol::decode_command(header) {
        Ok(request) => request,
        Err(mut e) => {
            // Processors take JSON commands; a payload has no place there.
            if let Some(op) = (e.code == ErrorCode::UnknownOp)
                .then(|| custom_op(header, ctx))
                .flatten()
            {
                e.code = ErrorCode::BadRequest;
                e.reason = format!("op {op:?} is a custom op: send it as a text frame");
            }
            return Err(e);
        }
    };
    let reference = request.reference;
    match request.command {
        Command::Ping { t } => Ok(Action::Reply(text_frame(&protocol::encode_pong(
            reference, t,
        )))),
        Command::Echo { .. } => {
            // Checked and answered as a message is delivered: plain to a
            // client without `wsu.v1.lz4`, compressed (`"lz4":true`) to one
            // with it from `compress_min_bytes` when that is smaller.
            let plain = if request.lz4 {
                std::borrow::Cow::Owned(lz4_payload(payload, ctx.max_message_bytes, reference)?)
            } else {
                std::borrow::Cow::Borrowed(payload)
            };
            let packed = (ctx.wants_lz4 && plain.len() >= ctx.compress_min_bytes)
                .then(|| match request.lz4 {
                    true => payload.to_vec(),
                    false => compress::compress(&plain),
                })
                .filter(|packed| packed.len() < plain.len());
            let header = protocol::encode_echo_header(reference, packed.is_some());
            let body = packed.as_deref().unwrap_or(&plain);
            Ok(Action::Reply(Bytes::from(encode_frame(
                OPCODE_BINARY,
                &[header.as_bytes(), b"\n", body],
            ))))
        }
        command => {
            let max = ctx.max_message_bytes;
            let lz4 = request.lz4;
            route_or_membership(command, reference, ctx, || {
                if lz4 {
                    let plain = lz4_payload(payload, max, reference)?;
                    Ok(MessageBody::Binary {
                        payload: Bytes::from(plain),
                        compressed: Some(Bytes::copy_from_slice(payload)),
                    })
                } else {
                    Ok(MessageBody::Binary {
                        payload: Bytes::copy_from_slice(payload),
                        compressed: None,
                    })
                }
            })
        }
    }
}

/// The op of `header` when a processor is registered for it.
fn custom_op(header: &str, ctx: &CommandContext<'_>) -> Option<String> {
    let command: Value = serde_json::from_str(header).ok()?;
    let op = command.get("op")?.as_str()?;
    ctx.processors.get(op).map(|_| op.to_string())
}

/// An lz4 payload (`"lz4":true`) decompressed: `too_large` past
/// `max_bytes`, `bad_request` when corrupt.
fn lz4_payload(
    payload: &[u8],
    max_bytes: usize,
    reference: Option<&RawValue>,
) -> Result<Vec<u8>, CommandError> {
    compress::decompress(payload, max_bytes).map_err(|e| {
        let code = match e {
            compress::Lz4Error::TooLarge { .. } => ErrorCode::TooLarge,
            compress::Lz4Error::Corrupt(_) => ErrorCode::BadRequest,
        };
        error(reference, code, e.to_string())
    })
}

/// Hands a command with a custom op to its processor, if one is
/// registered (otherwise the `unknown_op` error stands).
fn run_processor(
    text: &str,
    unknown: CommandError,
    ctx: &mut CommandContext<'_>,
) -> Result<Action, CommandError> {
    let Ok(Value::Object(command)) = serde_json::from_str::<Value>(text) else {
        return Err(unknown);
    };
    let Some(op) = command.get("op").and_then(Value::as_str) else {
        return Err(unknown);
    };
    let Some(processor) = ctx.processors.get(op) else {
        return Err(unknown);
    };
    let reference = unknown.reference.clone();
    let mut pctx = ProcessorContext::default();
    processor.process(
        &ProcessorRequest {
            op,
            command: &command,
            user: ctx.user,
        },
        &mut pctx,
    );
    let mut actions = Vec::new();
    for output in pctx.outputs {
        actions.push(match output {
            ProcessorOutput::Ok => match &reference {
                Some(r) => Action::Reply(text_frame(&format!(r#"{{"op":"ok","ref":{r}}}"#))),
                None => continue,
            },
            ProcessorOutput::Reply(mut event) => {
                if let Some(r) = &reference {
                    let r: Value = serde_json::from_str(r).unwrap_or(Value::Null);
                    event.insert("ref".into(), r);
                }
                Action::Reply(text_frame(&Value::Object(event).to_string()))
            }
            ProcessorOutput::Error { code, reason } => {
                ctx.errors.push(code);
                Action::Reply(error_frame(&CommandError {
                    reference: reference.clone(),
                    code,
                    reason,
                }))
            }
            ProcessorOutput::Send {
                to,
                data,
                priority,
                delay_ms,
            } => {
                // (Most likely taken from the command: the client's error.)
                if !crate::protocol::identity::is_valid_user_id(&to) {
                    return Err(CommandError {
                        reference,
                        code: ErrorCode::BadRequest,
                        reason: format!(
                            "{:?} is not a valid user id (1-128 characters of [A-Za-z0-9_.:@-])",
                            crate::protocol::truncate(&to, 64)
                        ),
                    });
                }
                processor_route(ctx, Target::User(to), data, priority, delay_ms)
            }
            ProcessorOutput::Publish {
                group,
                data,
                priority,
                echo,
            } => {
                if !crate::protocol::identity::is_valid_group_name(&group) {
                    return Err(CommandError {
                        reference,
                        code: ErrorCode::BadRequest,
                        reason: format!(
                            "{:?} is not a valid group name (1-128 characters of [A-Za-z0-9_.:@/-])",
                            crate::protocol::truncate(&group, 64)
                        ),
                    });
                }
                processor_route(ctx, Target::Group { group, echo }, data, priority, None)
            }
        });
    }
    Ok(Action::Batch(actions))
}

fn processor_route(
    ctx: &mut CommandContext<'_>,
    target: Target,
    data: Value,
    priority: crate::protocol::Priority,
    delay_ms: Option<u64>,
) -> Action {
    let (to, group) = match &target {
        Target::User(u) => (Some(u.clone()), None),
        Target::Group { group, .. } | Target::Anycast(group) => (None, Some(group.clone())),
    };
    let parts = MessageParts {
        id: (ctx.next_message_id)(),
        from: ctx.user.to_string(),
        to,
        group,
        priority,
        ts_unix_ms: ctx.now_unix_ms(),
        ack: false,
        expires_unix_ms: None,
        body: MessageBody::Json(data.to_string()),
    };
    Action::Route {
        reference: None,
        target,
        envelope: Arc::new(Envelope::accepted_at(
            parts,
            1,
            ctx.compress_min_bytes,
            ctx.now_unix_us(),
        )),
        // A processor may pass on any delay a client gave it.
        deliver_at_unix_ms: delay_ms
            .filter(|d| *d > 0)
            .map(|d| ctx.now_unix_ms().saturating_add(d)),
    }
}

fn data_of<'a>(command: &Command<'a>) -> Option<&'a RawValue> {
    match command {
        Command::Send { data, .. }
        | Command::Publish { data, .. }
        | Command::Anycast { data, .. } => *data,
        _ => None,
    }
}

/// The commands that reach other connections or the directory.
fn route_or_membership(
    command: Command<'_>,
    reference: Option<&RawValue>,
    ctx: &mut CommandContext<'_>,
    make_body: impl FnOnce() -> Result<MessageBody, CommandError>,
) -> Result<Action, CommandError> {
    let owned_ref = reference.map(|r| r.get().to_string());
    let (target, options) = match command {
        Command::Join { group, weight } => {
            return Ok(Action::Join {
                reference: owned_ref,
                group: group.into_owned(),
                weight,
            })
        }
        Command::Leave { group } => {
            return Ok(Action::Leave {
                reference: owned_ref,
                group: group.into_owned(),
            })
        }
        Command::Ack { id } => {
            return Ok(Action::Ack {
                reference: owned_ref,
                id: id.into_owned(),
            })
        }
        Command::Strategy { group, strategy } => {
            return Ok(Action::SetStrategy {
                reference: owned_ref,
                group: group.into_owned(),
                strategy,
            })
        }
        Command::Send { to, options, .. } => (Target::User(to.into_owned()), options),
        Command::Publish {
            group,
            options,
            echo,
            ..
        } => (
            Target::Group {
                group: group.into_owned(),
                echo,
            },
            options,
        ),
        Command::Anycast { group, options, .. } => (Target::Anycast(group.into_owned()), options),
        Command::Ping { .. } | Command::Echo { .. } => unreachable!("answered by the caller"),
    };
    let now = ctx.now_unix_ms();
    let deliver_at_unix_ms = match (options.delay_ms, options.at_unix_ms) {
        (Some(delay), _) if delay > 0 => Some(now.saturating_add(delay)),
        (_, Some(at)) if at > now => Some(at),
        _ => None,
    };
    if let Some(at) = deliver_at_unix_ms {
        if at - now > ctx.schedule_max_ms {
            return Err(error(
                reference,
                ErrorCode::BadRequest,
                format!(
                    "`delay_ms`/`at` may be at most {} ms ahead",
                    ctx.schedule_max_ms
                ),
            ));
        }
    }
    // The TTL runs from when the message was accepted.
    let expires_unix_ms = options.ttl_ms.map(|ttl| now.saturating_add(ttl));
    let (to, group) = match &target {
        Target::User(u) => (Some(u.clone()), None),
        Target::Group { group, .. } | Target::Anycast(group) => (None, Some(group.clone())),
    };
    let body = make_body()?;
    let parts = MessageParts {
        id: (ctx.next_message_id)(),
        from: ctx.user.to_string(),
        to,
        group,
        priority: options.priority,
        ts_unix_ms: now,
        ack: options.ack,
        expires_unix_ms,
        body,
    };
    Ok(Action::Route {
        reference: owned_ref,
        target,
        envelope: Arc::new(Envelope::accepted_at(
            parts,
            1,
            ctx.compress_min_bytes,
            ctx.now_unix_us(),
        )),
        deliver_at_unix_ms,
    })
}

fn error(reference: Option<&RawValue>, code: ErrorCode, reason: impl Into<String>) -> CommandError {
    CommandError {
        reference: reference.map(|r| r.get().to_string()),
        code,
        reason: reason.into(),
    }
}

fn missing(reference: Option<&RawValue>, field: &str) -> CommandError {
    error(
        reference,
        ErrorCode::BadRequest,
        format!("missing field `{field}`"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn run(message: Message) -> Option<Action> {
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("id{n}")
        };
        let mut ctx = CommandContext {
            user: "alice",
            max_message_bytes: 1 << 20,
            compress_min_bytes: 64,
            wants_lz4: false,
            taken_in_unix_us: std::cell::OnceCell::from(1_000_000),
            schedule_max_ms: 86_400_000,
            next_message_id: &mut next,
            processors: &Processors::default(),
            errors: Vec::new(),
        };
        handle_message(message, Mode::Protocol, &mut ctx)
    }

    fn decode_frame(frame: &[u8]) -> Message {
        let mut ws = tungstenite::WebSocket::from_raw_socket(
            std::io::Cursor::new(frame.to_vec()),
            tungstenite::protocol::Role::Client,
            None,
        );
        ws.read().unwrap()
    }

    fn reply_json(input: &str) -> Value {
        match run(Message::text(input)) {
            Some(Action::Reply(f)) => match decode_frame(&f) {
                Message::Text(t) => serde_json::from_str(&t).unwrap(),
                other => panic!("{other:?}"),
            },
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn the_clock_is_read_only_by_commands_that_use_the_time() {
        let mut next = || "id".to_string();
        let mut ctx = CommandContext {
            user: "alice",
            max_message_bytes: 1 << 20,
            compress_min_bytes: 64,
            wants_lz4: false,
            taken_in_unix_us: std::cell::OnceCell::new(),
            schedule_max_ms: 86_400_000,
            next_message_id: &mut next,
            processors: &Processors::default(),
            errors: Vec::new(),
        };
        assert!(handle_message(Message::text("hi"), Mode::Echo, &mut ctx).is_some());
        let ping = Message::text(r#"{"op":"ping","ref":1}"#);
        assert!(handle_message(ping, Mode::Protocol, &mut ctx).is_some());
        assert_eq!(
            ctx.taken_in_unix_us.get(),
            None,
            "echo and ping read no clock"
        );
        let before = crate::routing::envelope::unix_us();
        let send = Message::text(r#"{"op":"send","to":"bob","data":1}"#);
        let Some(Action::Route { envelope, .. }) = handle_message(send, Mode::Protocol, &mut ctx)
        else {
            panic!("send routes");
        };
        let taken_in = *ctx.taken_in_unix_us.get().expect("send reads the clock");
        assert!(taken_in >= before);
        assert_eq!(envelope.accepted_unix_us, taken_in, "one read for both");
        assert_eq!(envelope.parts.ts_unix_ms, taken_in / 1000);
    }

    #[test]
    fn echo_mode_returns_messages_verbatim() {
        let mut next = String::new;
        let mut ctx = CommandContext {
            user: "u",
            max_message_bytes: 100,
            compress_min_bytes: 10,
            wants_lz4: false,
            taken_in_unix_us: std::cell::OnceCell::from(0),
            schedule_max_ms: 1000,
            next_message_id: &mut next,
            processors: &Processors::default(),
            errors: Vec::new(),
        };
        for m in [Message::binary(vec![0u8, 1, 2]), Message::text("not json")] {
            match handle_message(m.clone(), Mode::Echo, &mut ctx) {
                Some(Action::Reply(f)) => assert_eq!(decode_frame(&f), m),
                other => panic!("{other:?}"),
            }
        }
        assert!(handle_message(Message::Pong(vec![].into()), Mode::Echo, &mut ctx).is_none());
    }

    #[test]
    fn local_replies_and_errors() {
        assert_eq!(
            reply_json(r#"{"op":"ping","t":5,"ref":1}"#),
            json!({"op":"pong","t":5,"ref":1})
        );
        assert_eq!(
            reply_json(r#"{"op":"echo","data":[1,"a"]}"#),
            json!({"op":"echo","data":[1,"a"]})
        );
        let e = reply_json(r#"{"op":"echo","ref":"r"}"#);
        assert_eq!(
            (e["code"].as_str(), e["ref"].as_str()),
            (Some("bad_request"), Some("r"))
        );
        assert_eq!(reply_json("{nope")["code"], "bad_json");
        assert_eq!(reply_json(r#"{"op":"fly"}"#)["code"], "unknown_op");
    }

    #[test]
    fn bad_fields_are_named() {
        for (input, field) in [
            (r#"{"op":"send","data":1}"#, "`to`"),
            (r#"{"op":"send","to":"b"}"#, "`data`"),
            (r#"{"op":"send","to":"b c","data":1}"#, "`to`"),
            (
                r#"{"op":"publish","group":"g","data":1,"priority":"urgent"}"#,
                "`priority`",
            ),
            (
                r#"{"op":"publish","group":"g","data":1,"ack":"yes"}"#,
                "`ack`",
            ),
            (r#"{"op":"join","group":"g","weight":0}"#, "`weight`"),
            (r#"{"op":"join","group":"g","weight":1001}"#, "`weight`"),
            (r#"{"op":"join","group":""}"#, "`group`"),
            (r#"{"op":"join"}"#, "`group`"),
            (
                r#"{"op":"strategy","group":"g","strategy":"random"}"#,
                "`strategy`",
            ),
            (
                r#"{"op":"anycast","group":"g","data":1,"delay_ms":-5}"#,
                "`delay_ms`",
            ),
            (
                r#"{"op":"send","to":"b","data":1,"delay_ms":5,"at":9}"#,
                "`delay_ms` or `at`",
            ),
            (
                r#"{"op":"send","to":"b","data":1,"delay_ms":999999999999}"#,
                "`delay_ms`/`at`",
            ),
            (r#"{"op":"ack"}"#, "`id`"),
        ] {
            let e = reply_json(input);
            assert_eq!(e["code"], "bad_request", "{input}");
            assert!(
                e["reason"].as_str().unwrap().contains(field),
                "{input}: {e}"
            );
        }
    }

    #[test]
    fn routed_commands_become_actions() {
        match run(Message::text(
            r#"{"op":"send","to":"bob","data":{"x":1},"priority":"critical","ack":true,"ref":3}"#,
        )) {
            Some(Action::Route {
                reference,
                target,
                envelope,
                deliver_at_unix_ms,
            }) => {
                assert_eq!(reference.as_deref(), Some("3"));
                assert_eq!(target, Target::User("bob".into()));
                assert_eq!(envelope.id(), "id1");
                assert!(envelope.ack());
                assert_eq!(deliver_at_unix_ms, None);
                match decode_frame(&envelope.frame_for(false)) {
                    Message::Text(t) => {
                        let v: Value = serde_json::from_str(&t).unwrap();
                        assert_eq!(
                            v,
                            json!({"op":"msg","id":"id1","from":"alice","to":"bob","group":null,
                                   "priority":"critical","ts":1000,"ack":true,"data":{"x":1}})
                        );
                    }
                    other => panic!("{other:?}"),
                }
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            run(Message::text(r#"{"op":"join","group":"g","weight":3}"#)),
            Some(Action::Join { weight: 3, .. })
        ));
        assert!(matches!(
            run(Message::text(
                r#"{"op":"publish","group":"g","data":1,"echo":true}"#
            )),
            Some(Action::Route {
                target: Target::Group { echo: true, .. },
                ..
            })
        ));
    }

    #[test]
    fn processors_handle_custom_ops() {
        let mut processors = Processors::default();
        processors
            .register(
                "shout",
                std::sync::Arc::new(|req: &ProcessorRequest<'_>, ctx: &mut ProcessorContext| {
                    match req.command.get("text").and_then(Value::as_str) {
                        Some(t) => {
                            ctx.publish(
                                "loud",
                                json!(t.to_uppercase()),
                                crate::protocol::Priority::High,
                                false,
                            );
                            ctx.ok();
                        }
                        None => ctx.error(ErrorCode::BadRequest, "missing field `text`"),
                    }
                }),
            )
            .unwrap();
        processors
            .register(
                "say",
                std::sync::Arc::new(|req: &ProcessorRequest<'_>, ctx: &mut ProcessorContext| {
                    let group = req.command["group"].as_str().unwrap_or_default();
                    ctx.publish(group, json!(1), crate::protocol::Priority::Normal, true);
                }),
            )
            .unwrap();
        let mut next = || "p1".to_string();
        let mut ctx = CommandContext {
            user: "carol",
            max_message_bytes: 1 << 20,
            compress_min_bytes: 1024,
            wants_lz4: false,
            taken_in_unix_us: std::cell::OnceCell::from(7_000),
            schedule_max_ms: 1000,
            next_message_id: &mut next,
            processors: &processors,
            errors: Vec::new(),
        };
        let action = handle_message(
            Message::text(r#"{"op":"shout","text":"hi","ref":4}"#),
            Mode::Protocol,
            &mut ctx,
        );
        let Some(Action::Batch(actions)) = action else {
            panic!("{action:?}")
        };
        match &actions[..] {
            [Action::Route {
                target, envelope, ..
            }, Action::Reply(ok)] => {
                assert_eq!(
                    *target,
                    Target::Group {
                        group: "loud".into(),
                        echo: false
                    }
                );
                assert_eq!(envelope.parts.from, "carol");
                assert_eq!(envelope.parts.body, MessageBody::Json("\"HI\"".into()));
                match decode_frame(ok) {
                    Message::Text(t) => assert_eq!(
                        serde_json::from_str::<Value>(&t).unwrap(),
                        json!({"op":"ok","ref":4})
                    ),
                    other => panic!("{other:?}"),
                }
            }
            other => panic!("{other:?}"),
        }
        let action = handle_message(Message::text(r#"{"op":"shout"}"#), Mode::Protocol, &mut ctx);
        assert!(matches!(action, Some(Action::Batch(ref a)) if a.len() == 1));
        // Ops without a processor are still unknown.
        let action = handle_message(
            Message::text(r#"{"op":"whisper"}"#),
            Mode::Protocol,
            &mut ctx,
        );
        match action {
            Some(Action::Reply(f)) => match decode_frame(&f) {
                Message::Text(t) => assert!(t.contains("unknown_op")),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        // Without a `ref`, success is silent: the publish, and no `ok`.
        let action = handle_message(
            Message::text(r#"{"op":"shout","text":"hi"}"#),
            Mode::Protocol,
            &mut ctx,
        );
        assert!(
            matches!(&action, Some(Action::Batch(a)) if matches!(a[..], [Action::Route { .. }])),
            "{action:?}"
        );
        // A group name the client gave that is not one: its error.
        let error_text = |action: Option<Action>| match action {
            Some(Action::Reply(f)) => match decode_frame(&f) {
                Message::Text(t) => serde_json::from_str::<Value>(&t).unwrap(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        };
        let e = error_text(handle_message(
            Message::text(r#"{"op":"say","group":"bad group!","ref":6}"#),
            Mode::Protocol,
            &mut ctx,
        ));
        assert_eq!(
            (&e["code"], &e["ref"]),
            (&json!("bad_request"), &json!(6)),
            "{e}"
        );
        // The reason quotes at most a prefix of it.
        let long = json!({"op":"say","group":"x ".repeat(5000)}).to_string();
        let e = error_text(handle_message(
            Message::text(long),
            Mode::Protocol,
            &mut ctx,
        ));
        assert!(e["reason"].as_str().unwrap().len() < 200, "{e}");
        // Custom ops are text commands.
        let e = error_text(handle_message(
            Message::binary(b"{\"op\":\"say\",\"group\":\"g\",\"ref\":7}\npayload".to_vec()),
            Mode::Protocol,
            &mut ctx,
        ));
        assert_eq!(e["code"], "bad_request", "{e}");
        assert!(e["reason"].as_str().unwrap().contains("text frame"), "{e}");
    }

    /// A binary `echo` is checked and answered as a message is delivered:
    /// lz4 input decompressed (or refused), the answer plain to a client
    /// without `wsu.v1.lz4` and compressed to one with it.
    #[test]
    fn binary_echo_follows_the_clients_lz4_choice() {
        let echo = |wants_lz4: bool, lz4_in: bool, payload: &[u8]| -> Message {
            let mut next = || "e1".to_string();
            let mut ctx = CommandContext {
                user: "alice",
                max_message_bytes: 1 << 20,
                compress_min_bytes: 1024,
                wants_lz4,
                taken_in_unix_us: std::cell::OnceCell::from(1_000_000),
                schedule_max_ms: 1000,
                next_message_id: &mut next,
                processors: &Processors::default(),
                errors: Vec::new(),
            };
            let header: &[u8] = match lz4_in {
                true => br#"{"op":"echo","lz4":true,"ref":1}"#,
                false => br#"{"op":"echo","ref":1}"#,
            };
            let frame = [header, b"\n", payload].concat();
            match handle_message(Message::binary(frame), Mode::Protocol, &mut ctx) {
                Some(Action::Reply(f)) => decode_frame(&f),
                other => panic!("{other:?}"),
            }
        };
        let big = vec![b'B'; 5000];
        let packed = compress::compress(&big);
        let split = |m: Message| -> (Value, Vec<u8>) {
            let Message::Binary(b) = m else {
                panic!("{m:?}")
            };
            let (h, p) = protocol::split_binary(&b).unwrap();
            (serde_json::from_str(h).unwrap(), p.to_vec())
        };
        // A plain client sending lz4 gets it back plain.
        let (header, payload) = split(echo(false, true, &packed));
        assert_eq!(
            (header, payload),
            (json!({"op":"echo","ref":1}), big.clone())
        );
        // An lz4 client gets a large payload compressed, a small one plain.
        let (header, payload) = split(echo(true, false, &big));
        assert_eq!(header, json!({"op":"echo","ref":1,"lz4":true}));
        assert_eq!(compress::decompress(&payload, 1 << 20).unwrap(), big);
        let (header, payload) = split(echo(true, false, b"tiny"));
        assert_eq!(
            (header, payload),
            (json!({"op":"echo","ref":1}), b"tiny".to_vec())
        );
        // Corrupt lz4, and lz4 that would expand past the limit: refused.
        let error = |m: Message| -> Value {
            let Message::Text(t) = m else { panic!("{m:?}") };
            serde_json::from_str(&t).unwrap()
        };
        assert_eq!(
            error(echo(false, true, b"\x10\x00\x00\x00garbage"))["code"],
            "bad_request"
        );
        let bomb = compress::compress(&vec![0u8; 2 << 20]);
        assert_eq!(error(echo(true, true, &bomb))["code"], "too_large");
    }

    #[test]
    fn processor_delays_saturate_instead_of_overflowing() {
        // Found while fuzzing the command path with a processor that passes
        // the client's `delay_ms` on: `now + delay` overflowed (a panic with
        // overflow checks, a delivery time in the past without them).
        let mut processors = Processors::default();
        processors
            .register(
                "later",
                std::sync::Arc::new(|req: &ProcessorRequest<'_>, ctx: &mut ProcessorContext| {
                    let delay = req.command["delay_ms"].as_u64().unwrap();
                    ctx.schedule_send("bob", json!(1), crate::protocol::Priority::Normal, delay);
                }),
            )
            .unwrap();
        let mut next = || "p1".to_string();
        let mut ctx = CommandContext {
            user: "carol",
            max_message_bytes: 1 << 20,
            compress_min_bytes: 1024,
            wants_lz4: false,
            taken_in_unix_us: std::cell::OnceCell::from(1_000_000),
            schedule_max_ms: 1000,
            next_message_id: &mut next,
            processors: &processors,
            errors: Vec::new(),
        };
        let action = handle_message(
            Message::text(format!(r#"{{"op":"later","delay_ms":{}}}"#, u64::MAX)),
            Mode::Protocol,
            &mut ctx,
        );
        match action {
            Some(Action::Batch(actions)) => match &actions[..] {
                [Action::Route {
                    deliver_at_unix_ms, ..
                }] => assert_eq!(*deliver_at_unix_ms, Some(u64::MAX)),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn binary_lz4_input_is_checked() {
        let mut frame = br#"{"op":"publish","group":"g","lz4":true,"ref":1}"#.to_vec();
        frame.push(b'\n');
        frame.extend_from_slice(b"\x10\x00\x00\x00garbage");
        match run(Message::binary(frame)) {
            Some(Action::Reply(f)) => match decode_frame(&f) {
                Message::Text(t) => assert!(t.contains("bad_request"), "{t}"),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        let payload = vec![9u8; 3000];
        let mut frame = br#"{"op":"publish","group":"g","lz4":true}"#.to_vec();
        frame.push(b'\n');
        frame.extend_from_slice(&compress::compress(&payload));
        match run(Message::binary(frame)) {
            Some(Action::Route { envelope, .. }) => {
                match decode_frame(&envelope.frame_for(false)) {
                    Message::Binary(b) => {
                        let (_, p) = protocol::split_binary(&b).unwrap();
                        assert_eq!(p, &payload[..]);
                    }
                    other => panic!("{other:?}"),
                }
            }
            other => panic!("{other:?}"),
        }
    }
}
