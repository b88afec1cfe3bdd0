//! What the messaging benches share: reading text frames and the windowed
//! throughput run (senders → one receiver).

use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tungstenite::{Message, WebSocket};

pub type Ws = WebSocket<TcpStream>;

/// Messages each sender may have in flight.
pub const WINDOW: u64 = 256;

/// The next text frame (control frames skipped); panics on close or error.
pub fn next_text(ws: &mut Ws) -> String {
    loop {
        match ws
            .read()
            .unwrap_or_else(|e| panic!("read failed ({e}): stalled or rate-limited senders?"))
        {
            Message::Text(t) => return t.to_string(),
            Message::Close(_) => panic!("closed"),
            _ => {}
        }
    }
}

/// Each sender sends `message` `per_sender` times on its own thread, at most
/// `WINDOW` ahead of what `receiver` has read; returns messages/s received.
pub fn windowed_throughput(
    receiver: &mut Ws,
    senders: Vec<Ws>,
    message: Message,
    per_sender: u64,
) -> f64 {
    let count = senders.len() as u64;
    let total = per_sender * count;
    let received = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = senders
        .into_iter()
        .map(|mut ws| {
            let message = message.clone();
            let received = received.clone();
            std::thread::spawn(move || {
                for sent in 0..per_sender {
                    while sent * count > received.load(Ordering::Relaxed) + WINDOW * count {
                        std::thread::sleep(Duration::from_micros(50));
                    }
                    ws.send(message.clone()).unwrap();
                }
                ws
            })
        })
        .collect();
    while received.load(Ordering::Relaxed) < total {
        if next_text(receiver).contains("\"msg\"") {
            received.fetch_add(1, Ordering::Relaxed);
        }
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    for t in threads {
        drop(t.join().unwrap());
    }
    rate
}
