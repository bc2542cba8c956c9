//! The generator's own CPU and memory, from `/proc/self` (Linux; elsewhere zero).

use std::time::Duration;

use crate::report::ProcessUsage;

/// Clock ticks per second of `/proc/self/stat` (USER_HZ, 100 on every Linux we run on).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU seconds (user and system) this process used so far.
pub fn cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces), closed by ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the ')'.
    (ticks(11) + ticks(12)) / TICKS_PER_SEC
}

/// Peak resident memory (VmHWM), MiB.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// This process's usage since `cpu_at_start`, over `elapsed`.
pub fn process_usage(cpu_at_start: f64, elapsed: Duration) -> ProcessUsage {
    let cpu = (cpu_secs() - cpu_at_start).max(0.0);
    ProcessUsage {
        cpu_secs: cpu,
        cpu_percent: cpu / elapsed.as_secs_f64().max(0.001) * 100.0,
        peak_rss_mib: peak_rss_mib(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_uses_some_cpu_and_memory() {
        let start = super::cpu_secs();
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(x, 1);
        assert!(super::cpu_secs() > start, "a busy loop used no CPU time");
        assert!(super::peak_rss_mib() > 1.0);
    }
}
