//! `keyfleet-testkit`: runs keyfleet's test doubles as standalone servers.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// keyfleet's test doubles as standalone processes.
#[derive(Debug, Parser)]
#[command(name = "keyfleet-testkit", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate a test CA and a server certificate for localhost/127.0.0.1 into a directory
    /// (ca.pem, server.pem, server-key.pem).
    Ca {
        /// Directory to write into (created if missing).
        #[arg(long)]
        state_dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Ca { state_dir } => {
            std::fs::create_dir_all(&state_dir).with_context(|| format!("create {}", state_dir.display()))?;
            let ca = keyfleet_testkit::tls::TestCa::generate("keyfleet test ca")?;
            let server = ca.issue(&["localhost", "127.0.0.1"])?;
            ca.write_cert(&state_dir.join("ca.pem"))?;
            std::fs::write(state_dir.join("server.pem"), &server.cert_pem).context("write server.pem")?;
            std::fs::write(state_dir.join("server-key.pem"), &server.key_pem)
                .context("write server-key.pem")?;
            println!("ready {}", state_dir.display());
        }
    }
    Ok(())
}
