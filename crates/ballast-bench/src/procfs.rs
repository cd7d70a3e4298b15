//! Process statistics from Linux `/proc`: a target server's memory (VmRSS, VmHWM) and the
//! CPU time of a process (the target's, and our own so the generator's cost is visible).

use std::fs;

/// Linux reports utime/stime in USER_HZ ticks, which is 100 on every architecture Linux
/// exposes to user space (the kernel converts from its internal HZ).
const USER_HZ: f64 = 100.0;

/// Resident and peak resident memory of a process, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
}

/// Reads `VmRSS` and `VmHWM` from `/proc/<pid>/status`.
pub fn memory(pid: u32) -> Result<Memory, String> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).map_err(|e| format!("read {path}: {e}"))?;
    parse_status(&text).ok_or_else(|| format!("{path}: no VmRSS/VmHWM (kernel thread or zombie?)"))
}

fn parse_status(text: &str) -> Option<Memory> {
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        peak_rss_kib: field("VmHWM:")?,
    })
}

/// User + system CPU seconds used so far by process `pid` (all threads); `None` for self.
pub fn cpu_seconds(pid: Option<u32>) -> Result<f64, String> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let text = fs::read_to_string(&path).map_err(|e| format!("read {path}: {e}"))?;
    parse_stat_cpu(&text).ok_or_else(|| format!("{path}: unexpected format"))
}

fn parse_stat_cpu(text: &str) -> Option<f64> {
    // "pid (comm) state ppid ..." — comm may contain spaces and parentheses, so split after
    // the last ')'. utime and stime are fields 14 and 15 (1-based), i.e. 12 and 13 after it.
    let after = &text[text.rfind(')')? + 1..];
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status() {
        let s = "Name:\tetcd\nVmPeak:\t 999 kB\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(
            parse_status(s),
            Some(Memory {
                rss_kib: 40960,
                peak_rss_kib: 51200
            })
        );
        assert_eq!(parse_status("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn parses_stat() {
        let s = "1234 (my (weird) proc) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0";
        assert_eq!(parse_stat_cpu(s), Some(3.0));
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        let m = memory(me).unwrap();
        assert!(m.rss_kib > 0 && m.peak_rss_kib >= m.rss_kib);
        assert!(cpu_seconds(None).unwrap() >= 0.0);
        assert!(cpu_seconds(Some(me)).unwrap() >= 0.0);
        assert!(memory(u32::MAX).is_err());
    }
}
