//! `loadgen`: parse the command line, run the suite, print and write the results.

use std::process::ExitCode;

use loadgen::cli::Args;
use loadgen::report::{html, table};

fn main() -> ExitCode {
    let args: Args = ws_uring_flags::from_env();
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or(if args.verbose { "debug" } else { "warn" }),
    )
    .init();
    let config = match args.to_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    // A file that cannot be written is found now, not after the run.
    for path in [&args.output, &args.report].into_iter().flatten() {
        let dir = std::path::Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        if !dir.is_dir() {
            eprintln!(
                "loadgen: cannot write {path}: directory {} does not exist",
                dir.display()
            );
            return ExitCode::from(2);
        }
    }
    eprintln!(
        "loadgen: {} scenario(s) against {} ({}, {} thread(s))",
        config.scenarios.len(),
        config.settings.url,
        config.settings.workload,
        config.settings.threads
    );
    let report = match loadgen::suite::run(&config, |s| {
        eprintln!(
            "  {:<10} done: {:.0} msg/s, p99 {:.2} ms, errors {}, grade {}",
            s.name,
            s.summary.msg_per_s,
            s.summary.latency_us.p99 as f64 / 1000.0,
            s.summary.errors_total,
            s.grade.grade.as_str()
        );
    }) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", table::render(&report));
    if let Some(path) = &args.output {
        if let Err(e) = std::fs::write(path, report.to_json()) {
            eprintln!("loadgen: cannot write {path}: {e}");
            return ExitCode::FAILURE;
        }
        eprintln!("wrote {path}");
    }
    if let Some(path) = &args.report {
        if let Err(e) = std::fs::write(path, html::render(&report)) {
            eprintln!("loadgen: cannot write {path}: {e}");
            return ExitCode::FAILURE;
        }
        eprintln!("wrote {path}");
    }
    ExitCode::SUCCESS
}
