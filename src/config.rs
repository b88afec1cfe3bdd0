//! One `Config` for the whole server, built once at start-up.
//!
//! Every setting has one name in three spellings: TOML key `max_connections`,
//! flag `--max-connections`, environment `WS_URING_MAX_CONNECTIONS`.
//! Precedence: flags > environment > TOML file > built-in defaults.
//! Values are validated once, here; an invalid value is an error that names
//! the key and where it came from, never a silent fallback.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use argh::FromArgs;
use serde::Deserialize;

/// Largest `nap_max_us` (the loadgen's bound too).
pub use ws_uring_readiness::NAP_MAX_US_LIMIT;

/// Where a setting's value came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Default,
    File,
    Env,
    Flag,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Default => "default",
            Source::File => "config file",
            Source::Env => "environment",
            Source::Flag => "command line",
        })
    }
}

/// A configuration error a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("invalid value {value:?} for `{key}` (from {origin}): {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        origin: Source,
        reason: String,
    },
}

/// Declares every setting once and generates the flag struct, the TOML
/// struct, the resolved `Config` and the environment reader from it, so the
/// three spellings can never drift apart.
macro_rules! settings {
    ($( $(#[doc = $doc:literal])* $name:ident : $ty:ty = $default:expr; )*) => {
        /// ws-uring: a thread-per-core io_uring WebSocket message server.
        #[derive(FromArgs, Debug, Default)]
        pub struct Flags {
            /// TOML config file (keys as documented in ws-uring.example.toml)
            #[argh(option)]
            pub config: Option<PathBuf>,
            /// plain echo mode: every message on the WebSocket path is echoed
            /// verbatim and no `welcome` is sent (for conformance suites and
            /// peer comparisons)
            #[argh(switch)]
            pub echo: bool,
            /// print the version and exit
            #[argh(switch)]
            pub version: bool,
            /// keep mailboxes, schedules, pending acks and the DLQ in memory
            /// only (no data directory)
            #[argh(switch)]
            pub no_persist: bool,
            $(
                $(#[doc = $doc])*
                #[argh(option)]
                pub $name: Option<String>,
            )*
        }

        /// The settings as a TOML file may spell them; unknown keys are errors.
        #[derive(Deserialize, Debug, Default)]
        #[serde(deny_unknown_fields)]
        struct FileSettings {
            $( $name: Option<toml::Value>, )*
        }

        /// The resolved configuration every part of the server reads.
        #[derive(Debug, Clone)]
        pub struct Config {
            /// `--echo`: plain echo mode.
            pub echo: bool,
            /// `--no-persist`: no data directory.
            pub no_persist: bool,
            $( $(#[doc = $doc])* pub $name: $ty, )*
        }

        impl Config {
            /// Built-in defaults (shards = the cores available).
            pub fn defaults() -> Config {
                Config { echo: false, no_persist: false, $( $name: $default, )* }
            }

            /// Resolves flags > env > file > defaults and validates the result.
            pub fn resolve(flags: &Flags, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
                let mut config = Config::defaults();
                let mut sources: HashMap<&'static str, Source> = HashMap::new();
                config.echo = flags.echo || env_bool(env, "ECHO")?;
                config.no_persist = flags.no_persist || env_bool(env, "NO_PERSIST")?;
                // Plain echo keeps no state worth a data directory.
                config.no_persist |= config.echo;
                let file = match &flags.config {
                    Some(path) => read_file(path)?,
                    None => FileSettings::default(),
                };
                $(
                    if let Some(value) = &file.$name {
                        config.$name = from_toml(stringify!($name), value)?;
                        sources.insert(stringify!($name), Source::File);
                    }
                    if let Some(value) = env.get(&env_name(stringify!($name))) {
                        config.$name = parse_value(stringify!($name), value, Source::Env)?;
                        sources.insert(stringify!($name), Source::Env);
                    }
                    if let Some(value) = &flags.$name {
                        config.$name = parse_value(stringify!($name), value, Source::Flag)?;
                        sources.insert(stringify!($name), Source::Flag);
                    }
                )*
                config.validate(&sources)?;
                Ok(config)
            }

            /// Every setting as `(key, value)`, for the start-up log line.
            pub fn describe(&self) -> Vec<(&'static str, String)> {
                let mut out = vec![
                    ("echo", self.echo.to_string()),
                    ("no_persist", self.no_persist.to_string()),
                ];
                $( out.push((stringify!($name), ValueDisplay::show(&self.$name))); )*
                // Never log secrets.
                for (key, value) in out.iter_mut() {
                    if key.ends_with("token") || key.ends_with("secret") {
                        if !value.is_empty() {
                            *value = "(set)".into();
                        }
                    }
                }
                out
            }
        }
    };
}

settings! {
    /// address to bind (default 0.0.0.0)
    host: String = "0.0.0.0".to_string();
    /// TCP port; 0 picks a free one (default 8765)
    port: u16 = 8765;
    /// the WebSocket upgrade path (default /ws)
    path: String = "/ws".to_string();
    /// shard count: one glommio executor each (default: the cores available)
    shards: usize = available_cores();
    /// live WebSocket connections accepted before HTTP 503 (default 100000)
    max_connections: usize = 100_000;
    /// largest message accepted, in bytes; larger closes with 1009 (default 1 MiB)
    max_message_bytes: usize = 1 << 20;
    /// time to complete the HTTP request / upgrade, in ms (default 10000)
    handshake_timeout_ms: u64 = 10_000;
    /// interval between server pings, in ms (default 20000)
    ping_interval_ms: u64 = 20_000;
    /// silence after which a connection is closed with 1001, in ms (default 60000)
    idle_timeout_ms: u64 = 60_000;
    /// quiet (no data either way) after which a plain-TCP connection gives up its task and waits in the shard's epoll set, in ms; 0 never (default 5000)
    hibernate_after_ms: u64 = 5_000;
    /// longest a shard waits for its sockets in epoll_wait (a nap) instead of parking through glommio, in µs: also how late its housekeeping timers may fire meanwhile (scheduled deliveries and ack timeouts keep time; log writes hold naps off; no naps in cluster mode); 0 never naps (default 5000)
    nap_max_us: u64 = 5_000;
    /// grace period for clients to finish the close handshake at shutdown, in ms (default 2000)
    shutdown_timeout_ms: u64 = 2_000;
    /// bound on each connection's outgoing queue, in bytes (default 1 MiB)
    outbox_max_bytes: usize = 1 << 20;
    /// how long a connection may stay over outbox_max_bytes before close 1008, in ms (default 5000)
    slow_consumer_grace_ms: u64 = 5_000;
    /// binary payloads of at least this many bytes are lz4-compressed for wsu.v1.lz4 clients (default 1024)
    compress_min_bytes: usize = 1024;
    /// wait for an ack before redelivering, in ms; doubles per attempt (default 5000)
    ack_timeout_ms: u64 = 5_000;
    /// redeliveries of an unacked message before the DLQ (default 3)
    max_retries: u32 = 3;
    /// messages kept per offline user; the oldest goes to the DLQ (default 10000)
    mailbox_max_msgs: usize = 10_000;
    /// dead letters kept per shard; the oldest is evicted (default 100000)
    dlq_max_msgs: usize = 100_000;
    /// bearer token for /api/* and /admin/*; without one they answer loopback only
    admin_token: String = String::new();
    /// HS256 secret: when set, every WebSocket client needs a JWT (?token= or Authorization: Bearer)
    auth_secret: String = String::new();
    /// comma-separated browser origins allowed to connect (empty: any); others get 403
    allowed_origins: String = String::new();
    /// PEM certificate chain: with tls_key, the port speaks only TLS (wss:// and https://)
    tls_cert: String = String::new();
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for tls_cert
    tls_key: String = String::new();
    /// new TCP connections a second per client IP (IPv6: per /64), 0 = unlimited; over it HTTP 429 (default 0)
    ip_connections_per_s: u64 = 0;
    /// new TCP connections per client IP in a burst (default 2 x ip_connections_per_s)
    ip_connections_burst: u64 = 0;
    /// live WebSocket connections per user, 0 = unlimited; over it close 1008 (default 0)
    max_connections_per_user: usize = 0;
    /// directory of the per-shard logs (default ./ws-uring-data)
    data_dir: String = "./ws-uring-data".to_string();
    /// when logged messages are durable: always, batch or never (default batch)
    fsync: String = "batch".to_string();
    /// group-commit window for fsync = batch, in ms (default 2)
    fsync_batch_ms: u64 = 2;
    /// commands a second each connection may send on average (default 10000)
    rate_limit_per_s: u64 = 10_000;
    /// commands a connection may send in a burst (default 20000)
    rate_limit_burst: u64 = 20_000;
    /// record metrics (true); false skips every update, to measure their cost
    metrics: bool = true;
    /// how often rates, resources and alerts are computed, in ms (default 1000)
    metrics_interval_ms: u64 = 1_000;
    /// append each interval's figures to this file (.json: JSON lines, .csv: CSV)
    metrics_export: String = String::new();
    /// alert when delivery P95 exceeds this, in ms (default 100)
    alert_p95_ms: u64 = 100;
    /// alert when delivery P99 exceeds this, in ms (default 200)
    alert_p99_ms: u64 = 200;
    /// alert when process CPU exceeds this share of all CPUs, in percent (default 80)
    alert_cpu_percent: u64 = 80;
    /// alert when system memory use exceeds this, in percent (default 85)
    alert_memory_percent: u64 = 85;
    /// alert when errors exceed this share of messages received, in percent (default 5)
    alert_error_rate_percent: u64 = 5;
    /// alert when queued outbox or mailbox messages exceed this (default 1000)
    alert_queue_depth: u64 = 1_000;
    /// cluster mode: the Redis every node shares, as redis://HOST:PORT[/DB] (empty: single node)
    cluster_redis: String = String::new();
    /// this node's id in the cluster (default: generated once, kept in data_dir/node-id)
    node_id: String = String::new();
    /// how often a node refreshes its registry key in Redis, in ms (default 1000; the key lives 3x this)
    cluster_heartbeat_ms: u64 = 1_000;
    /// lifetime of a node's user-presence and group-summary keys in Redis, in ms; refreshed every third (default 30000)
    cluster_presence_ttl_ms: u64 = 30_000;
}

impl Config {
    fn validate(&self, sources: &HashMap<&'static str, Source>) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, value: String, reason: &str| ConfigError::Invalid {
            key,
            value,
            origin: sources.get(key).copied().unwrap_or(Source::Default),
            reason: reason.to_string(),
        };
        if self.host.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(
                "host",
                self.host.clone(),
                "expected an IP address such as 0.0.0.0 or 127.0.0.1",
            ));
        }
        if !self.path.starts_with('/') || self.path.contains(['?', '#', ' ']) {
            return Err(invalid(
                "path",
                self.path.clone(),
                "expected an absolute path such as /ws",
            ));
        }
        if self.shards == 0 || self.shards > 1024 {
            return Err(invalid(
                "shards",
                self.shards.to_string(),
                "expected 1 to 1024",
            ));
        }
        if self.nap_max_us > NAP_MAX_US_LIMIT {
            return Err(invalid(
                "nap_max_us",
                self.nap_max_us.to_string(),
                "expected 0 (never) to 100000 µs",
            ));
        }
        if self.max_connections == 0 {
            return Err(invalid(
                "max_connections",
                "0".into(),
                "expected at least 1",
            ));
        }
        if self.max_message_bytes < 16 || self.max_message_bytes > 256 << 20 {
            return Err(invalid(
                "max_message_bytes",
                self.max_message_bytes.to_string(),
                "expected 16 bytes to 256 MiB",
            ));
        }
        if self.outbox_max_bytes < 1024 {
            return Err(invalid(
                "outbox_max_bytes",
                self.outbox_max_bytes.to_string(),
                "expected at least 1024 bytes",
            ));
        }
        if !["always", "batch", "never"].contains(&self.fsync.as_str()) {
            return Err(invalid(
                "fsync",
                self.fsync.clone(),
                "expected always, batch or never",
            ));
        }
        if self.data_dir.is_empty() {
            return Err(invalid(
                "data_dir",
                String::new(),
                "expected a directory path",
            ));
        }
        let export_ok = self.metrics_export.is_empty()
            || self.metrics_export.ends_with(".json")
            || self.metrics_export.ends_with(".csv");
        if !export_ok {
            return Err(invalid(
                "metrics_export",
                self.metrics_export.clone(),
                "expected a file name ending in .json or .csv",
            ));
        }
        if self.metrics_interval_ms < 10 {
            return Err(invalid(
                "metrics_interval_ms",
                self.metrics_interval_ms.to_string(),
                "expected at least 10 ms",
            ));
        }
        if self.fsync_batch_ms > 1000 {
            return Err(invalid(
                "fsync_batch_ms",
                self.fsync_batch_ms.to_string(),
                "expected 0 to 1000",
            ));
        }
        if self.rate_limit_per_s == 0 || self.rate_limit_burst == 0 {
            let key = if self.rate_limit_per_s == 0 {
                "rate_limit_per_s"
            } else {
                "rate_limit_burst"
            };
            return Err(invalid(key, "0".into(), "expected at least 1"));
        }
        if self.tls_cert.is_empty() != self.tls_key.is_empty() {
            let (key, value) = if self.tls_cert.is_empty() {
                ("tls_key", self.tls_key.clone())
            } else {
                ("tls_cert", self.tls_cert.clone())
            };
            return Err(invalid(
                key,
                value,
                "tls_cert and tls_key must be given together",
            ));
        }
        if self.ip_connections_burst > crate::conn::ip_limit::IP_BURST_MAX {
            return Err(invalid(
                "ip_connections_burst",
                self.ip_connections_burst.to_string(),
                &format!("expected at most {}", crate::conn::ip_limit::IP_BURST_MAX),
            ));
        }
        if self.ip_connections_burst > 0 && self.ip_connections_per_s == 0 {
            return Err(invalid(
                "ip_connections_burst",
                self.ip_connections_burst.to_string(),
                "needs ip_connections_per_s above 0",
            ));
        }
        if self.mailbox_max_msgs == 0 || self.dlq_max_msgs == 0 {
            let key = if self.mailbox_max_msgs == 0 {
                "mailbox_max_msgs"
            } else {
                "dlq_max_msgs"
            };
            return Err(invalid(key, "0".into(), "expected at least 1"));
        }
        if self.max_retries > 30 {
            return Err(invalid(
                "max_retries",
                self.max_retries.to_string(),
                "expected 0 to 30",
            ));
        }
        if !self.cluster_redis.is_empty() {
            if let Err(reason) = crate::cluster::RedisAddr::parse(&self.cluster_redis) {
                return Err(invalid(
                    "cluster_redis",
                    self.cluster_redis.clone(),
                    &reason,
                ));
            }
        }
        if !self.node_id.is_empty() {
            if let Err(reason) = crate::cluster::check_node_id(&self.node_id) {
                return Err(invalid("node_id", self.node_id.clone(), &reason));
            }
        }
        if self.cluster_heartbeat_ms < 50 || self.cluster_heartbeat_ms > 60_000 {
            return Err(invalid(
                "cluster_heartbeat_ms",
                self.cluster_heartbeat_ms.to_string(),
                "expected 50 to 60000 ms",
            ));
        }
        if self.cluster_presence_ttl_ms < 3 * self.cluster_heartbeat_ms {
            return Err(invalid(
                "cluster_presence_ttl_ms",
                self.cluster_presence_ttl_ms.to_string(),
                "expected at least 3 x cluster_heartbeat_ms",
            ));
        }
        for (key, value) in [
            ("ack_timeout_ms", self.ack_timeout_ms),
            ("slow_consumer_grace_ms", self.slow_consumer_grace_ms),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("ping_interval_ms", self.ping_interval_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
        ] {
            if value == 0 {
                return Err(invalid(key, "0".into(), "expected at least 1 ms"));
            }
        }
        Ok(())
    }

    /// The address the listeners bind.
    pub fn bind_addr(&self) -> std::net::SocketAddr {
        let ip: std::net::IpAddr = self.host.parse().expect("validated in Config::resolve");
        std::net::SocketAddr::new(ip, self.port)
    }
}

impl Config {
    /// The configuration of this process: its flags, its `WS_URING_*`
    /// environment and the file `--config` names.
    pub fn from_process(flags: &Flags) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("WS_URING_"))
            .collect();
        Config::resolve(flags, &env)
    }
}

/// The environment variable for a setting: `WS_URING_MAX_CONNECTIONS`.
pub fn env_name(key: &str) -> String {
    format!("WS_URING_{}", key.to_ascii_uppercase())
}

fn available_cores() -> usize {
    core_affinity::get_core_ids()
        .map(|ids| ids.len())
        .filter(|n| *n > 0)
        .unwrap_or(1)
}

fn read_file(path: &PathBuf) -> Result<FileSettings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.clone(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::ParseFile {
        path: path.clone(),
        message: e.to_string().trim().replace('\n', " "),
    })
}

fn env_bool(env: &HashMap<String, String>, key: &'static str) -> Result<bool, ConfigError> {
    match env.get(&env_name(key)) {
        None => Ok(false),
        Some(v) => parse_value::<bool>("echo", v, Source::Env),
    }
}

/// Parses one setting from text (flags and environment).
fn parse_value<T: SettingValue>(
    key: &'static str,
    text: &str,
    source: Source,
) -> Result<T, ConfigError> {
    T::parse_setting(text.trim()).map_err(|reason| ConfigError::Invalid {
        key,
        value: text.to_string(),
        origin: source,
        reason,
    })
}

/// Reads one setting from a TOML value: strings are parsed like flags so
/// `port = "8080"` and `port = 8080` both work.
fn from_toml<T: SettingValue>(key: &'static str, value: &toml::Value) -> Result<T, ConfigError> {
    let text = match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Float(f) => f.to_string(),
        other => {
            return Err(ConfigError::Invalid {
                key,
                value: other.to_string(),
                origin: Source::File,
                reason: "expected a string, number or boolean".into(),
            })
        }
    };
    parse_value(key, &text, Source::File)
}

/// A type a setting can have.
trait SettingValue: Sized {
    fn parse_setting(text: &str) -> Result<Self, String>;
}

macro_rules! numeric_setting {
    ($($t:ty),*) => {$(
        impl SettingValue for $t {
            fn parse_setting(text: &str) -> Result<Self, String> {
                let cleaned = text.replace('_', "");
                <$t>::from_str(&cleaned).map_err(|_| {
                    format!("expected a whole number from {} to {}", <$t>::MIN, <$t>::MAX)
                })
            }
        }
    )*};
}
numeric_setting!(u16, u32, u64, usize);

impl SettingValue for String {
    fn parse_setting(text: &str) -> Result<Self, String> {
        Ok(text.to_string())
    }
}

impl SettingValue for bool {
    fn parse_setting(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" | "" => Ok(false),
            _ => Err("expected true or false".into()),
        }
    }
}

/// Displays a setting's value for the start-up log.
trait ValueDisplay {
    fn show(&self) -> String;
}

impl<T: fmt::Display> ValueDisplay for T {
    fn show(&self) -> String {
        self.to_string()
    }
}

impl Config {
    /// The alert thresholds from the `alert_*` settings.
    pub fn alert_thresholds(&self) -> crate::metrics::alerts::AlertThresholds {
        crate::metrics::alerts::AlertThresholds {
            latency_p95_max_ms: self.alert_p95_ms as f64,
            latency_p99_max_ms: self.alert_p99_ms as f64,
            cpu_max_percent: self.alert_cpu_percent as f64,
            memory_max_percent: self.alert_memory_percent as f64,
            error_rate_max: self.alert_error_rate_percent as f64 / 100.0,
            queue_depth_max_msgs: self.alert_queue_depth,
            ..Default::default()
        }
    }

    /// The browser origins allowed to upgrade (`None`: any).
    pub fn allowed_origins(&self) -> Option<Vec<String>> {
        let list: Vec<String> = self
            .allowed_origins
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|o| !o.is_empty())
            .collect();
        (!list.is_empty()).then_some(list)
    }

    /// Whether this node is part of a cluster (`cluster_redis` set).
    pub fn is_cluster(&self) -> bool {
        !self.cluster_redis.is_empty() && !self.echo
    }

    /// The per-IP new-connection budget as (per second, burst), when limited.
    pub fn ip_connection_limit(&self) -> Option<(u64, u64)> {
        (self.ip_connections_per_s > 0).then(|| {
            let burst = if self.ip_connections_burst > 0 {
                self.ip_connections_burst
            } else {
                self.ip_connections_per_s.saturating_mul(2)
            };
            (self.ip_connections_per_s, burst)
        })
    }

    /// The certificate and key files, when TLS is configured.
    pub fn tls_files(&self) -> Option<(&str, &str)> {
        (!self.tls_cert.is_empty()).then_some((self.tls_cert.as_str(), self.tls_key.as_str()))
    }

    /// The admin token, when one is configured.
    pub fn admin_token(&self) -> Option<&str> {
        (!self.admin_token.is_empty()).then_some(self.admin_token.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn temp_file(text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "ws-uring-config-{}-{}.toml",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::resolve(&Flags::default(), &env(&[])).unwrap();
        assert_eq!(c.port, 8765);
        assert_eq!(c.path, "/ws");
        assert_eq!(c.host, "0.0.0.0");
        assert_eq!(c.max_message_bytes, 1 << 20);
        assert_eq!(c.handshake_timeout_ms, 10_000);
        assert_eq!(c.ping_interval_ms, 20_000);
        assert_eq!(c.idle_timeout_ms, 60_000);
        assert!(c.shards >= 1);
        assert!(!c.echo);
    }

    #[test]
    fn flags_beat_env_beat_file_beat_defaults() {
        let path = temp_file("port = 1111\nmax_connections = 7\nidle_timeout_ms = 5\n");
        let flags = Flags {
            config: Some(path.clone()),
            port: Some("3333".into()),
            ..Flags::default()
        };
        let e = env(&[("WS_URING_PORT", "2222"), ("WS_URING_MAX_CONNECTIONS", "9")]);
        let c = Config::resolve(&flags, &e).unwrap();
        std::fs::remove_file(path).unwrap();
        assert_eq!(c.port, 3333, "flag wins over env and file");
        assert_eq!(c.max_connections, 9, "env wins over file");
        assert_eq!(c.idle_timeout_ms, 5, "file wins over default");
        assert_eq!(c.ping_interval_ms, 20_000, "default when nobody says");
    }

    #[test]
    fn invalid_values_name_the_key_and_source() {
        let flags = Flags {
            max_connections: Some("lots".into()),
            ..Flags::default()
        };
        let err = Config::resolve(&flags, &env(&[])).unwrap_err().to_string();
        assert!(err.contains("`max_connections`"), "{err}");
        assert!(err.contains("command line"), "{err}");

        let err = Config::resolve(&Flags::default(), &env(&[("WS_URING_PORT", "70000")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`port`") && err.contains("environment"),
            "{err}"
        );

        let err = Config::resolve(&Flags::default(), &env(&[("WS_URING_HOST", "nowhere")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`host`"), "{err}");
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        let path = temp_file("prot = 1\n");
        let flags = Flags {
            config: Some(path.clone()),
            ..Flags::default()
        };
        let err = Config::resolve(&flags, &env(&[])).unwrap_err().to_string();
        std::fs::remove_file(path).unwrap();
        assert!(err.contains("prot"), "{err}");
    }

    #[test]
    fn zero_timeouts_and_shards_are_rejected() {
        for (key, value) in [("WS_URING_SHARDS", "0"), ("WS_URING_IDLE_TIMEOUT_MS", "0")] {
            assert!(Config::resolve(&Flags::default(), &env(&[(key, value)])).is_err());
        }
    }

    #[test]
    fn naps_default_on_and_are_bounded() {
        let c = Config::resolve(&Flags::default(), &env(&[])).unwrap();
        assert_eq!(c.nap_max_us, 5_000);
        let off = Config::resolve(&Flags::default(), &env(&[("WS_URING_NAP_MAX_US", "0")]));
        assert_eq!(off.unwrap().nap_max_us, 0);
        let too_long = Config::resolve(
            &Flags::default(),
            &env(&[("WS_URING_NAP_MAX_US", "100001")]),
        )
        .unwrap_err()
        .to_string();
        assert!(too_long.contains("`nap_max_us`"), "{too_long}");
    }

    #[test]
    fn echo_from_env() {
        let c = Config::resolve(&Flags::default(), &env(&[("WS_URING_ECHO", "true")])).unwrap();
        assert!(c.echo);
    }
}

#[cfg(test)]
mod example_file_tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../ws-uring.example.toml");

    #[test]
    fn example_file_parses_and_documents_every_key() {
        let settings: FileSettings = toml::from_str(EXAMPLE).expect("example parses");
        drop(settings);
        for (key, _) in Config::defaults().describe() {
            if key == "echo" || key == "no_persist" {
                continue; // flags, not file settings
            }
            let documented = EXAMPLE
                .lines()
                .any(|l| l.trim_start_matches("# ").starts_with(&format!("{key} =")));
            assert!(
                documented,
                "ws-uring.example.toml does not document `{key}`"
            );
        }
    }
}
