//! The hub as its own process: the loadtest starts `keyfleet serve` (by default this very binary
//! as `keyfleet-loadtest hub serve …`, the same hub code; or a `keyfleet` binary) so its memory
//! and CPU are measured apart from the simulated fleet, captures its log for the leak check, and
//! can kill it (`SIGKILL`) and start it again.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// What `keyfleet serve --ready-file F` writes once it serves (atomically, by rename).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct Ready {
    /// gRPC address (Admin, Enrollment, SecretSync).
    pub grpc_addr: SocketAddr,
    /// Operations HTTP address (`/metrics`, `/readyz`).
    pub ops_addr: SocketAddr,
}

/// Errors managing the hub process.
#[derive(Debug, thiserror::Error)]
pub enum HubProcessError {
    /// Starting the hub binary failed.
    #[error("cannot start {binary}")]
    Spawn {
        /// Path of the hub binary.
        binary: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// Opening the hub's log file for append failed.
    #[error("cannot open the hub log {path}")]
    Log {
        /// Path of the log file.
        path: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The hub exited while the ready file was awaited.
    #[error("the hub exited before it was ready ({status}); its log is {log}")]
    Exited {
        /// The hub's exit status.
        status: std::process::ExitStatus,
        /// Path of the hub's log.
        log: String,
    },
    /// No ready file within the timeout; holds the timeout and the log path.
    #[error("the hub was not ready within {0:?}; its log is {1}")]
    NotReady(Duration, String),
    /// The ready file did not parse as JSON.
    #[error("invalid ready file {path}")]
    ReadyFile {
        /// Path of the ready file.
        path: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// Sending `SIGTERM` or `SIGKILL` to the hub failed.
    #[error("cannot signal the hub")]
    Signal(#[source] std::io::Error),
    /// Fetching the hub's `/metrics` failed.
    #[error("cannot scrape {url}")]
    Scrape {
        /// The metrics URL.
        url: String,
        /// The HTTP error.
        #[source]
        source: reqwest::Error,
    },
}

/// How to start the hub.
#[derive(Debug, Clone)]
pub struct HubCommand {
    /// The program: a `keyfleet` binary, or this one (with `prefix` `["hub"]`).
    pub binary: PathBuf,
    /// Arguments before `serve` (`hub` when the program is the loadtest itself).
    pub prefix: Vec<String>,
    /// Arguments after `serve` (without `--ready-file`).
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Where the hub's stderr (its log) is appended.
    pub log: PathBuf,
    /// Where the hub writes its ready file.
    pub ready_file: PathBuf,
}

/// A running hub.
pub struct HubProcess {
    child: Child,
    ready: Ready,
    command: HubCommand,
}

impl HubProcess {
    /// Starts the hub and waits until its ready file appears.
    pub async fn start(command: HubCommand, timeout: Duration) -> Result<Self, HubProcessError> {
        let _ = std::fs::remove_file(&command.ready_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&command.log)
            .map_err(|source| HubProcessError::Log {
                path: command.log.display().to_string(),
                source,
            })?;
        let mut child = Command::new(&command.binary)
            .args(&command.prefix)
            .arg("serve")
            .args(&command.args)
            .arg("--ready-file")
            .arg(&command.ready_file)
            .envs(command.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| HubProcessError::Spawn {
                binary: command.binary.display().to_string(),
                source,
            })?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(ready) = read_ready(&command.ready_file)? {
                return Ok(Self {
                    child,
                    ready,
                    command,
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(HubProcessError::Exited {
                    status,
                    log: command.log.display().to_string(),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(HubProcessError::NotReady(
                    timeout,
                    command.log.display().to_string(),
                ));
            }
            // A benchmark, not a test: polling the file at 20 Hz is the simplest portable wait.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Addresses the hub serves on.
    pub fn ready(&self) -> Ready {
        self.ready
    }

    /// Process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// How it was started (to start it again).
    pub fn command(&self) -> &HubCommand {
        &self.command
    }

    /// `SIGKILL`: no drain, no goodbye (the crash scenario).
    pub async fn kill(mut self) -> Result<(), HubProcessError> {
        self.child.kill().await.map_err(HubProcessError::Signal)
    }

    /// `SIGTERM`, then wait for a graceful exit (drain); `SIGKILL` after `grace`.
    pub async fn terminate(mut self, grace: Duration) -> Result<(), HubProcessError> {
        if let Some(pid) = self.child.id() {
            let status = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .map_err(HubProcessError::Signal)?;
            if status.success() && tokio::time::timeout(grace, self.child.wait()).await.is_ok() {
                return Ok(());
            }
        }
        self.child.kill().await.map_err(HubProcessError::Signal)
    }
}

fn read_ready(path: &Path) -> Result<Option<Ready>, HubProcessError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| HubProcessError::ReadyFile {
                path: path.display().to_string(),
                source,
            }),
        Err(_) => Ok(None),
    }
}

/// A Prometheus text exposition, parsed enough to sum a metric's samples.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    samples: Vec<(String, String, f64)>,
}

impl Metrics {
    /// Scrapes `http://{ops_addr}/metrics`.
    pub async fn scrape(http: &reqwest::Client, ops_addr: SocketAddr) -> Result<Self, HubProcessError> {
        let url = format!("http://{ops_addr}/metrics");
        let text = async { http.get(&url).send().await?.error_for_status()?.text().await }
            .await
            .map_err(|source| HubProcessError::Scrape { url, source })?;
        Ok(Self::parse(&text))
    }

    /// Parses the text format (comments skipped; labels kept as written).
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let value: f64 = value.parse().ok()?;
                let (name, labels) = match series.split_once('{') {
                    Some((name, labels)) => (name, labels.trim_end_matches('}')),
                    None => (series, ""),
                };
                Some((name.to_owned(), labels.to_owned(), value))
            })
            .collect();
        Self { samples }
    }

    /// Adds `other`'s samples (e.g. every replica's, so sums run over the replicas).
    pub fn merge(&mut self, other: &Metrics) {
        self.samples.extend(other.samples.iter().cloned());
    }

    /// Sum of every sample of `name` (all label sets).
    pub fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(sample, _, _)| sample == name)
            .map(|(_, _, value)| value)
            .sum()
    }

    /// Sum of the samples of `name` whose labels contain `label` (e.g. `result="in_sync"`).
    pub fn sum_with(&self, name: &str, label: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(sample, labels, _)| sample == name && labels.contains(label))
            .map(|(_, _, value)| value)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_samples_across_label_sets() {
        let text = "# HELP keyfleet_hub_bytes_sent_total Bytes.\n# TYPE keyfleet_hub_bytes_sent_total counter\n\
                    keyfleet_hub_bytes_sent_total{kind=\"update\"} 100\n\
                    keyfleet_hub_bytes_sent_total{kind=\"welcome\"} 20\n\
                    keyfleet_hub_connected_agents 3\n";
        let metrics = Metrics::parse(text);
        assert_eq!(metrics.sum("keyfleet_hub_bytes_sent_total"), 120.0);
        assert_eq!(
            metrics.sum_with("keyfleet_hub_bytes_sent_total", "kind=\"welcome\""),
            20.0
        );
        assert_eq!(metrics.sum("keyfleet_hub_connected_agents"), 3.0);
        assert_eq!(metrics.sum("missing"), 0.0);
        let mut both = metrics.clone();
        both.merge(&metrics);
        assert_eq!(both.sum("keyfleet_hub_bytes_sent_total"), 240.0);
    }

    #[tokio::test]
    async fn reports_a_hub_that_exits_before_ready() {
        let dir = tempfile::tempdir().expect("tempdir");
        let command = HubCommand {
            binary: PathBuf::from("false"),
            prefix: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            log: dir.path().join("hub.log"),
            ready_file: dir.path().join("ready.json"),
        };
        let error = HubProcess::start(command, Duration::from_secs(30))
            .await
            .err()
            .expect("false exits");
        assert!(matches!(error, HubProcessError::Exited { .. }), "{error}");
    }

    #[tokio::test]
    async fn reads_the_ready_file_of_a_started_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("fake-hub");
        // Stands in for `keyfleet serve`: writes the ready file the way the hub does, then waits.
        std::fs::write(
            &script,
            "#!/bin/sh\nwhile [ \"$1\" != --ready-file ]; do shift; done\n\
             echo '{\"grpc_addr\":\"127.0.0.1:7443\",\"ops_addr\":\"127.0.0.1:9090\"}' > \"$2.tmp\"\n\
             mv \"$2.tmp\" \"$2\"\nexec sleep 30\n",
        )
        .expect("script");
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(&script)
            .status()
            .expect("chmod");
        let command = HubCommand {
            binary: script,
            prefix: vec!["hub".to_owned()],
            args: vec!["--x".to_owned()],
            env: Vec::new(),
            log: dir.path().join("hub.log"),
            ready_file: dir.path().join("ready.json"),
        };
        let hub = HubProcess::start(command, Duration::from_secs(30))
            .await
            .expect("ready");
        assert_eq!(hub.ready().grpc_addr, "127.0.0.1:7443".parse().expect("addr"));
        assert!(hub.pid().is_some());
        hub.kill().await.expect("killed");
    }
}
