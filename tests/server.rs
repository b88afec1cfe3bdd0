//! The real binary on an ephemeral port, spoken to over real WebSocket.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tungstenite::Message;

#[test]
fn welcome_ping_and_echo() {
    let server = TestServer::start(&["--shards", "1"]);
    let (mut ws, welcome) = connect_welcomed(&server.url("?user=alice"));
    assert_eq!(welcome["user"], "alice");
    assert_eq!(welcome["shard"], 0);
    assert!(welcome["conn"].is_u64());
    assert!(welcome["server"].as_str().unwrap().starts_with("ws-uring/"));
    assert_eq!(welcome["heartbeat_ms"], 20000);

    let pong = request(&mut ws, r#"{"op":"ping","t":{"n":12.5},"ref":"p1"}"#);
    assert_eq!(pong, json!({"op":"pong","t":{"n":12.5},"ref":"p1"}));
    let echo = request(&mut ws, r#"{"op":"echo","data":["x",{"y":null}]}"#);
    assert_eq!(echo, json!({"op":"echo","data":["x",{"y":null}]}));

    // Binary: header, \n, payload comes back with the event header.
    let mut frame = br#"{"op":"echo","ref":9}"#.to_vec();
    frame.push(b'\n');
    frame.extend_from_slice(&[0, 1, 2, 255]);
    ws.send(Message::binary(frame)).unwrap();
    match ws.read().unwrap() {
        Message::Binary(b) => {
            let split = b.iter().position(|&c| c == b'\n').unwrap();
            let header: serde_json::Value = serde_json::from_slice(&b[..split]).unwrap();
            assert_eq!(header, json!({"op":"echo","ref":9}));
            assert_eq!(&b[split + 1..], &[0, 1, 2, 255]);
        }
        other => panic!("expected binary echo, got {other:?}"),
    }
}

#[test]
fn anonymous_users_get_an_id_from_their_connection() {
    let server = TestServer::start(&["--shards", "1"]);
    let (_ws, welcome) = connect_welcomed(&server.url(""));
    let conn = welcome["conn"].as_u64().unwrap();
    assert_eq!(welcome["user"], format!("anon-{conn}"));
}

#[test]
fn every_error_code_and_the_connection_survives() {
    let server = TestServer::start(&["--shards", "1"]);
    let (mut ws, _) = connect_welcomed(&server.url("?user=e"));
    let cases = [
        ("this is not json", "bad_json", json!(null)),
        (r#"{"op":"ping""#, "bad_json", json!(null)),
        (r#"[1,2,3]"#, "bad_request", json!(null)),
        (r#"{"ref":4}"#, "bad_request", json!(4)),
        (r#"{"op":"echo","ref":"e1"}"#, "bad_request", json!("e1")),
        (r#"{"op":"ping","ref":[1]}"#, "bad_request", json!(null)),
        (r#"{"op":"teleport","ref":"t"}"#, "unknown_op", json!("t")),
    ];
    for (text, code, reference) in cases {
        let e = request(&mut ws, text);
        assert_eq!(e["op"], "error", "{text}");
        assert_eq!(e["code"], code, "{text}");
        assert_eq!(e["ref"], reference, "{text}");
        assert!(!e["reason"].as_str().unwrap().is_empty());
    }
    // A binary frame with no header separator.
    ws.send(Message::binary(b"no newline here".to_vec()))
        .unwrap();
    assert_eq!(next_json(&mut ws)["code"], "bad_request");
    // Still open and serving.
    assert_eq!(request(&mut ws, r#"{"op":"ping"}"#), json!({"op":"pong"}));
}

#[test]
fn over_max_connections_is_503_before_upgrade() {
    let server = TestServer::start(&["--shards", "2", "--max-connections", "2"]);
    let (_a, _) = connect_welcomed(&server.url("?user=a"));
    let (_b, _) = connect_welcomed(&server.url("?user=b"));
    let (status, text) = http_raw(server.port, &upgrade_request("/ws?user=c"));
    assert_eq!(status, 503, "{text}");
    drop(_a);
    // The freed place becomes usable once the server sees the close.
    let deadline = Instant::now() + WAIT;
    loop {
        match try_connect(&server.url("?user=d")) {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("place not freed: {e}"),
        }
    }
}

#[test]
fn oversize_message_closes_1009() {
    let server = TestServer::start(&["--shards", "1", "--max-message-bytes", "1024"]);
    let (mut ws, _) = connect_welcomed(&server.url("?user=big"));
    assert_eq!(
        request(
            &mut ws,
            &format!(r#"{{"op":"echo","data":"{}"}}"#, "a".repeat(900))
        )["op"],
        "echo"
    );
    ws.send(Message::text("x".repeat(2000))).unwrap();
    assert_eq!(expect_close(&mut ws), 1009);
}

#[test]
fn invalid_utf8_closes_1007() {
    let server = TestServer::start(&["--shards", "1"]);
    let mut s = raw_upgraded(server.port, false);
    s.write_all(&masked_frame(0x81, &[b'o', b'k', 0xff, 0xfe], [1, 2, 3, 4]))
        .unwrap();
    assert_eq!(raw_expect_close(&mut s), 1007);
}

#[test]
fn protocol_violations_close_1002() {
    let server = TestServer::start(&["--shards", "1"]);
    // Unmasked client frame.
    let mut s = raw_upgraded(server.port, false);
    s.write_all(&[0x81, 0x02, b'h', b'i']).unwrap();
    assert_eq!(raw_expect_close(&mut s), 1002);
    // Reserved bits set without an extension.
    let mut s = raw_upgraded(server.port, false);
    s.write_all(&masked_frame(0xC1, b"hi", [9, 9, 9, 9]))
        .unwrap();
    assert_eq!(raw_expect_close(&mut s), 1002);
    // A continuation frame with nothing to continue.
    let mut s = raw_upgraded(server.port, false);
    s.write_all(&masked_frame(0x80, b"hi", [7, 7, 7, 7]))
        .unwrap();
    assert_eq!(raw_expect_close(&mut s), 1002);
}

#[test]
fn silent_connection_is_pinged_then_closed_1001_and_counted_stale() {
    let server = TestServer::start(&[
        "--shards",
        "1",
        "--ping-interval-ms",
        "100",
        "--idle-timeout-ms",
        "400",
    ]);
    let mut s = raw_upgraded(server.port, false);
    let started = Instant::now();
    let mut pings = 0;
    let code = loop {
        let (opcode, payload) = read_server_frame(&mut s).expect("frames until close");
        match opcode {
            9 => pings += 1,
            8 => break u16::from_be_bytes([payload[0], payload[1]]),
            other => panic!("unexpected opcode {other}"),
        }
    };
    assert_eq!(code, 1001);
    assert!(pings >= 1, "server pinged before giving up");
    assert!(started.elapsed() >= Duration::from_millis(350));
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(s);
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, text) = http_get(server.port, "/health");
        let health = body_json(&text);
        if health["stale_closed"] == 1 {
            assert_eq!(health["connections"], 0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stale close not counted: {health}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn pongs_keep_a_connection_alive() {
    let server = TestServer::start(&[
        "--shards",
        "1",
        "--ping-interval-ms",
        "50",
        "--idle-timeout-ms",
        "300",
    ]);
    // tungstenite answers pings while reading.
    let (mut ws, _) = connect_welcomed(&server.url("?user=alive"));
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let until = Instant::now() + Duration::from_millis(900);
    while Instant::now() < until {
        match ws.read() {
            Ok(Message::Close(f)) => panic!("closed while answering pings: {f:?}"),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("{e}"),
        }
        let _ = ws.flush();
    }
    ws.get_mut().set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(request(&mut ws, r#"{"op":"ping"}"#), json!({"op":"pong"}));
}

#[test]
fn health_counts_connections_over_all_shards() {
    let server = TestServer::start(&["--shards", "3"]);
    let clients: Vec<_> = (0..9)
        .map(|i| connect_welcomed(&server.url(&format!("?user=h{i}"))))
        .collect();
    let (status, text) = http_get(server.port, "/health");
    assert_eq!(status, 200);
    let health = body_json(&text);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["shards"], 3);
    assert_eq!(health["connections"], 9);
    assert!(health["uptime_s"].is_u64());
    drop(clients);
}

#[test]
fn http_errors_never_hang() {
    let server = TestServer::start(&["--shards", "1"]);
    assert_eq!(http_get(server.port, "/nothing-here").0, 404);
    assert_eq!(
        http_raw(
            server.port,
            b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        )
        .0,
        405
    );
    assert_eq!(
        http_raw(server.port, b"DELETE /ws HTTP/1.1\r\nHost: x\r\n\r\n").0,
        405
    );
    assert_eq!(http_raw(server.port, b"\x16\x03\x01garbage\r\n\r\n").0, 400);
    assert_eq!(http_get(server.port, "/ws").0, 400, "GET without upgrade");
    assert_eq!(
        http_raw(server.port, &upgrade_request("/ws?user=no%20spaces")).0,
        400
    );
    let too_long = format!("/ws?user={}", "u".repeat(129));
    assert_eq!(http_raw(server.port, &upgrade_request(&too_long)).0, 400);
    let mut huge = b"GET /health HTTP/1.1\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 20_000));
    huge.extend_from_slice(b"\r\n\r\n");
    assert_eq!(http_raw(server.port, &huge).0, 400);
}

#[test]
fn unfinished_handshake_is_closed_after_the_timeout() {
    let server = TestServer::start(&["--shards", "1", "--handshake-timeout-ms", "200"]);
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: slow").unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without a response");
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn subprotocol_is_echoed() {
    let server = TestServer::start(&["--shards", "1"]);
    let mut req =
        tungstenite::client::IntoClientRequest::into_client_request(server.url("")).unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "wsu.v1.lz4, wsu.v1".parse().unwrap(),
    );
    let stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let (_ws, response) = tungstenite::client(req, stream).unwrap();
    assert_eq!(response.headers()["Sec-WebSocket-Protocol"], "wsu.v1.lz4");
}

#[test]
fn sigterm_closes_clients_1001_and_exits_0() {
    let mut server = TestServer::start(&["--shards", "2"]);
    let mut clients: Vec<_> = (0..4)
        .map(|i| connect_welcomed(&server.url(&format!("?user=s{i}"))).0)
        .collect();
    server.signal(libc::SIGTERM);
    for ws in clients.iter_mut() {
        assert_eq!(expect_close(ws), 1001);
    }
    let status = server.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    let log = server.drain_log().join("\n");
    assert!(log.contains("shutdown complete"), "{log}");
}

#[test]
fn sigint_with_no_clients_exits_0() {
    let mut server = TestServer::start(&["--shards", "1"]);
    server.signal(libc::SIGINT);
    assert_eq!(server.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn two_shards_both_serve() {
    let server = TestServer::start(&["--shards", "2"]);
    let mut shards = HashSet::new();
    let mut clients = Vec::new();
    for i in 0..40 {
        let (mut ws, welcome) = connect_welcomed(&server.url(&format!("?user=t{i}")));
        shards.insert(welcome["shard"].as_u64().unwrap());
        assert_eq!(request(&mut ws, r#"{"op":"ping","t":1}"#)["op"], "pong");
        clients.push(ws);
    }
    assert_eq!(
        shards,
        HashSet::from([0, 1]),
        "both shards accepted connections"
    );
}

#[test]
fn eight_shards_on_a_small_machine() {
    let server = TestServer::start(&["--shards", "8"]);
    let mut shards = HashSet::new();
    let mut clients = Vec::new();
    for i in 0..64 {
        let (mut ws, welcome) = connect_welcomed(&server.url(&format!("?user=e{i}")));
        shards.insert(welcome["shard"].as_u64().unwrap());
        assert_eq!(request(&mut ws, r#"{"op":"echo","data":1}"#)["data"], 1);
        clients.push(ws);
    }
    assert!(
        shards.len() >= 4,
        "connections spread over shards: {shards:?}"
    );
    let (_, text) = http_get(server.port, "/health");
    let health = body_json(&text);
    assert_eq!(health["shards"], 8);
    assert_eq!(health["connections"], 64);
}

#[test]
fn echo_mode_echoes_verbatim_without_welcome() {
    let server = TestServer::start(&["--shards", "1", "--echo"]);
    let mut ws = connect(&server.url(""));
    ws.send(Message::text("plain text, not a command")).unwrap();
    assert_eq!(
        ws.read().unwrap(),
        Message::text("plain text, not a command")
    );
    ws.send(Message::binary(vec![0u8, 1, 2])).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(vec![0u8, 1, 2]));
}

#[test]
fn frames_pipelined_behind_the_upgrade_are_served() {
    let server = TestServer::start(&["--shards", "1", "--echo"]);
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut bytes = upgrade_request("/ws");
    bytes.extend(masked_frame(0x81, b"early", [5, 6, 7, 8]));
    s.write_all(&bytes).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert_eq!(read_server_frame(&mut s), Some((1, b"early".to_vec())));
}

#[test]
fn a_message_larger_than_the_outbox_bound_is_still_echoed() {
    let server = TestServer::start(&[
        "--shards",
        "1",
        "--echo",
        "--max-message-bytes",
        "4194304",
        "--outbox-max-bytes",
        "65536",
    ]);
    let mut ws = connect(&server.url(""));
    let big = vec![7u8; 3 << 20];
    ws.send(Message::binary(big.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(big));
}

#[test]
fn pongs_go_out_before_data_queued_in_the_same_read() {
    let server = TestServer::start(&["--shards", "1", "--echo"]);
    let mut s = raw_upgraded(server.port, true);
    // A fragmented text message with a ping between its fragments, in one write.
    let mut bytes = masked_frame(0x01, b"frag", [1, 1, 1, 1]);
    bytes.extend(masked_frame(0x89, b"pp", [2, 2, 2, 2]));
    bytes.extend(masked_frame(0x80, b"ment", [3, 3, 3, 3]));
    s.write_all(&bytes).unwrap();
    assert_eq!(read_server_frame(&mut s), Some((0x0A, b"pp".to_vec())));
    assert_eq!(
        read_server_frame(&mut s),
        Some((0x01, b"fragment".to_vec()))
    );
}

#[test]
fn commands_over_the_rate_limit_are_refused_and_the_connection_lives() {
    let server = TestServer::start(&[
        "--shards",
        "1",
        "--rate-limit-per-s",
        "20",
        "--rate-limit-burst",
        "5",
    ]);
    let (mut ws, _) = connect_welcomed(&server.url("?user=eager"));
    for i in 0..30 {
        ws.send(Message::text(format!(r#"{{"op":"ping","ref":{i}}}"#)))
            .unwrap();
    }
    let answers: Vec<serde_json::Value> = (0..30).map(|_| next_json(&mut ws)).collect();
    let pongs = answers.iter().filter(|a| a["op"] == "pong").count();
    let limited: Vec<_> = answers
        .iter()
        .filter(|a| a["code"] == "rate_limited")
        .collect();
    assert_eq!(pongs + limited.len(), 30, "{answers:?}");
    assert!(
        (5..=8).contains(&pongs),
        "the burst, and what refilled: {pongs}"
    );
    assert!(
        limited.iter().all(|a| a["ref"].is_u64()),
        "refusals keep the ref"
    );
    // The budget refills: after a pause the connection is served again.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(request(&mut ws, r#"{"op":"ping"}"#), json!({"op":"pong"}));
}

/// Replies leave in the order of their commands, whether they went straight
/// into the connection's next write or through its outbox: 100,000
/// pipelined commands (echoes, pings, errors; about 10 MB of answers, more
/// than the server's socket buffer can grow to, 4 MiB here) to a client
/// that reads nothing until it has sent them all, so the direct replies of
/// a turn pass their 64 KiB bound and, once the server's writes stall,
/// replies queue behind a write under way (the outbox bound raised to
/// hold them).
#[test]
fn pipelined_commands_are_answered_in_order_through_stalled_writes() {
    let server = TestServer::start(&[
        "--shards",
        "1",
        "--rate-limit-per-s",
        "1000000",
        "--rate-limit-burst",
        "1000000",
        "--outbox-max-bytes",
        "67108864",
    ]);
    let mut s = small_window_socket(server.port, 4096, None);
    raw_upgrade(&mut s, "/ws?user=pipeliner", false);

    const COMMANDS: usize = 100_000;
    let padding = "p".repeat(60);
    let mut bytes = Vec::new();
    for i in 0..COMMANDS {
        let command = match i % 5 {
            0 => format!(r#"{{"op":"ping","ref":{i}}}"#),
            // No data: answered with an error that keeps the ref.
            1 => format!(r#"{{"op":"echo","ref":{i}}}"#),
            _ => format!(r#"{{"op":"echo","ref":{i},"data":"{padding}"}}"#),
        };
        bytes.extend(masked_frame(0x81, command.as_bytes(), [1, 2, 3, 4]));
    }
    let mut writer = s.try_clone().unwrap();
    // Nothing is read until every command is sent: the server's writes stall.
    std::thread::spawn(move || writer.write_all(&bytes).unwrap())
        .join()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for expected in 0..COMMANDS {
        let (opcode, payload) = read_server_frame(&mut s).expect("an answer");
        assert_eq!(opcode, 1);
        let answer: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(answer["ref"], expected, "answers out of order: {answer}");
        let op = match expected % 5 {
            0 => "pong",
            1 => "error",
            _ => "echo",
        };
        assert_eq!(answer["op"], op, "{answer}");
    }
}
