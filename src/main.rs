//! Binary edge: parse the command line, set up logging, run, map the
//! outcome to an exit code (0 ok, 2 configuration error, 3 fenced by a newer
//! exactly-once producer, 1 other failure)
//! and print failures as one line.

use std::process::ExitCode;

use clap::Parser;
use outbox_relay::cli::{self, Cli, LogFormat};
use outbox_relay::error::RelayError;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("outbox-relay: error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::execute(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let line = e.to_string().replace('\n', " ");
            eprintln!("outbox-relay: error: {line}");
            ExitCode::from(exit_code(&e))
        }
    }
}

fn exit_code(e: &RelayError) -> u8 {
    match e {
        RelayError::Config(_) => 2,
        RelayError::ProducerFenced(_) => 3,
        _ => 1,
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("OUTBOX_RELAY_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
