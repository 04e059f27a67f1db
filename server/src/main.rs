use clap::Parser;
use flint_server::cli::{self, Cli, Command};

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLINT_LOG").unwrap_or_else(|_| "warn,flint_engine=info,flint_server=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => cli::serve::main(args),
        Command::Run(args) => cli::run::main(args),
        Command::Convert(args) => cli::convert::main(args),
        Command::Bench(args) => cli::bench::main(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
