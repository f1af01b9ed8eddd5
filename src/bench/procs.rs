//! What each process costs, from the kernel's own accounting: CPU time
//! (`/proc/<pid>/stat`: user and system time, plus the time of children
//! already reaped, which is where finished PostgreSQL backends land),
//! resident memory and open descriptors. PostgreSQL is every process named
//! `postgres` on the machine.

use std::{collections::BTreeMap, time::Instant};

/// Clock ticks per second of `/proc` times.
fn ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU seconds of `pid` so far (its own, and its reaped children's).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime, stime, cutime, cstime are fields 14-17 (11-14 after the name and state).
    let ticks: f64 = fields.get(11..15)?.iter().filter_map(|f| f.parse::<f64>().ok()).sum();
    Some(ticks / ticks_per_second())
}

/// Pids whose command name is `name`.
pub fn pids_named(name: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name))
        .collect()
}

/// Resident memory of `pid` in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Open descriptors of `pid`.
pub fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The processes a measurement follows, by name.
#[derive(Debug, Clone)]
pub struct Watched {
    /// Our processes (gateway, services, or the one process of all three), and the load generator.
    pub named: Vec<(String, u32)>,
    /// Also account every `postgres` process.
    pub postgres: bool,
    /// Also account the broker's process, found by name (`tansu`), if any.
    pub broker: Option<String>,
}

/// CPU seconds by process at one instant.
#[derive(Debug, Clone)]
pub struct CpuSample {
    at: Instant,
    seconds: BTreeMap<String, f64>,
}

impl Watched {
    /// CPU seconds of each watched process now.
    pub fn sample(&self) -> CpuSample {
        let mut seconds: BTreeMap<String, f64> =
            self.named.iter().map(|(name, pid)| (name.clone(), cpu_seconds(*pid).unwrap_or(0.0))).collect();
        if self.postgres {
            seconds.insert("postgres".into(), pids_named("postgres").into_iter().filter_map(cpu_seconds).sum());
        }
        if let Some(broker) = &self.broker {
            seconds.insert("broker".into(), pids_named(broker).into_iter().filter_map(cpu_seconds).sum());
        }
        CpuSample { at: Instant::now(), seconds }
    }

    /// Resident memory of each named process, in MiB.
    pub fn rss(&self) -> BTreeMap<String, f64> {
        self.named.iter().map(|(name, pid)| (name.clone(), rss_mib(*pid))).collect()
    }

    /// Open descriptors of each named process.
    pub fn files(&self) -> BTreeMap<String, usize> {
        self.named.iter().map(|(name, pid)| (name.clone(), open_files(*pid))).collect()
    }
}

impl CpuSample {
    /// Cores each process used between `earlier` and this sample
    /// (CPU seconds per wall second).
    pub fn cores_since(&self, earlier: &CpuSample) -> BTreeMap<String, f64> {
        let wall = self.at.duration_since(earlier.at).as_secs_f64().max(1e-9);
        self.seconds
            .iter()
            .map(|(name, s)| (name.clone(), (s - earlier.seconds.get(name).unwrap_or(s)) / wall))
            .collect()
    }

    /// CPU milliseconds each process spent between `earlier` and this sample
    /// per operation, `idle_cores` (each process's idle rate) taken off.
    pub fn ms_per_op_since(
        &self,
        earlier: &CpuSample,
        operations: u64,
        idle_cores: &BTreeMap<String, f64>,
    ) -> BTreeMap<String, f64> {
        let wall = self.at.duration_since(earlier.at).as_secs_f64();
        self.seconds
            .iter()
            .map(|(name, s)| {
                let spent = s - earlier.seconds.get(name).unwrap_or(s) - idle_cores.get(name).unwrap_or(&0.0) * wall;
                (name.clone(), 1000.0 * spent.max(0.0) / operations.max(1) as f64)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_memory_and_descriptors() {
        let me = std::process::id();
        let busy = Instant::now();
        let mut x = 0_u64;
        while busy.elapsed().as_millis() < 50 {
            x = x.wrapping_add(1);
        }
        assert!(x > 0);
        assert!(cpu_seconds(me).is_some_and(|s| s > 0.0));
        assert!(rss_mib(me) > 1.0 && open_files(me) > 0);
        let watched = Watched { named: vec![("me".into(), me)], postgres: false, broker: None };
        let before = watched.sample();
        let after = watched.sample();
        assert!(after.cores_since(&before)["me"] >= 0.0);
    }
}
