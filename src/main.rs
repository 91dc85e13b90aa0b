//! `sandgate`: argv → [`sandgate::cli::Cli`] → [`sandgate::cli::main`]; nothing else.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: the proxy makes many small short-lived allocations per request, which its
/// per-thread free lists serve faster than glibc's malloc (measured in loadtest/RESULTS.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    sandgate::cli::main(sandgate::cli::Cli::parse())
}
