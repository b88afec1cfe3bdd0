//! Process limits the server depends on, checked once at start-up: open
//! files against `max_connections`, locked memory against the shard count.
//! The soft open-file limit is raised to the hard one when that helps; what
//! remains short is reported once, with the exact remedy.

/// Descriptors the server needs besides connections: listeners, io_uring
/// rings, eventfds, the log, and headroom for connections mid-handshake.
pub const NOFILE_OVERHEAD: u64 = 64;
/// Locked memory each shard needs: glommio refuses to start below 512 KiB.
pub const MEMLOCK_PER_SHARD_BYTES: u64 = 512 * 1024;

/// A resource limit as `getrlimit` reports it (`None` = unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// What the check concluded; `warnings` are logged once at warn level.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LimitReport {
    /// The soft open-file limit to set (raised toward the hard limit).
    pub raise_nofile_to: Option<u64>,
    pub warnings: Vec<String>,
}

/// Decides, sans-IO, from the limits in force.
pub fn check(nofile: Limit, memlock: Limit, max_connections: usize, shards: usize) -> LimitReport {
    let mut report = LimitReport::default();
    let needed_files = max_connections as u64 + NOFILE_OVERHEAD;
    let soft = nofile.soft.unwrap_or(u64::MAX);
    if soft < needed_files {
        let target = nofile.hard.map_or(needed_files, |h| h.min(needed_files));
        if target > soft {
            report.raise_nofile_to = Some(target);
        }
        if target < needed_files {
            let usable = target.saturating_sub(NOFILE_OVERHEAD);
            report.warnings.push(format!(
                "open-file limit is {target} but max_connections = {max_connections} needs \
                 {needed_files}: at most ~{usable} connections will be accepted; raise it with \
                 `ulimit -n {needed_files}` (hard limit too: tuning/limits.conf, \
                 LimitNOFILE= in tuning/ws-uring.service, or scripts/tune.sh), or lower \
                 --max-connections"
            ));
        }
    }
    let needed_lock = shards as u64 * MEMLOCK_PER_SHARD_BYTES;
    if let Some(lock) = memlock.soft {
        if lock < needed_lock {
            report.warnings.push(format!(
                "locked-memory limit is {} KiB but {shards} shards want {} KiB: if a shard fails \
                 to start, raise it with `ulimit -l {}` (tuning/limits.conf, LimitMEMLOCK= in \
                 tuning/ws-uring.service, or scripts/tune.sh), or use fewer --shards",
                lock / 1024,
                needed_lock / 1024,
                needed_lock / 1024
            ));
        }
    }
    report
}

/// Reads a limit with `getrlimit`.
pub fn read(resource: libc::__rlimit_resource_t) -> Option<Limit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(resource, &mut limit) } != 0 {
        return None;
    }
    let value = |v: libc::rlim_t| (v != libc::RLIM_INFINITY).then_some(v);
    Some(Limit {
        soft: value(limit.rlim_cur),
        hard: value(limit.rlim_max),
    })
}

/// Checks the process limits for this configuration, raises the soft
/// open-file limit where allowed, and logs what is still short.
pub fn apply_and_warn(max_connections: usize, shards: usize) {
    let (Some(nofile), Some(memlock)) = (read(libc::RLIMIT_NOFILE), read(libc::RLIMIT_MEMLOCK))
    else {
        log::warn!("cannot read process limits; skipping the start-up limit check");
        return;
    };
    let report = check(nofile, memlock, max_connections, shards);
    if let Some(target) = report.raise_nofile_to {
        let new = libc::rlimit {
            rlim_cur: target,
            rlim_max: nofile.hard.unwrap_or(libc::RLIM_INFINITY),
        };
        // SAFETY: setrlimit reads the struct we pass; raising the soft limit
        // up to the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
            log::debug!("raised the open-file soft limit to {target}");
        }
    }
    for warning in report.warnings {
        log::warn!("{warning}");
    }
}

/// The locked-memory limit as text for error messages.
pub fn memlock_text() -> String {
    match read(libc::RLIMIT_MEMLOCK) {
        None => "unknown".into(),
        Some(Limit { soft: None, .. }) => "unlimited".into(),
        Some(Limit { soft: Some(v), .. }) => format!("{} KiB", v / 1024),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn limit(soft: u64, hard: u64) -> Limit {
        Limit {
            soft: Some(soft),
            hard: Some(hard),
        }
    }

    #[test]
    fn enough_of_everything_says_nothing() {
        let r = check(limit(200_000, 200_000), limit(8 * MIB, 8 * MIB), 100_000, 8);
        assert_eq!(r, LimitReport::default());
    }

    #[test]
    fn soft_limit_is_raised_to_what_is_needed() {
        let r = check(limit(1024, 1_048_576), limit(8 * MIB, 8 * MIB), 10_000, 2);
        assert_eq!(r.raise_nofile_to, Some(10_064));
        assert!(r.warnings.is_empty());
    }

    #[test]
    fn hard_limit_short_warns_with_the_remedy() {
        let r = check(limit(1024, 20_000), limit(8 * MIB, 8 * MIB), 100_000, 2);
        assert_eq!(r.raise_nofile_to, Some(20_000));
        assert_eq!(r.warnings.len(), 1);
        assert!(
            r.warnings[0].contains("ulimit -n 100064"),
            "{}",
            r.warnings[0]
        );
        assert!(r.warnings[0].contains("~19936"), "{}", r.warnings[0]);
    }

    #[test]
    fn memlock_short_warns() {
        let r = check(limit(200_000, 200_000), limit(MIB, MIB), 1000, 8);
        assert_eq!(r.warnings.len(), 1);
        assert!(
            r.warnings[0].contains("ulimit -l 4096"),
            "{}",
            r.warnings[0]
        );
    }

    #[test]
    fn unlimited_is_enough() {
        let unlimited = Limit {
            soft: None,
            hard: None,
        };
        assert_eq!(
            check(unlimited, unlimited, 1_000_000, 64),
            LimitReport::default()
        );
    }
}
