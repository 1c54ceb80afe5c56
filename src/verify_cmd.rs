//! `drove verify`: drills under load against a running drove (or one it starts from a
//! config), one line of numbers and a verdict per drill, exit 1 if any fails.

use std::net::SocketAddr;
use std::path::Path;

/// `drove verify` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the drills; returns the exit code.
pub fn run(args: VerifyArgs, _config: &Path, _admin: Option<SocketAddr>, _token: Option<&str>) -> anyhow::Result<u8> {
    let _ = args;
    anyhow::bail!("drove verify is not implemented yet")
}
