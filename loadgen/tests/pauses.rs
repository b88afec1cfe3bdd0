//! The pause samplers see a whole process stop on every CPU at once.
//!
//! A machine pause cannot be made on demand, but stopping the sampling
//! process with SIGSTOP is the same thing as far as its threads can tell:
//! none of them runs until SIGCONT. The test runs itself again as a child
//! (the `child_samples_until_told` test with `PAUSES_CHILD` set), stops it
//! for 80 ms, tells it to finish, and reads the child's report.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use loadgen::pauses::{PauseReport, PauseSampler};

const CHILD_ENV: &str = "PAUSES_CHILD";
const STOPPED: Duration = Duration::from_millis(80);
const LINE_WAIT: Duration = Duration::from_secs(30);

/// As the child: samples from READY until a line (or the end) on stdin.
#[test]
fn child_samples_until_told() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return; // only does something as the child of the test below
    }
    let sampler = PauseSampler::start(Duration::from_millis(1));
    assert!(sampler.wait_until_sampling(LINE_WAIT), "samplers started");
    let epoch = Instant::now();
    println!("READY");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    let report = sampler.stop(epoch, 1);
    println!("REPORT {}", serde_json::to_string(&report).unwrap());
}

/// Never leaves the child stopped or running, whatever the test does.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        signal(&self.0, libc::SIGCONT);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, sig: libc::c_int) -> bool {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as libc::pid_t, sig) == 0 }
}

/// The next line from the child that starts with `prefix`, within LINE_WAIT.
fn line_starting(lines: &mpsc::Receiver<String>, prefix: &str) -> String {
    let deadline = Instant::now() + LINE_WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.starts_with(prefix) => return line,
            Ok(_) => continue,
            Err(e) => panic!("no {prefix} line from the child: {e}"),
        }
    }
}

#[test]
fn a_stopped_process_is_a_pause_on_every_cpu_at_once() {
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_samples_until_told", "--nocapture"])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let stdout = child.0.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    line_starting(&lines, "READY");
    std::thread::sleep(Duration::from_millis(150));
    assert!(signal(&child.0, libc::SIGSTOP));
    std::thread::sleep(STOPPED);
    assert!(signal(&child.0, libc::SIGCONT));
    std::thread::sleep(Duration::from_millis(50));
    writeln!(child.0.stdin.take().unwrap(), "STOP").unwrap();
    let report = line_starting(&lines, "REPORT ");
    let report: PauseReport = serde_json::from_str(&report["REPORT ".len()..]).unwrap();
    assert!(child.0.wait().unwrap().success());

    let cpus = core_affinity::get_core_ids().unwrap().len();
    assert_eq!(report.per_cpu.len(), cpus);
    let stop = report
        .pauses
        .iter()
        .max_by_key(|p| p.longest_us)
        .unwrap_or_else(|| panic!("no pause: {report:#?}"));
    assert_eq!(stop.cpus, cpus, "{report:#?}");
    // Each sampler was due within a millisecond of the stop and woke after
    // SIGCONT: late by nearly the whole stop, all of them at once.
    let near_the_stop = |us: u64| {
        let d = Duration::from_micros(us);
        d >= STOPPED - Duration::from_millis(5) && d < Duration::from_secs(5)
    };
    assert!(near_the_stop(stop.longest_us), "{report:#?}");
    if cpus >= 2 {
        assert!(near_the_stop(stop.all_cpus_us), "{report:#?}");
        assert!(report.all_cpus >= 1, "{report:#?}");
    }
    // The child's clock started just before READY; the stop came ≥ 150 ms later.
    assert!((0.1..10.0).contains(&stop.t_s), "{stop:?}");
}
