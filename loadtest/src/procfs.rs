//! Process figures from `/proc` (Linux): resident memory, CPU time and open files of the hub
//! process and of this one, so the report measures the hub apart from the simulated fleet.

use std::time::Duration;

/// `/proc` reports CPU time in USER_HZ ticks, which the kernel ABI fixes at 100 per second.
const USER_HZ: u64 = 100;

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sample {
    /// Resident set size now, bytes.
    pub rss_bytes: u64,
    /// Peak resident set size since start (VmHWM), bytes.
    pub peak_rss_bytes: u64,
    /// User + system CPU time consumed since start.
    pub cpu: Duration,
}

/// Errors reading `/proc`.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// Reading a `/proc` entry failed.
    #[error("cannot read /proc/{pid}/{file}")]
    Read {
        /// The process ID.
        pid: u32,
        /// Entry under `/proc/PID/`, e.g. `status` or `fd`.
        file: &'static str,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A `/proc` file did not have the expected format.
    #[error("/proc/{pid}/{file}: {what}")]
    Parse {
        /// The process ID.
        pid: u32,
        /// File under `/proc/PID/`, e.g. `stat`.
        file: &'static str,
        /// What was missing or malformed.
        what: String,
    },
}

/// Reads `/proc/PID/status` and `/proc/PID/stat`.
pub fn sample(pid: u32) -> Result<Sample, ProcError> {
    let read = |file: &'static str| {
        std::fs::read_to_string(format!("/proc/{pid}/{file}")).map_err(|source| ProcError::Read {
            pid,
            file,
            source,
        })
    };
    let status = read("status")?;
    let stat = read("stat")?;
    let (rss_bytes, peak_rss_bytes) = parse_status(&status).map_err(|what| ProcError::Parse {
        pid,
        file: "status",
        what,
    })?;
    let cpu = parse_stat_cpu(&stat).map_err(|what| ProcError::Parse {
        pid,
        file: "stat",
        what,
    })?;
    Ok(Sample {
        rss_bytes,
        peak_rss_bytes,
        cpu,
    })
}

/// Open file descriptors of a process (entries of `/proc/PID/fd`).
pub fn open_files(pid: u32) -> Result<usize, ProcError> {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd")).map_err(|source| ProcError::Read {
        pid,
        file: "fd",
        source,
    })?;
    Ok(entries.count())
}

/// The soft limit on open files of a process (`Max open files` in `/proc/PID/limits`); `None`
/// when unlimited.
pub fn open_files_limit(pid: u32) -> Result<Option<u64>, ProcError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).map_err(|source| ProcError::Read {
        pid,
        file: "limits",
        source,
    })?;
    parse_open_files_limit(&text).map_err(|what| ProcError::Parse {
        pid,
        file: "limits",
        what,
    })
}

fn parse_open_files_limit(text: &str) -> Result<Option<u64>, String> {
    let line = text
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .ok_or("no Max open files line")?;
    let soft = line["Max open files".len()..]
        .split_whitespace()
        .next()
        .ok_or("Max open files has no value")?;
    match soft {
        "unlimited" => Ok(None),
        number => number
            .parse()
            .map(Some)
            .map_err(|_| format!("Max open files soft limit {number:?} is not a number")),
    }
}

/// `VmRSS` and `VmHWM` in bytes from the text of `/proc/PID/status`.
fn parse_status(text: &str) -> Result<(u64, u64), String> {
    let field = |name: &str| -> Result<u64, String> {
        let line = text
            .lines()
            .find(|line| line.starts_with(name))
            .ok_or_else(|| format!("no {name} line"))?;
        let kib = line[name.len()..]
            .split_whitespace()
            .next()
            .ok_or_else(|| format!("{name} has no value"))?;
        kib.parse::<u64>()
            .map(|kib| kib * 1024)
            .map_err(|_| format!("{name} value {kib:?} is not a number"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// utime + stime from the text of `/proc/PID/stat`. The command name (field 2) may contain spaces
/// and parentheses, so fields are counted after its closing parenthesis.
fn parse_stat_cpu(text: &str) -> Result<Duration, String> {
    let after_name = text.rfind(')').ok_or("no command name")?;
    // After ")": field 3 (state) is index 0, so utime (field 14) is index 11, stime index 12.
    let fields: Vec<&str> = text[after_name + 1..].split_whitespace().collect();
    let tick = |index: usize, name: &str| -> Result<u64, String> {
        fields
            .get(index)
            .ok_or_else(|| format!("no {name} field"))?
            .parse::<u64>()
            .map_err(|_| format!("{name} is not a number"))
    };
    let ticks = tick(11, "utime")? + tick(12, "stime")?;
    Ok(Duration::from_millis(ticks * 1000 / USER_HZ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_memory_lines() {
        let text = "Name:\tkeyfleet\nVmPeak:\t  9000 kB\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\n";
        assert_eq!(parse_status(text), Ok((1024 * 1024, 2048 * 1024)));
        assert_eq!(parse_status("Name: x\n"), Err("no VmRSS: line".to_owned()));
    }

    #[test]
    fn parses_cpu_ticks_even_with_odd_command_names() {
        let text = "42 (key fleet) (x)) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 1 0";
        assert_eq!(parse_stat_cpu(text), Ok(Duration::from_millis(4000)));
        assert!(parse_stat_cpu("42 (x) S 1").is_err());
    }

    #[test]
    fn parses_the_soft_open_files_limit() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max cpu time              unlimited            unlimited            seconds   \n\
                    Max open files            20000                40000                files     \n";
        assert_eq!(parse_open_files_limit(text), Ok(Some(20_000)));
        let unlimited = "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_open_files_limit(unlimited), Ok(None));
        assert!(parse_open_files_limit("Max cpu time unlimited unlimited seconds\n").is_err());
    }

    #[test]
    fn samples_this_process() {
        assert!(open_files(std::process::id()).expect("own fd directory") > 0);
        assert!(open_files_limit(std::process::id()).is_ok());
        let sample = sample(std::process::id()).expect("own /proc entry");
        assert!(sample.rss_bytes > 0);
        assert!(sample.peak_rss_bytes >= sample.rss_bytes);
    }
}
