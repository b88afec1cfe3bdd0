//! Messages shards send each other over the glommio channel mesh. They are
//! plain `Send` values: no pointer into another shard's memory ever crosses.

/// One message between shards.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

/// The figures one shard contributes to `/health`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardHealth {
    pub connections: u64,
    pub stale_closed: u64,
}

impl ShardHealth {
    /// Adds another shard's figures.
    pub fn add(&mut self, other: &ShardHealth) {
        self.connections += other.connections;
        self.stale_closed += other.stale_closed;
    }
}

/// `/health` over all shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterHealth {
    pub shards: usize,
    pub shards_answered: usize,
    pub health: ShardHealth,
}

impl ClusterHealth {
    /// The status word and HTTP status: `ok`/200 when every shard answered,
    /// `degraded`/503 otherwise.
    pub fn status(&self) -> (&'static str, u16) {
        if self.shards_answered == self.shards {
            ("ok", 200)
        } else {
            ("degraded", 503)
        }
    }

    /// The `/health` JSON body.
    pub fn to_json(&self, uptime_s: u64) -> String {
        serde_json::json!({
            "status": self.status().0,
            "shards": self.shards,
            "connections": self.health.connections,
            "uptime_s": uptime_s,
            "shards_answered": self.shards_answered,
            "stale_closed": self.health.stale_closed,
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_sums_and_degrades() {
        let mut h = ShardHealth {
            connections: 2,
            stale_closed: 1,
        };
        h.add(&ShardHealth {
            connections: 3,
            stale_closed: 0,
        });
        let full = ClusterHealth {
            shards: 2,
            shards_answered: 2,
            health: h,
        };
        let v: serde_json::Value = serde_json::from_str(&full.to_json(7)).unwrap();
        assert_eq!(v["status"], "ok");
        assert_eq!(v["connections"], 5);
        assert_eq!(v["shards"], 2);
        assert_eq!(v["uptime_s"], 7);
        let partial = ClusterHealth {
            shards_answered: 1,
            ..full
        };
        assert_eq!(partial.status(), ("degraded", 503));
    }
}
