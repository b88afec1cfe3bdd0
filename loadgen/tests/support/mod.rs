//! In-process test servers on 127.0.0.1:0, one std thread per connection,
//! built on tungstenite's server side (independent of the loadgen's own
//! client code, so the two check each other).

#![allow(dead_code)]
// tungstenite's handshake callback returns its large `ErrorResponse` by value.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use tungstenite::handshake::server::{Request, Response};
use tungstenite::{Message, WebSocket};

/// A running test server; stops accepting when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    pub accepted: Arc<AtomicU64>,
}

impl TestServer {
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr); // wake the accept loop
    }
}

fn serve(handler: impl Fn(TcpStream, u64) + Send + Sync + 'static) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let handler = Arc::new(handler);
    {
        let stop = Arc::clone(&stop);
        let accepted = Arc::clone(&accepted);
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let n = accepted.fetch_add(1, Ordering::Relaxed);
                let handler = Arc::clone(&handler);
                thread::spawn(move || handler(stream, n));
            }
        });
    }
    TestServer {
        addr,
        stop,
        accepted,
    }
}

fn would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if io.kind() == ErrorKind::WouldBlock || io.kind() == ErrorKind::TimedOut)
}

/// Plain RFC 6455 echo: every text/binary message comes back unchanged.
pub fn echo_server() -> TestServer {
    serve(|stream, _| {
        let _ = stream.set_nodelay(true);
        let Ok(mut ws) = tungstenite::accept(stream) else {
            return;
        };
        loop {
            match ws.read() {
                Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                    if ws.send(m).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })
}

/// Echoes `echo_before_drop` messages, then drops the TCP connection without
/// a close frame.
pub fn dropping_echo_server(echo_before_drop: usize) -> TestServer {
    serve(move |stream, _| {
        let _ = stream.set_nodelay(true);
        let Ok(mut ws) = tungstenite::accept(stream) else {
            return;
        };
        for _ in 0..echo_before_drop {
            match ws.read() {
                Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                    if ws.send(m).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
        let _ = ws.get_mut().shutdown(std::net::Shutdown::Both);
    })
}

#[derive(Default)]
struct Directory {
    users: HashMap<String, Vec<(u64, Sender<String>)>>,
    groups: HashMap<String, Vec<(u64, String, Sender<String>)>>,
    next_anycast: HashMap<String, usize>,
}

/// A small model of the ws-uring protocol (welcome, ping, join, send,
/// publish, anycast) so the JSON workloads can be tested before the real
/// server supports them.
pub fn protocol_server() -> TestServer {
    let dir = Arc::new(Mutex::new(Directory::default()));
    serve(move |stream, conn| {
        let _ = stream.set_nodelay(true);
        let user = Arc::new(Mutex::new(format!("anon-{conn}")));
        let user_cb = Arc::clone(&user);
        let callback = move |req: &Request, resp: Response| {
            if let Some(q) = req.uri().query() {
                for pair in q.split('&') {
                    if let Some(u) = pair.strip_prefix("user=") {
                        *user_cb.lock().unwrap() = u.to_string();
                    }
                }
            }
            Ok(resp)
        };
        let Ok(mut ws) = tungstenite::accept_hdr(stream, callback) else {
            return;
        };
        let user = user.lock().unwrap().clone();
        let (tx, rx): (Sender<String>, Receiver<String>) = channel();
        dir.lock()
            .unwrap()
            .users
            .entry(user.clone())
            .or_default()
            .push((conn, tx.clone()));
        let welcome = format!(
            r#"{{"op":"welcome","user":"{user}","conn":{conn},"shard":0,"server":"mock/0","heartbeat_ms":20000}}"#
        );
        if ws.send(Message::text(welcome)).is_err() {
            return;
        }
        let _ = ws
            .get_mut()
            .set_read_timeout(Some(Duration::from_millis(2)));
        run_protocol_conn(&mut ws, &dir, &user, conn, &tx, &rx);
        let mut d = dir.lock().unwrap();
        if let Some(list) = d.users.get_mut(&user) {
            list.retain(|(c, _)| *c != conn);
        }
        for members in d.groups.values_mut() {
            members.retain(|(c, _, _)| *c != conn);
        }
    })
}

fn msg_event(
    from: &str,
    to: Option<&str>,
    group: Option<&str>,
    data: &serde_json::Value,
) -> String {
    serde_json::json!({
        "op": "msg", "id": "1", "from": from, "to": to, "group": group,
        "priority": "normal", "ts": 0, "data": data
    })
    .to_string()
}

fn run_protocol_conn(
    ws: &mut WebSocket<TcpStream>,
    dir: &Arc<Mutex<Directory>>,
    user: &str,
    conn: u64,
    tx: &Sender<String>,
    rx: &Receiver<String>,
) {
    loop {
        while let Ok(out) = rx.try_recv() {
            if ws.write(Message::text(out)).is_err() {
                return;
            }
        }
        if ws.flush().is_err() {
            return;
        }
        let text = match ws.read() {
            Ok(Message::Text(t)) => t.to_string(),
            Ok(Message::Close(_)) => {
                let _ = ws.flush();
                return;
            }
            Ok(_) => continue,
            Err(e) if would_block(&e) => continue,
            Err(_) => return,
        };
        let Ok(cmd) = serde_json::from_str::<serde_json::Value>(&text) else {
            let _ = tx.send(r#"{"op":"error","ref":null,"code":"bad_json","reason":"x"}"#.into());
            continue;
        };
        let reference = cmd.get("ref").cloned().unwrap_or(serde_json::Value::Null);
        let data = cmd.get("data").cloned().unwrap_or(serde_json::Value::Null);
        let mut d = dir.lock().unwrap();
        match cmd["op"].as_str().unwrap_or("") {
            "ping" => {
                let _ = tx.send(serde_json::json!({"op":"pong","t":cmd["t"]}).to_string());
            }
            "join" => {
                let group = cmd["group"].as_str().unwrap_or("").to_string();
                d.groups
                    .entry(group)
                    .or_default()
                    .push((conn, user.to_string(), tx.clone()));
                if !reference.is_null() {
                    let _ = tx.send(serde_json::json!({"op":"ok","ref":reference}).to_string());
                }
            }
            "send" => {
                let to = cmd["to"].as_str().unwrap_or("");
                for (_, target) in d.users.get(to).into_iter().flatten() {
                    let _ = target.send(msg_event(user, Some(to), None, &data));
                }
            }
            "publish" => {
                let group = cmd["group"].as_str().unwrap_or("");
                let echo = cmd["echo"].as_bool().unwrap_or(false);
                for (c, _, target) in d.groups.get(group).into_iter().flatten() {
                    if *c != conn || echo {
                        let _ = target.send(msg_event(user, None, Some(group), &data));
                    }
                }
            }
            "anycast" => {
                let group = cmd["group"].as_str().unwrap_or("").to_string();
                let members = d.groups.get(&group).cloned().unwrap_or_default();
                if members.is_empty() {
                    let _ = tx.send(
                        r#"{"op":"error","ref":null,"code":"no_members","reason":"x"}"#.into(),
                    );
                } else {
                    let next = d.next_anycast.entry(group.clone()).or_insert(0);
                    let (_, _, target) = &members[*next % members.len()];
                    *next += 1;
                    let _ = target.send(msg_event(user, None, Some(&group), &data));
                }
            }
            _ => {
                let _ =
                    tx.send(r#"{"op":"error","ref":null,"code":"unknown_op","reason":"x"}"#.into());
            }
        }
    }
}
