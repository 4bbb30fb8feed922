//! Store benchmark: `cargo bench -p keyfleet-hub --bench store -- [OPTIONS]`.
//!
//! Writes a fleet's worth of status (10,000 clusters × 50 fleet secrets = 500,000 rows by default)
//! through the store's batched status path and times each dashboard view, on Postgres (a scratch
//! database on the `--database-url` server, dropped afterwards) and on SQLite (a temporary file).
//! Prints a table and, with `--report FILE`, the JSON report. See `keyfleet_hub::store::bench`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use keyfleet_hub::store::Store;
use keyfleet_hub::store::bench::{self, BenchConfig, BenchReport, ScratchDatabase};

/// Store benchmark: status writes and dashboard view latency at fleet scale.
#[derive(Debug, Parser)]
#[command(name = "store-bench")]
struct Args {
    /// Backends to measure.
    #[arg(long, value_enum, default_value = "both")]
    backend: Which,
    /// Postgres server to create the scratch database on (any database of it).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test",
        hide_env_values = true
    )]
    database_url: String,
    /// Enrolled clusters.
    #[arg(long, default_value_t = 10_000)]
    clusters: usize,
    /// Fleet secrets, each targeting every cluster.
    #[arg(long, default_value_t = 50)]
    fleet_secrets: usize,
    /// Timed runs of each view.
    #[arg(long, default_value_t = 5)]
    samples: usize,
    /// Writes the JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Keeps the Postgres scratch database (and prints its URL) to inspect plans afterwards.
    #[arg(long)]
    keep_database: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Which {
    Postgres,
    Sqlite,
    Both,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config = BenchConfig {
        clusters: args.clusters,
        fleet_secrets: args.fleet_secrets,
        samples: args.samples,
    };
    let mut reports = Vec::new();
    if args.backend != Which::Sqlite {
        match postgres(&args.database_url, &config, args.keep_database).await {
            Ok(report) => reports.push(report),
            Err(error) => return fail(&error),
        }
    }
    if args.backend != Which::Postgres {
        match sqlite(&config).await {
            Ok(report) => reports.push(report),
            Err(error) => return fail(&error),
        }
    }
    for report in &reports {
        print_report(report);
    }
    if let Some(path) = &args.report {
        let json = serde_json::to_vec_pretty(&reports).expect("the report encodes");
        if let Err(error) = std::fs::write(path, json) {
            eprintln!("store-bench: cannot write {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("report written to {}", path.display());
    }
    ExitCode::SUCCESS
}

async fn postgres(base: &str, config: &BenchConfig, keep: bool) -> Result<BenchReport, bench::BenchError> {
    let scratch = ScratchDatabase::create(base).await?;
    let outcome = async {
        let store = Store::connect(&scratch.url).await?;
        store.migrate().await?;
        let report = bench::run(&store, config, |line| eprintln!("{line}")).await;
        store.close().await;
        report
    }
    .await;
    if keep {
        eprintln!("kept the scratch database {} (drop it when done)", scratch.name());
    } else {
        scratch.drop_database().await?;
    }
    outcome
}

async fn sqlite(config: &BenchConfig) -> Result<BenchReport, bench::BenchError> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("bench.db").display())).await?;
    store.migrate().await?;
    let report = bench::run(&store, config, |line| eprintln!("{line}")).await;
    store.close().await;
    report
}

fn fail(error: &dyn std::error::Error) -> ExitCode {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    eprintln!("store-bench: {message}");
    ExitCode::FAILURE
}

fn print_report(report: &BenchReport) {
    println!(
        "\n{} — {} clusters × {} fleet secrets = {} status rows (setup {:.1} s)",
        report.backend, report.clusters, report.fleet_secrets, report.status_rows, report.setup_seconds
    );
    println!(
        "  status writes: {} rows in {} statements = {:.1} per 10,000 acks (target ≤ {}); \
         pending {:.0} rows/s, acks {:.0} rows/s",
        report.rows_written,
        report.statements,
        report.statements_per_10k_acks,
        bench::STATEMENTS_PER_10K_ACKS_TARGET,
        report.pending_rows_per_second,
        report.ack_rows_per_second
    );
    if let Some(bytes) = report.lagging_table_bytes {
        println!(
            "  sync_lagging: {} VACUUM during the writes; {:.1} MiB with its indexes when timed",
            report.lagging_vacuums,
            bytes as f64 / 1_048_576.0
        );
    }
    println!(
        "  {:<30} {:>8} {:>10} {:>8} {:>8} {:>10}",
        "VIEW", "ROWS", "MEDIAN ms", "MIN ms", "MAX ms", "SERVER ms"
    );
    for view in &report.views {
        let server = view
            .server_median_ms
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}"));
        println!(
            "  {:<30} {:>8} {:>10.1} {:>8.1} {:>8.1} {:>10}",
            view.name, view.rows, view.median_ms, view.min_ms, view.max_ms, server
        );
    }
    println!(
        "  (MEDIAN/MIN/MAX: the query as a dashboard sends it, rows fetched; SERVER: execution in Postgres)"
    );
    let target = if report.backend == "postgres" {
        format!(
            "statements ≤ {} per 10,000 acks, views ≤ {} ms",
            bench::STATEMENTS_PER_10K_ACKS_TARGET,
            bench::VIEW_MILLIS_TARGET
        )
    } else {
        format!(
            "statements ≤ {} per 10,000 acks (view target is for Postgres)",
            bench::STATEMENTS_PER_10K_ACKS_TARGET
        )
    };
    println!(
        "  targets ({target}): {}",
        if report.meets_targets { "met" } else { "NOT met" }
    );
}
