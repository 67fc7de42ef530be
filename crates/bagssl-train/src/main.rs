//! `bagssl-train`: the command line of bagssl. Train, evaluate, embed and benchmark.

use clap::Parser;

// Keeps freed step buffers for reuse: glibc returns large blocks to the OS on every free, and
// page-faulting them back in each step costs more than some of the kernels that fill them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;
mod commands;
mod config;
mod setup;

fn main() {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        None => commands::train::run(cli::TrainArgs::default()),
        Some(cli::Command::Train(a)) => commands::train::run(a),
        Some(cli::Command::Eval(a)) => commands::eval::run(a),
        Some(cli::Command::Embed(a)) => commands::embed::run(a),
        Some(cli::Command::Bench(a)) => commands::bench::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
