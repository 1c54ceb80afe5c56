//! Scratch binary for trying `drove bench` before the root crate wires it:
//! `cargo run --release -p drove-bench --example bench -- http://127.0.0.1:8080/ -c 64 -d 5s`.
//! It compiles the root crate's `src/bench_cmd.rs` as is.

#[path = "../../../src/bench_cmd.rs"]
mod bench_cmd;

#[derive(clap::Parser)]
#[command(name = "drove-bench")]
struct Cli {
    #[command(flatten)]
    args: bench_cmd::BenchArgs,
}

fn main() {
    let cli = <Cli as clap::Parser>::parse();
    let code = bench_cmd::run(cli.args).unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        1
    });
    std::process::exit(code);
}
