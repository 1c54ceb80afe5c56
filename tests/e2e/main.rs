//! End-to-end tests: the real `drove` binary, real child processes, real sockets and
//! real signals. Every test is bounded in time and leaves no process behind (children
//! run in their own process groups, killed on drop).

mod bad_input;
mod balancer;
mod bench;
mod cli;
mod discovery;
mod export;
mod failover;
mod http2;
mod identity;
mod observe;
mod panic;
mod ports;
mod prometheus;
mod reload;
mod supervisor;
mod systemd;
mod tls;
mod trailers;
mod upgrade;
mod verify;

use std::path::Path;

pub fn drove() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_drove"))
}

/// Runs `cmd` and asserts that it succeeded (showing its stderr if not).
pub fn output_ok(cmd: &mut std::process::Command) -> std::process::Output {
    let out = cmd.output().expect("run the command");
    assert!(
        out.status.success(),
        "{:?}: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Now, in unix milliseconds (the unit of `last_exit.at_ms` and `retry_at_ms`).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A `[balancer]` over static backends, with extra balancer keys.
pub fn static_config(backends: &[std::net::SocketAddr], extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[balancer]\nlisten = \"127.0.0.1:0\"\nworkers = 1\nbackends = [{}]\ninstance_header = \"X-Drove-Instance\"\n{extra}\n",
        list.join(", ")
    )
}
