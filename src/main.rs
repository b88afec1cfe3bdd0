//! The `ws-uring` command: config → Server → run.

use std::process::ExitCode;

use ws_uring::config::{Config, Flags};
use ws_uring::Server;

fn main() -> ExitCode {
    let flags: Flags = argh::from_env();
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
