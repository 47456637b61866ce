//! CPU and memory of the systems under test, read from /proc.

/// User + system CPU seconds from a `/proc/.../stat` file (0 when unreadable).
pub fn proc_cpu(path: &str) -> f64 {
    let Ok(s) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    let Some(rest) = s.rfind(')').map(|i| &s[i + 1..]) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state(3) ... utime(14) stime(15).
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i)?.parse::<f64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks / hz
}

/// CPU seconds of process `pid`.
pub fn pid_cpu(pid: u32) -> f64 {
    proc_cpu(&format!("/proc/{pid}/stat"))
}

/// CPU seconds of this process's threads whose name starts with `prefix`.
pub fn threads_cpu(prefix: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    dir.flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix))
        })
        .map(|t| proc_cpu(&t.path().join("stat").to_string_lossy()))
        .sum()
}

/// A `kB` field of `/proc/<pid>/status` (`VmHWM`, `VmRSS`), in MB.
pub fn status_mb(pid: u32, field: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub fn uptime_line() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| {
            let l: Vec<&str> = s.split_whitespace().take(3).collect();
            format!("load {}", l.join(" "))
        })
        .unwrap_or_default()
}
