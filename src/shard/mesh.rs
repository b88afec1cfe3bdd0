//! Messages shards send each other over the glommio channel mesh. They are
//! plain `Send` values: no pointer into another shard's memory ever crosses
//! (message bodies are immutable, shared `Arc`s).

use std::sync::Arc;

use crate::delivery::dlq::DeadLetter;
use crate::protocol::{ErrorCode, StrategyKind};
use crate::routing::{ConnRef, Envelope, Target};

/// A request a shard waits on: answered to `shard` under `request_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyTo {
    pub shard: usize,
    pub request_id: u64,
}

/// Where a routed message waits when it is not delivered at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Delivered now (or to nobody).
    No,
    /// In the offline user's mailbox.
    Mailbox,
    /// Scheduled for later.
    Scheduled,
}

/// A dead letter as another shard may see it (all owned, `Send`).
#[derive(Debug, Clone)]
pub struct DeadLetterView {
    pub letter: DeadLetter,
    pub shard: usize,
}

/// One connection as `/admin/connections` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionView {
    pub conn: u64,
    pub shard: usize,
    pub user: String,
    pub outbox_msgs: u64,
    pub outbox_bytes: u64,
    pub last_rtt_us: u64,
    pub idle_ms: u64,
}

/// Why a routed command failed, to be told to the connection that sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: ErrorCode,
    pub reason: String,
}

/// One message between shards.
#[derive(Debug, Clone)]
pub enum MeshMsg {
    /// Begin graceful shutdown (sent by shard 0 when a signal arrives).
    Shutdown,
    /// Asks for the receiver's health figures; answer to `from`.
    HealthQuery { from: usize, request_id: u64 },
    /// The answer to a `HealthQuery`.
    HealthReply {
        request_id: u64,
        health: ShardHealth,
    },
    /// Several messages for the same shard in one channel slot.
    Batch(Vec<MeshMsg>),

    /// To a user's home: `at` is a live connection of `user`.
    UserAttach {
        user: String,
        at: ConnRef,
        reply: Option<ReplyTo>,
    },
    /// To a user's home: `at` closed.
    UserDetach { user: String, at: ConnRef },
    /// From a user's home to the shard of connection `conn`: a mailbox
    /// batch was sent and more waits; ask for it once the outbox is empty.
    MailboxPaused { conn: u64 },
    /// To a user's home: connection `at` has written its mailbox batch.
    MailboxMore { user: String, at: ConnRef },
    /// To a group's home: `at` joins with `weight`.
    GroupJoin {
        group: String,
        at: ConnRef,
        user: String,
        weight: u32,
        reply: Option<ReplyTo>,
    },
    /// To a group's home: `at` leaves (also sent when it closes).
    GroupLeave {
        group: String,
        at: ConnRef,
        reply: Option<ReplyTo>,
    },
    /// To a group's home: set its anycast strategy.
    SetStrategy {
        group: String,
        strategy: StrategyKind,
        origin: ConnRef,
        reply: Option<ReplyTo>,
    },
    /// To the target's home: find the recipients and deliver (or hold the
    /// message until `deliver_at_unix_ms`).
    Route {
        target: Target,
        envelope: Arc<Envelope>,
        origin: ConnRef,
        reply: Option<ReplyTo>,
        deliver_at_unix_ms: Option<u64>,
        source: RouteSource,
    },
    /// Cluster mode: tell Redis again which users and groups this shard
    /// has (Redis came back, or the node's subscription did).
    ClusterResync,
    /// To a recipient shard: queue `envelope` to each of `conns` (skipping
    /// `exclude`).
    Deliver {
        envelope: Arc<Envelope>,
        conns: Arc<[u64]>,
        exclude: Option<u64>,
        anycast_group: Option<Arc<str>>,
        /// For `ack:true` messages: the shard tracking the ack.
        ack_home: Option<usize>,
        origin: ConnRef,
        reply: Option<ReplyTo>,
    },
    /// From the home to the origin: the request went out in `parts`
    /// `Deliver`s (0: nobody to deliver to right now), or was held.
    Routed {
        request_id: u64,
        parts: u32,
        held: Held,
    },
    /// To the home tracking it: connection `at` acked message `id`.
    Ack { id: String, at: ConnRef },
    /// Asks for the receiver's dead letters; answer to `from`.
    DlqQuery { from: usize, request_id: u64 },
    /// The answer to a `DlqQuery`.
    DlqReply {
        request_id: u64,
        letters: Vec<DeadLetterView>,
        evicted: u64,
    },
    /// Replays dead letters (all, or those with the given ids); answer the
    /// count to `from`.
    DlqReplay {
        from: usize,
        request_id: u64,
        ids: Option<Arc<[String]>>,
    },
    /// The answer to a `DlqReplay`.
    DlqReplayed { request_id: u64, replayed: u64 },
    /// Asks for the receiver's connections (for `/admin/connections`).
    ConnectionsQuery { from: usize, request_id: u64 },
    /// The answer to a `ConnectionsQuery`.
    ConnectionsReply {
        request_id: u64,
        connections: Vec<ConnectionView>,
    },
    /// Asks for the receiver's metrics snapshot; answer to `from`.
    MetricsQuery { from: usize, request_id: u64 },
    /// The answer to a `MetricsQuery` (shard 0 adds its interval view).
    MetricsReply {
        request_id: u64,
        snapshot: Box<crate::metrics::ShardSnapshot>,
        view: Option<Box<crate::shard::observe::MetricsView>>,
    },
    /// From a recipient shard to the origin: one part's outcome.
    Delivered {
        request_id: u64,
        delivered: u64,
        refused: u64,
    },
    /// A request finished: `Ok` (join, leave, strategy) or a failure.
    Done {
        request_id: u64,
        result: Result<(), Failure>,
    },
    /// A failure for a command sent without `ref`: told to the connection.
    Failed { origin: ConnRef, failure: Failure },
    /// To a group's home: `n` anycasts to `conn` left its outbox.
    AnycastDone { group: Arc<str>, conn: u64, n: u64 },
}

/// Where a routed message comes from. (One field: `Client` and `Server`
/// take spare values of `Arrived`, so `MeshMsg` stays 128 bytes.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteSource {
    /// A client's command (WebSocket or `/api`): refused while the home's
    /// log cannot be written if it would be stored there.
    Client,
    /// Moved by the server itself (DLQ replays, hand-offs between shards):
    /// never refused; memory keeps it until the log takes it.
    Server,
    /// Cluster mode: another node sent it here, to be delivered to this
    /// node's recipients only (the others route cluster-wide from here).
    Node(Arrived),
}

/// A message another node routed here (cluster mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrived {
    /// The user's mailbox Stream entry that keeps it until acked.
    pub stream_entry: Option<String>,
    /// For anycasts: the group's cluster-wide strategy.
    pub strategy: Option<StrategyKind>,
}

/// Cluster mode: this node and whether its Redis link is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeHealth {
    pub node: String,
    pub redis_up: bool,
}

/// The figures one shard contributes to `/health`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardHealth {
    pub connections: u64,
    pub stale_closed: u64,
    /// Shards whose log cannot be written now (0 or 1 for one shard).
    pub logs_failing: u64,
}

impl ShardHealth {
    /// Adds another shard's figures.
    pub fn add(&mut self, other: &ShardHealth) {
        self.connections += other.connections;
        self.stale_closed += other.stale_closed;
        self.logs_failing += other.logs_failing;
    }
}

/// `/health` over all shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterHealth {
    pub shards: usize,
    pub shards_answered: usize,
    pub health: ShardHealth,
    /// Cluster mode only.
    pub node: Option<NodeHealth>,
}

impl ClusterHealth {
    /// The status word and HTTP status: `ok`/200 when every shard answered
    /// and every log can be written, `degraded`/503 otherwise.
    pub fn status(&self) -> (&'static str, u16) {
        if self.shards_answered == self.shards && self.health.logs_failing == 0 {
            ("ok", 200)
        } else {
            ("degraded", 503)
        }
    }

    /// The `/health` JSON body.
    pub fn to_json(&self, uptime_s: u64) -> String {
        let mut body = serde_json::json!({
            "status": self.status().0,
            "shards": self.shards,
            "connections": self.health.connections,
            "uptime_s": uptime_s,
            "shards_answered": self.shards_answered,
            "stale_closed": self.health.stale_closed,
            "logs_failing": self.health.logs_failing,
        });
        if let Some(node) = &self.node {
            body["node"] = serde_json::json!(node.node);
            body["redis"] = serde_json::json!(if node.redis_up { "up" } else { "down" });
        }
        body.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message on the mesh is a `MeshMsg` moved by value: keep it
    /// small (a `bool` beside `Route`'s fields made it 136).
    #[test]
    fn a_mesh_message_stays_128_bytes() {
        assert!(std::mem::size_of::<MeshMsg>() <= 128);
    }

    #[test]
    fn health_sums_and_degrades() {
        let mut h = ShardHealth {
            connections: 2,
            stale_closed: 1,
            logs_failing: 0,
        };
        h.add(&ShardHealth {
            connections: 3,
            stale_closed: 0,
            logs_failing: 0,
        });
        let full = ClusterHealth {
            shards: 2,
            shards_answered: 2,
            health: h,
            node: None,
        };
        let v: serde_json::Value = serde_json::from_str(&full.to_json(7)).unwrap();
        assert_eq!(v["status"], "ok");
        assert_eq!(v["connections"], 5);
        assert_eq!(v["shards"], 2);
        assert_eq!(v["uptime_s"], 7);
        assert_eq!(v.get("redis"), None, "single node: no cluster fields");
        assert_eq!(v["logs_failing"], 0);
        let log_failing = ClusterHealth {
            health: ShardHealth {
                logs_failing: 1,
                ..h
            },
            ..full.clone()
        };
        assert_eq!(log_failing.status(), ("degraded", 503));
        let partial = ClusterHealth {
            shards_answered: 1,
            ..full
        };
        assert_eq!(partial.status(), ("degraded", 503));
    }
}
