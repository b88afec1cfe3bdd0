//! The pause samplers see a whole process stop on every CPU at once.
//!
//! A machine pause cannot be made on demand, but stopping the sampling
//! process with SIGSTOP is the same thing as far as its threads can tell:
//! none of them runs until SIGCONT. The test runs itself again as a child
//! (the `child_samples_until_told` test with `PAUSES_CHILD` set), stops it
//! for 80 ms and reads the child's report.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use loadgen::pauses::{PauseReport, PauseSampler};

const CHILD_ENV: &str = "PAUSES_CHILD";
const STOPPED: Duration = Duration::from_millis(80);

#[test]
fn child_samples_until_told() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return; // only does something as the child of the test below
    }
    let sampler = PauseSampler::start(Duration::from_millis(1));
    let epoch = Instant::now();
    println!("READY");
    std::thread::sleep(Duration::from_millis(600));
    let report = sampler.stop(epoch, 1);
    println!("REPORT {}", serde_json::to_string(&report).unwrap());
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
}

#[test]
fn a_stopped_process_is_a_pause_on_every_cpu_at_once() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_samples_until_told", "--nocapture"])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut report = None;
    while let Some(Ok(line)) = lines.next() {
        assert!(Instant::now() < deadline, "the child took too long");
        if line.contains("READY") {
            std::thread::sleep(Duration::from_millis(150));
            signal(child.id(), libc::SIGSTOP);
            std::thread::sleep(STOPPED);
            signal(child.id(), libc::SIGCONT);
        } else if let Some(json) = line.strip_prefix("REPORT ") {
            report = Some(serde_json::from_str::<PauseReport>(json).unwrap());
        }
    }
    assert!(child.wait().unwrap().success());
    let report = report.expect("the child reports");
    let cpus = core_affinity::get_core_ids().unwrap().len();
    assert_eq!(report.per_cpu.len(), cpus);
    assert!(report.all_cpus >= 1, "{report:#?}");
    // Each sampler was due within a millisecond of the stop and woke after
    // SIGCONT, so its wake-up was late by nearly the whole stop.
    let longest = Duration::from_micros(report.all_cpus_longest_us);
    assert!(
        longest >= STOPPED - Duration::from_millis(5) && longest < Duration::from_secs(2),
        "{report:#?}"
    );
    let stop = report
        .pauses
        .iter()
        .find(|p| p.cpus == cpus && p.longest_us == report.all_cpus_longest_us)
        .unwrap();
    assert!((0.1..0.5).contains(&stop.t_s), "{stop:?}");
}
