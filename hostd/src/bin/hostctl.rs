//! `hostctl`: the command-line client of hostd (docs/CLI.md).

fn main() -> std::process::ExitCode {
    hostd::cli::main()
}
