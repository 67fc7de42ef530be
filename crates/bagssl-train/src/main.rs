//! `bagssl-train`: the command line of bagssl. Train, evaluate, embed, benchmark, plot and analyze.

use clap::Parser;

// Keeps freed step buffers for reuse: glibc returns large blocks to the OS on every free, and
// page-faulting them back in each step costs more than some of the kernels that fill them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod analysis_plot;
mod cli;
mod commands;
mod config;
mod plot;
mod setup;
mod tensorboard;

fn main() {
    let cli = cli::Cli::parse();
    // The command runs on a worker of the rayon pool, so every parallel op forks from inside the
    // pool instead of parking this thread and waking it again for each one: ~60 wake-ups a CPU
    // training step, 0.8 ms of an 11 ms step on the 2-core machines. Workers get main's 8 MiB
    // stack (an already-built global pool, e.g. in tests, is kept as it is).
    let _ = rayon::ThreadPoolBuilder::new().stack_size(8 << 20).build_global();
    let result = rayon::scope(|_| match cli.command {
        None => commands::train::run(cli::TrainArgs::default()),
        Some(cli::Command::Train(a)) => commands::train::run(a),
        Some(cli::Command::Eval(a)) => commands::eval::run(a),
        Some(cli::Command::Embed(a)) => commands::embed::run(a),
        Some(cli::Command::Bench(a)) => commands::bench::run(a),
        Some(cli::Command::Plot(a)) => commands::plot::run(a),
        Some(cli::Command::Analyze(a)) => commands::analyze::run(a),
    });
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
