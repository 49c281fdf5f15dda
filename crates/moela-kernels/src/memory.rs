//! How much memory this process can still fill: the one input to the decisions that keep a
//! model larger than memory from being OOM-killed (whether to pre-fault a file mapping, whether
//! weights get packed copies in anonymous memory). Read at load time only, never per operation.

/// What is left before the kernel has to reclaim hard or kill: Linux's `MemAvailable`
/// (`/proc/meminfo`: free memory plus page cache it can drop), capped by this process's cgroup
/// v2 memory limit (`memory.max − memory.current`). `None` where neither can be read.
pub fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let system = meminfo.as_deref().and_then(mem_available);
    let cgroup = cgroup_v2_headroom();
    match (system, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whether `bytes` fit into `available` with a margin for everything else the process and the
/// machine hold ([`budget`]). `None` (unknown) counts as fitting.
pub fn fits(bytes: u64, available: Option<u64>) -> bool {
    budget(available).is_none_or(|b| bytes <= b)
}

/// What weights may take of `available` memory: all of it but a margin for everything else
/// the process and the machine hold (an eighth, at least 256 MiB). `None` when unknown.
pub fn budget(available: Option<u64>) -> Option<u64> {
    available.map(|a| a.saturating_sub((a / 8).max(256 << 20)))
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut parts = line.split_whitespace().skip(1);
    let kb: u64 = parts.next()?.parse().ok()?;
    (parts.next() == Some("kB")).then_some(kb.checked_mul(1024)?)
}

/// `memory.max − memory.current` of this process's cgroup (v2), `None` when unlimited or
/// unreadable.
fn cgroup_v2_headroom() -> Option<u64> {
    let cg = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    // cgroup v2: the single line "0::/path".
    let path = cg.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = std::path::Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    let max: u64 = read("memory.max")?.trim().parse().ok()?; // "max" → None
    let current: u64 = read("memory.current")?.trim().parse().ok()?;
    Some(max.saturating_sub(current))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_parsing() {
        let text = "MemTotal:       24575000 kB\nMemFree:  100 kB\nMemAvailable:   7340032 kB\n";
        assert_eq!(mem_available(text), Some(7_340_032 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(mem_available("MemAvailable: lots kB\n"), None);
        assert_eq!(
            mem_available("MemAvailable: 18446744073709551615 kB\n"),
            None
        );
    }

    #[test]
    fn fitting_keeps_a_margin() {
        let gib = 1u64 << 30;
        assert!(fits(6 * gib, Some(7 * gib)));
        assert!(!fits(9 * gib, Some(7 * gib)));
        // An eighth of 8 GiB is the margin: 7 GiB fits, 7 GiB + 1 does not.
        assert!(fits(7 * gib, Some(8 * gib)));
        assert!(!fits(7 * gib + 1, Some(8 * gib)));
        // Small machines keep at least 256 MiB.
        assert!(!fits(900 << 20, Some(gib)));
        assert!(fits(u64::MAX, None));
        // This machine can be read (Linux CI and dev machines).
        #[cfg(target_os = "linux")]
        assert!(available_bytes().is_some_and(|a| a > 0));
    }
}
