//! ws-uring: a thread-per-core io_uring WebSocket message server.
//!
//! Modules in the order a request flows through them:
//!
//! - [`config`]: one `Config`, from defaults < TOML < env < flags.
//! - [`limits`]: the start-up check of open-file and locked-memory limits.
//! - [`server`]: binds one SO_REUSEPORT listener per shard, starts the pinned
//!   glommio executors, joins the channel mesh, turns signals into shutdown.
//! - [`shard`]: a shard's state (its connections, counters, sweeper) and the
//!   mesh messages shards exchange.
//! - [`conn`]: one connection's task: HTTP head, routing, the WebSocket loop;
//!   the sans-IO rules it applies (`commands`, `liveness`).
//! - [`auth`]: HS256 JWT identities for the upgrade (`auth_secret`).
//! - [`http`]: request parsing (httparse), responses, router, upgrade checks.
//! - [`ws`]: tungstenite driven sans-IO over in-memory buffers.
//! - [`metrics`]: per-shard counters and histograms, resources, alerts,
//!   Prometheus/JSON/CSV exports and the dashboard page.
//! - [`processor`]: custom processors for ops the protocol does not define.
//! - [`protocol`]: commands decoded from frames, events encoded into them.
//! - [`delivery`]: reliable delivery rules (acks, retries, mailboxes,
//!   schedules, the dead-letter queue), sans-IO.
//! - [`store`]: the per-shard log (rkyv records, checksums, recovery,
//!   group commit, compaction).
//! - [`registry`]: the cross-shard table of live connections (sharded-slab).
//! - [`cluster`]: cluster mode (`--cluster-redis`): nodes sharing one Redis
//!   for presence, group summaries, mailboxes and envelopes between nodes.
//!
//! - [`client`]: a small blocking client for backends, tools and tests.
//!
//! Data flows one way: socket → conn → ws → protocol → conn → socket.

pub mod auth;
pub mod client;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod delivery;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod processor;
pub mod protocol;
pub mod registry;
pub mod routing;
pub mod server;
pub mod shard;
pub mod store;
pub mod tls;
pub mod ws;

/// Spawns a task on the current shard's executor. Every shard task goes
/// through here: `counted` lets the readiness driver see it run, which it
/// must before it naps in the epoll set (readiness crate docs).
pub(crate) fn spawn_local<T: 'static>(
    future: impl std::future::Future<Output = T> + 'static,
) -> glommio::Task<T> {
    glommio::spawn_local(ws_uring_readiness::counted(future))
}

pub use config::Config;
pub use processor::{Processor, ProcessorContext, ProcessorRequest};
pub use server::{Server, ServerBuilder, ServerError};
