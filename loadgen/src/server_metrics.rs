//! Samples the server's own figures once a second during a scenario.
//!
//! First choice: `GET /metrics.json` on the server's host and port. The field
//! names are found by looking, not assumed: the first numeric field whose
//! path mentions `cpu` is the CPU figure, the first mentioning `rss` (or else
//! `memory`/`mem_`) is memory in bytes, one named `connections` (or else
//! mentioning it, but not as a count of opened, closed, peak, hibernated or
//! total connections) the connection count.
//!
//! Fallback, when that endpoint is missing and the server is on this machine:
//! the process listening on the port is found through `/proc/net/tcp{,6}`
//! and `/proc/*/fd`, and its CPU (percent of one core, from
//! `/proc/PID/stat`) and resident memory (`VmRSS`) are read directly.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_millis(800);
const MAX_BODY_BYTES: usize = 4 << 20;

/// One sample of the server's own figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerSample {
    pub t_s: f64,
    /// `metrics.json` or `procfs`.
    pub source: String,
    pub cpu: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub connections: Option<u64>,
}

/// Fetches `path` over HTTP/1.0 and parses a 200 answer as JSON.
pub fn fetch_json(addr: SocketAddr, host: &str, path: &str) -> Option<Value> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).ok()?;
    stream.set_read_timeout(Some(TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(TIMEOUT)).ok()?;
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream
        .take(MAX_BODY_BYTES as u64)
        .read_to_end(&mut response)
        .ok()?;
    let head_end = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status_ok = response.starts_with(b"HTTP/1.1 200") || response.starts_with(b"HTTP/1.0 200");
    if !status_ok {
        return None;
    }
    serde_json::from_slice(&response[head_end + 4..]).ok()
}

/// Pulls CPU, memory and connections out of a metrics document.
pub fn extract(doc: &Value) -> (Option<f64>, Option<u64>, Option<u64>) {
    let mut fields = Vec::new();
    flatten("", doc, &mut fields);
    let find = |pred: &dyn Fn(&str) -> bool| fields.iter().find(|(k, _)| pred(k)).map(|(_, v)| *v);
    let cpu = find(&|k| k.contains("cpu"));
    let memory = find(&|k| k.contains("rss"))
        .or_else(|| find(&|k| k.contains("memory") || k.contains("mem_")));
    // ws-uring has `counters.connections_closed` before `gauges.connections`.
    let last_segment = |k: &str| k.rsplit('.').next().unwrap_or(k).to_string();
    let connections = find(&|k| last_segment(k) == "connections").or_else(|| {
        find(&|k| {
            k.contains("connections")
                && !["total", "max", "closed", "opened", "peak", "hibernated"]
                    .iter()
                    .any(|not_live| k.contains(not_live))
        })
    });
    (cpu, memory.map(|m| m as u64), connections.map(|c| c as u64))
}

fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, f64)>) {
    match value {
        Value::Number(n) => {
            if let Some(f) = n.as_f64() {
                out.push((prefix.to_ascii_lowercase(), f));
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        _ => {}
    }
}

/// The pid of the local process listening on TCP `port`, if any (needs
/// permission to read other processes' `/proc/PID/fd`).
pub fn local_listener_pid(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 || cols[3] != "0A" {
                continue; // not LISTEN
            }
            let local_port = cols[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                inodes.push(format!("socket:[{}]", cols[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if inodes.iter().any(|i| target.as_os_str() == i.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// CPU seconds (user + system) and resident bytes of a process.
pub fn proc_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((ticks as f64 / hz, rss_kb * 1024))
}

/// A background sampler; [`Sampler::stop`] returns what it collected.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<(Vec<ServerSample>, Option<Value>)>>,
    handle: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Starts sampling once a second: `/metrics.json` while it answers,
    /// else the local process listening on the port (if there is one).
    pub fn start(addr: SocketAddr, host: String) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new((Vec::new(), None)));
        let handle = {
            let stop = Arc::clone(&stop);
            let samples = Arc::clone(&samples);
            std::thread::Builder::new()
                .name("metrics-sampler".into())
                .spawn(move || sample_loop(addr, &host, &stop, &samples))
                .ok()
        };
        Sampler {
            stop,
            samples,
            handle,
        }
    }

    /// Stops the sampler; returns the samples and the first raw document.
    pub fn stop(mut self) -> (Vec<ServerSample>, Option<Value>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
        let mut guard = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        (std::mem::take(&mut guard.0), guard.1.take())
    }
}

type Shared = Mutex<(Vec<ServerSample>, Option<Value>)>;

fn sample_loop(addr: SocketAddr, host: &str, stop: &AtomicBool, samples: &Shared) {
    let started = Instant::now();
    // One miss before any answer means "no such endpoint"; after answers,
    // three misses in a row.
    let mut json_failures = 0;
    let mut json_answered = false;
    let mut local: Option<(u32, f64, Instant)> = None;
    let mut looked_for_pid = false;
    while !stop.load(Ordering::Relaxed) {
        let t_s = (started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
        let mut sample = None;
        if json_failures < if json_answered { 3 } else { 1 } {
            match fetch_json(addr, host, "/metrics.json") {
                Some(doc) => {
                    json_failures = 0;
                    json_answered = true;
                    let (cpu, memory_bytes, connections) = extract(&doc);
                    sample = Some(ServerSample {
                        t_s,
                        source: "metrics.json".into(),
                        cpu,
                        memory_bytes,
                        connections,
                    });
                    let mut guard = samples.lock().unwrap_or_else(|e| e.into_inner());
                    if guard.1.is_none() {
                        guard.1 = Some(doc);
                    }
                }
                None => json_failures += 1,
            }
        }
        if sample.is_none() && json_failures > 0 && addr.ip().is_loopback() {
            if !looked_for_pid {
                // This tick only takes the CPU baseline the next one is measured from.
                looked_for_pid = true;
                local = local_listener_pid(addr.port())
                    .and_then(|pid| proc_usage(pid).map(|(cpu_s, _)| (pid, cpu_s, Instant::now())));
            } else if let Some((pid, last_cpu_s, last_at)) = local {
                if let Some((cpu_s, rss)) = proc_usage(pid) {
                    let dt = last_at.elapsed().as_secs_f64().max(1e-3);
                    let cpu = ((cpu_s - last_cpu_s) / dt * 1000.0).round() / 10.0;
                    local = Some((pid, cpu_s, Instant::now()));
                    sample = Some(ServerSample {
                        t_s,
                        source: "procfs".into(),
                        cpu: Some(cpu.max(0.0)),
                        memory_bytes: Some(rss),
                        connections: None,
                    });
                }
            }
        }
        if let Some(sample) = sample {
            samples
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .0
                .push(sample);
        }
        let tick = Instant::now();
        while tick.elapsed() < Duration::from_secs(1) && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_shot_http(response: &'static str) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = s.write_all(response.as_bytes());
            }
        });
        addr
    }

    #[test]
    fn fetches_json_over_http() {
        let addr =
            one_shot_http("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"cpu\":3.5}");
        let doc = fetch_json(addr, "x", "/metrics.json").unwrap();
        assert_eq!(doc["cpu"], 3.5);
        let missing = one_shot_http("HTTP/1.1 404 Not Found\r\n\r\n{\"error\":\"no\"}");
        assert!(fetch_json(missing, "x", "/metrics.json").is_none());
    }

    #[test]
    fn finds_own_listener_and_reads_usage() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(local_listener_pid(port), Some(std::process::id()));
        let (cpu_s, rss) = proc_usage(std::process::id()).unwrap();
        assert!(cpu_s >= 0.0);
        assert!(rss > 0);
    }

    #[test]
    fn extracts_nested_figures() {
        let doc: Value = serde_json::json!({
            "uptime_s": 5,
            "process": {"cpu_percent": 42.5, "rss_bytes": 1048576},
            "connections": 12,
            "connections_total": 99
        });
        assert_eq!(extract(&doc), (Some(42.5), Some(1_048_576), Some(12)));
        // ws-uring's /metrics.json: counters (sorted first) hold opened and
        // closed connections; the live count is `gauges.connections`.
        let ws_uring: Value = serde_json::json!({
            "counters": {"connections_closed": 238, "connections_opened": 338},
            "gauges": {"connections": 100, "connections_hibernated": 0, "connections_peak": 120},
            "process": {"cpu_percent": 20.0, "rss_bytes": 1000}
        });
        assert_eq!(extract(&ws_uring).2, Some(100));
        let other: Value = serde_json::json!({"open_connections_peak": 9, "open_connections": 4});
        assert_eq!(extract(&other).2, Some(4));
        assert_eq!(extract(&serde_json::json!({"x": 1})), (None, None, None));
    }
}
