//! `hostile`: attacks a ws-uring server on this machine and says whether it
//! defended itself as documented. See docs/HOSTILE.md.

use std::time::Duration;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args: hostile::cli::Args = ws_uring_flags::from_env();
    let plan = match args.to_plan() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("hostile: {e}");
            std::process::exit(2);
        }
    };
    // Whatever happens on the executor, the process ends by the time limit.
    let limit = plan.time_limit;
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!(
            "hostile: time limit of {} s reached; aborting",
            limit.as_secs()
        );
        std::process::exit(3);
    });
    let report = match hostile::suite::run(plan) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hostile: {e}");
            std::process::exit(1);
        }
    };
    print!("{}", hostile::report::table(&report));
    if let Some(path) = &args.output {
        let json = serde_json::to_string_pretty(&report).expect("the report serialises");
        if let Err(e) = std::fs::write(path, json + "\n") {
            eprintln!("hostile: cannot write {path}: {e}");
            std::process::exit(1);
        }
    }
    // Let glommio's threads wind down before exiting.
    std::thread::sleep(Duration::from_millis(10));
    std::process::exit(if report.pass { 0 } else { 1 });
}
