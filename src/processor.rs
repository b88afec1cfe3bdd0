//! Custom message processors: ws-uring as a library. A `Processor`
//! registered with `Server::builder().processor("op", p)` handles every
//! command with that `op` (one the protocol does not define). It sees the
//! command and the sender, and answers through a `ProcessorContext`: reply,
//! fail, send, publish, schedule. It runs on the sender's shard, inline:
//! keep it quick and never block.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::protocol::{ErrorCode, Priority};

/// Ops the protocol defines; a processor cannot take them over.
pub const BUILT_IN_OPS: [&str; 10] = [
    "ping", "echo", "join", "leave", "send", "publish", "anycast", "strategy", "ack", "welcome",
];

/// Handles one custom op.
pub trait Processor: Send + Sync + 'static {
    /// Called for each command whose `op` this processor was registered for.
    fn process(&self, request: &ProcessorRequest<'_>, ctx: &mut ProcessorContext);
}

impl<F> Processor for F
where
    F: Fn(&ProcessorRequest<'_>, &mut ProcessorContext) + Send + Sync + 'static,
{
    fn process(&self, request: &ProcessorRequest<'_>, ctx: &mut ProcessorContext) {
        self(request, ctx)
    }
}

/// The command a processor handles.
#[derive(Debug)]
pub struct ProcessorRequest<'a> {
    pub op: &'a str,
    /// The whole command object, `op` and `ref` included.
    pub command: &'a Map<String, Value>,
    /// The sender's user id.
    pub user: &'a str,
}

/// What a processor asked for, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum ProcessorOutput {
    /// An event to the sender (`ref` added when the command had one).
    Reply(Map<String, Value>),
    /// Success: `{"op":"ok","ref":R}`, and nothing without a `ref` (as
    /// for the protocol's own commands).
    Ok,
    /// An `error` event to the sender.
    Error { code: ErrorCode, reason: String },
    /// A message to every connection of `to`, from the sender.
    Send {
        to: String,
        data: Value,
        priority: Priority,
        delay_ms: Option<u64>,
    },
    /// A message to every member of `group`, from the sender.
    Publish {
        group: String,
        data: Value,
        priority: Priority,
        echo: bool,
    },
}

/// How a processor answers.
#[derive(Debug, Default)]
pub struct ProcessorContext {
    pub(crate) outputs: Vec<ProcessorOutput>,
}

impl ProcessorContext {
    /// Sends the sender an event: a JSON object with its own `op`.
    pub fn reply(&mut self, event: Map<String, Value>) {
        self.outputs.push(ProcessorOutput::Reply(event));
    }

    /// Answers `{"op":"ok","ref":R}`; silent when the command had no
    /// `ref`, as success is for the protocol's own commands.
    pub fn ok(&mut self) {
        self.outputs.push(ProcessorOutput::Ok);
    }

    /// Answers with an `error` event.
    pub fn error(&mut self, code: ErrorCode, reason: impl Into<String>) {
        self.outputs.push(ProcessorOutput::Error {
            code,
            reason: reason.into(),
        });
    }

    /// Sends `data` to user `to`, as the sender.
    pub fn send(&mut self, to: &str, data: Value, priority: Priority) {
        self.outputs.push(ProcessorOutput::Send {
            to: to.to_string(),
            data,
            priority,
            delay_ms: None,
        });
    }

    /// Sends `data` to user `to` in `delay_ms`, as the sender.
    pub fn schedule_send(&mut self, to: &str, data: Value, priority: Priority, delay_ms: u64) {
        self.outputs.push(ProcessorOutput::Send {
            to: to.to_string(),
            data,
            priority,
            delay_ms: Some(delay_ms),
        });
    }

    /// Publishes `data` to `group`, as the sender (`echo`: the sender's
    /// own connection gets it too).
    pub fn publish(&mut self, group: &str, data: Value, priority: Priority, echo: bool) {
        self.outputs.push(ProcessorOutput::Publish {
            group: group.to_string(),
            data,
            priority,
            echo,
        });
    }

    /// What was asked, in order.
    pub fn outputs(&self) -> &[ProcessorOutput] {
        &self.outputs
    }
}

/// The registered processors, shared by every shard.
#[derive(Clone, Default)]
pub struct Processors {
    by_op: HashMap<String, Arc<dyn Processor>>,
}

impl std::fmt::Debug for Processors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.by_op.keys()).finish()
    }
}

/// Why a processor could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcessorError {
    #[error("op {0:?} is built into the protocol and cannot be given to a processor")]
    BuiltIn(String),
    #[error("op {0:?} must be 1-64 characters of A-Z a-z 0-9 _ . -")]
    BadName(String),
    #[error("op {0:?} already has a processor")]
    Duplicate(String),
}

impl Processors {
    /// Registers `processor` for `op`.
    pub fn register(
        &mut self,
        op: &str,
        processor: Arc<dyn Processor>,
    ) -> Result<(), ProcessorError> {
        if BUILT_IN_OPS.contains(&op) {
            return Err(ProcessorError::BuiltIn(op.into()));
        }
        let valid = (1..=64).contains(&op.len())
            && op
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !valid {
            return Err(ProcessorError::BadName(op.into()));
        }
        if self.by_op.insert(op.to_string(), processor).is_some() {
            return Err(ProcessorError::Duplicate(op.into()));
        }
        Ok(())
    }

    /// The processor for `op`, if one is registered.
    pub fn get(&self, op: &str) -> Option<&Arc<dyn Processor>> {
        self.by_op.get(op)
    }

    pub fn is_empty(&self) -> bool {
        self.by_op.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_rules() {
        let mut p = Processors::default();
        let noop: Arc<dyn Processor> =
            Arc::new(|_: &ProcessorRequest<'_>, _: &mut ProcessorContext| {});
        assert!(p.register("moderate", noop.clone()).is_ok());
        assert_eq!(
            p.register("moderate", noop.clone()),
            Err(ProcessorError::Duplicate("moderate".into()))
        );
        assert_eq!(
            p.register("send", noop.clone()),
            Err(ProcessorError::BuiltIn("send".into()))
        );
        assert!(matches!(
            p.register("bad op", noop.clone()),
            Err(ProcessorError::BadName(_))
        ));
        assert!(p.get("moderate").is_some());
        assert!(p.get("other").is_none());
    }
}
