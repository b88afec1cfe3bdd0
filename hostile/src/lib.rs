//! Hostile clients for ws-uring: each attack is a bounded crowd of clients
//! that misbehave in one way, and a verdict on whether the server defended
//! itself as its documentation says (docs/HOSTILE.md).
//!
//! - [`wire`]: sans-IO frames with every knob (FIN, opcode, announced
//!   length), reading the server's frames and HTTP answers, a PRNG.
//! - [`net`]: connect, upgrade, one read/write step with a deadline, GET.
//! - [`modes`]: the attacks, one module each.
//! - [`tally`]: outcomes counted, time to disconnect, the verdict.
//! - [`suite`]: runs the chosen attacks, then the aftermath check.
//! - [`report`]: the text table; the JSON is [`suite::Report`].
//! - [`cli`]: argh flags → [`suite::Plan`].

pub mod cli;
pub mod modes;
pub mod net;
pub mod report;
pub mod suite;
pub mod tally;
pub mod wire;
