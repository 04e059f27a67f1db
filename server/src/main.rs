use clap::Parser;
use flint_server::cli::{self, Cli, Command};

fn main() -> std::process::ExitCode {
    // Parse first so `--log-format` can choose the format; clap's own errors and `--help`
    // print directly and need no subscriber.
    let cli = Cli::parse();
    flint_server::logs::init(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => cli::serve::main(args),
        Command::Run(args) => cli::run::main(args),
        Command::Convert(args) => cli::convert::main(args),
        Command::Quantize(args) => cli::quantize::main(args),
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
