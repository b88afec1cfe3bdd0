//! What a connection answers to each data message, sans-IO: a message in,
//! the reply out. Connection-local commands (`ping`, `echo`) are answered
//! here; errors become `error` events and never close the connection.

use tungstenite::Message;

use crate::protocol::{self, Command, CommandError};

/// How the WebSocket path behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The ws-uring protocol.
    Protocol,
    /// `--echo`: every data message back verbatim.
    Echo,
}

/// The reply to one data message (`None`: nothing to send).
pub fn reply_to(message: Message, mode: Mode) -> Option<Message> {
    match (mode, message) {
        (Mode::Echo, m @ (Message::Text(_) | Message::Binary(_))) => Some(m),
        (Mode::Protocol, Message::Text(text)) => Some(Message::text(reply_to_text(&text))),
        (Mode::Protocol, Message::Binary(frame)) => Some(reply_to_binary(&frame)),
        // Control frames are handled by the session (pongs, close replies).
        _ => None,
    }
}

fn reply_to_text(text: &str) -> String {
    let request = match protocol::decode_command(text) {
        Ok(r) => r,
        Err(e) => return protocol::encode_error(&e),
    };
    match request.command {
        Command::Ping { t } => protocol::encode_pong(request.reference, t),
        Command::Echo { data: Some(data) } => protocol::encode_echo(request.reference, data),
        Command::Echo { data: None } => protocol::encode_error(&missing_data(request.reference)),
    }
}

/// A binary frame: JSON header, `\n`, payload. An `echo` comes back as a
/// binary frame with the event header and the same payload.
fn reply_to_binary(frame: &[u8]) -> Message {
    let (header, payload) = match protocol::split_binary(frame) {
        Ok(parts) => parts,
        Err(e) => return Message::text(protocol::encode_error(&e)),
    };
    let request = match protocol::decode_command(header) {
        Ok(r) => r,
        Err(e) => return Message::text(protocol::encode_error(&e)),
    };
    match request.command {
        Command::Ping { t } => Message::text(protocol::encode_pong(request.reference, t)),
        Command::Echo { .. } => {
            let header = protocol::encode_echo_header(request.reference);
            let mut out = Vec::with_capacity(header.len() + 1 + payload.len());
            out.extend_from_slice(header.as_bytes());
            out.push(b'\n');
            out.extend_from_slice(payload);
            Message::binary(out)
        }
    }
}

fn missing_data(reference: Option<&serde_json::value::RawValue>) -> CommandError {
    CommandError {
        reference: reference.map(|r| r.get().to_string()),
        code: protocol::ErrorCode::BadRequest,
        reason: "missing field `data`".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn text_reply(input: &str) -> Value {
        match reply_to(Message::text(input), Mode::Protocol) {
            Some(Message::Text(t)) => serde_json::from_str(&t).unwrap(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    #[test]
    fn echo_mode_returns_messages_verbatim() {
        let m = Message::binary(vec![0u8, 1, 2]);
        assert_eq!(reply_to(m.clone(), Mode::Echo), Some(m));
        let m = Message::text("not json at all");
        assert_eq!(reply_to(m.clone(), Mode::Echo), Some(m));
        assert_eq!(reply_to(Message::Pong(vec![].into()), Mode::Echo), None);
    }

    #[test]
    fn protocol_replies() {
        assert_eq!(
            text_reply(r#"{"op":"ping","t":5,"ref":1}"#),
            serde_json::json!({"op":"pong","t":5,"ref":1})
        );
        assert_eq!(
            text_reply(r#"{"op":"echo","data":[1,"a"]}"#),
            serde_json::json!({"op":"echo","data":[1,"a"]})
        );
        let e = text_reply(r#"{"op":"echo","ref":"r"}"#);
        assert_eq!(e["code"], "bad_request");
        assert_eq!(e["ref"], "r");
        assert_eq!(text_reply("{nope")["code"], "bad_json");
        assert_eq!(text_reply(r#"{"op":"fly"}"#)["code"], "unknown_op");
    }

    #[test]
    fn binary_echo_keeps_payload() {
        let mut frame = br#"{"op":"echo","ref":3}"#.to_vec();
        frame.push(b'\n');
        frame.extend_from_slice(&[0, 159, 146, 150, b'\n']);
        match reply_to(Message::binary(frame), Mode::Protocol) {
            Some(Message::Binary(out)) => {
                let (h, p) = protocol::split_binary(&out).unwrap();
                let h: Value = serde_json::from_str(h).unwrap();
                assert_eq!(h, serde_json::json!({"op":"echo","ref":3}));
                assert_eq!(p, &[0, 159, 146, 150, b'\n']);
            }
            other => panic!("expected binary, got {other:?}"),
        }
    }

    #[test]
    fn bad_binary_frames_get_text_errors() {
        match reply_to(Message::binary(b"no header".to_vec()), Mode::Protocol) {
            Some(Message::Text(t)) => assert!(t.contains("bad_request")),
            other => panic!("{other:?}"),
        }
    }
}
