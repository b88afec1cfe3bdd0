//! A small blocking client for the ws-uring protocol, for backends, tools
//! and tests: connect as a user, send commands and wait for their answers,
//! read events. Built on tungstenite over a std `TcpStream`.
//!
//! ```no_run
//! use ws_uring::client::Client;
//! use serde_json::json;
//!
//! let mut alice = Client::connect("ws://127.0.0.1:8765/ws", "alice")?;
//! alice.request(json!({"op": "join", "group": "room"}))?;
//! let ok = alice.request(json!({"op": "publish", "group": "room", "data": "hi"}))?;
//! println!("delivered to {}", ok["delivered"]);
//! # Ok::<(), ws_uring::client::ClientError>(())
//! ```

use std::collections::VecDeque;
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("WebSocket error: {0}")]
    WebSocket(#[from] tungstenite::Error),
    #[error("the server sent something that is not a JSON event: {0}")]
    BadEvent(String),
    #[error("the server answered {code}: {reason}")]
    Refused { code: String, reason: String },
    #[error("the connection closed")]
    Closed,
}

/// One connection to ws-uring as one user.
pub struct Client {
    ws: WebSocket<TcpStream>,
    welcome: Value,
    /// Events read while waiting for an answer, in arrival order.
    backlog: VecDeque<Value>,
    next_ref: u64,
}

impl Client {
    /// Connects to `url` (`ws://host:port/path`) as `user` and waits for
    /// `welcome`.
    pub fn connect(url: &str, user: &str) -> Result<Client, ClientError> {
        let full = format!("{url}?user={user}");
        let fail = |reason: String| ClientError::Connect {
            url: full.clone(),
            reason,
        };
        let authority = url
            .strip_prefix("ws://")
            .ok_or_else(|| fail("only ws:// URLs are supported".into()))?
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let stream = TcpStream::connect(&authority).map_err(|e| fail(e.to_string()))?;
        stream.set_nodelay(true).map_err(|e| fail(e.to_string()))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| fail(e.to_string()))?;
        let (ws, _) =
            tungstenite::client(full.as_str(), stream).map_err(|e| fail(e.to_string()))?;
        let mut client = Client {
            ws,
            welcome: Value::Null,
            backlog: VecDeque::new(),
            next_ref: 0,
        };
        let welcome = client.read_event()?;
        if welcome["op"] != "welcome" {
            return Err(ClientError::BadEvent(welcome.to_string()));
        }
        client.welcome = welcome;
        Ok(client)
    }

    /// The `welcome` event (`user`, `conn`, `shard`, `server`, `heartbeat_ms`).
    pub fn welcome(&self) -> &Value {
        &self.welcome
    }

    /// Sends `command` with a fresh `ref` and returns its `ok` (or the
    /// `error` as `ClientError::Refused`). Other events that arrive
    /// meanwhile are kept for `next_event`.
    pub fn request(&mut self, mut command: Value) -> Result<Value, ClientError> {
        self.next_ref += 1;
        let reference = format!("c{}", self.next_ref);
        command["ref"] = json!(reference);
        self.ws.send(Message::text(command.to_string()))?;
        loop {
            let event = self.read_event()?;
            if event["ref"] == json!(reference) {
                if event["op"] == "error" {
                    return Err(ClientError::Refused {
                        code: event["code"].as_str().unwrap_or_default().to_string(),
                        reason: event["reason"].as_str().unwrap_or_default().to_string(),
                    });
                }
                return Ok(event);
            }
            self.backlog.push_back(event);
        }
    }

    /// Sends a command without waiting for anything.
    pub fn send_command(&mut self, command: &Value) -> Result<(), ClientError> {
        self.ws.send(Message::text(command.to_string()))?;
        Ok(())
    }

    /// The next event (kept ones first).
    pub fn next_event(&mut self) -> Result<Value, ClientError> {
        match self.backlog.pop_front() {
            Some(event) => Ok(event),
            None => self.read_event(),
        }
    }

    /// The next `msg` event; acknowledges it when it asks for an ack.
    pub fn next_message(&mut self) -> Result<Value, ClientError> {
        loop {
            let event = self.next_event()?;
            if event["op"] == "msg" {
                if event["ack"] == true {
                    self.send_command(&json!({"op": "ack", "id": event["id"]}))?;
                }
                return Ok(event);
            }
        }
    }

    /// Closes the connection politely.
    pub fn close(mut self) -> Result<(), ClientError> {
        self.ws.close(None)?;
        loop {
            match self.ws.read() {
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn read_event(&mut self) -> Result<Value, ClientError> {
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    return serde_json::from_str(&text)
                        .map_err(|_| ClientError::BadEvent(text.to_string()))
                }
                Ok(Message::Close(_)) => return Err(ClientError::Closed),
                // Pings are answered by tungstenite; binary events are not
                // this client's business.
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed) => return Err(ClientError::Closed),
                Err(e) => return Err(e.into()),
            }
        }
    }
}
