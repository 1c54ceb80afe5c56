//! `drove export grafana|alerts`: a Grafana dashboard and Prometheus alert rules for
//! drove's metrics, printed to stdout.

use std::path::Path;

/// What to export.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ExportKind {
    /// A Grafana dashboard (JSON) for drove's Prometheus metrics.
    Grafana,
    /// Prometheus alerting rules (YAML).
    Alerts,
}

/// `drove export KIND`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// What to print.
    #[arg(value_enum)]
    pub kind: ExportKind,
}

/// Prints the export; returns the exit code.
pub fn run(args: ExportArgs, _config: &Path) -> anyhow::Result<u8> {
    let _ = args;
    anyhow::bail!("drove export is not implemented yet")
}
