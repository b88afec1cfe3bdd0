//! The `ws-uring` command: config → Server → run.

use std::process::ExitCode;

use ws_uring::config::{Config, Flags};
use ws_uring::Server;

/// jemalloc: a connection's long-lived objects and the short-lived ones
/// freed when it hibernates (its task, glommio's poll source) sit in
/// separate size-class pages, which are returned to the system once empty;
/// with glibc's allocator the freed chunks between live ones stay in RSS.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Empty pages go back to the system after 1 s (default 10 s), straight
/// away rather than through MADV_FREE (which RSS still counts), from
/// jemalloc's background thread, so an idle server shrinks too. The
/// environment variable `_RJEM_MALLOC_CONF` overrides these.
#[export_name = "_rjem_malloc_conf"]
static JEMALLOC_CONF: Option<&'static std::ffi::c_char> = Some(
    // SAFETY: the pointer is to the first byte of a static C string.
    unsafe { &*c"dirty_decay_ms:1000,muzzy_decay_ms:0,background_thread:true".as_ptr() },
);

fn main() -> ExitCode {
    let flags: Flags = ws_uring_flags::from_env();
    if flags.version {
        println!("{}", ws_uring::protocol::SERVER_NAME);
        return ExitCode::SUCCESS;
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();

    let config = match Config::from_process(&flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ws-uring: {e}");
            return ExitCode::from(2);
        }
    };
    log::debug!("config: {:?}", config.describe());
    match Server::new(config).run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ws-uring: {e}");
            ExitCode::FAILURE
        }
    }
}
