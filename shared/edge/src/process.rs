//! Running a binary's main future: one async runtime, and an error printed
//! once on stderr, whatever the log's level and format.

use std::{future::Future, process::ExitCode};

/// Runs `main` on a fresh multi-threaded runtime; its error becomes one
/// line on stderr and a failing exit code.
pub fn run_main(main: impl Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

/// `error` and its causes joined with ": ", each said once: many errors
/// already include their cause in their own message, and printing the
/// chain as it is would repeat it ("…: Connection refused: Connection
/// refused").
pub fn error_chain(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if message.is_empty() || text.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("connecting to the PostgreSQL server: {0}")]
    struct Connecting(#[source] std::io::Error);

    #[test]
    fn an_error_chain_says_each_cause_once() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused (os error 111)");
        let error = anyhow::Error::new(Connecting(refused)).context("preparing the booking database");
        assert_eq!(
            error_chain(&error),
            "preparing the booking database: connecting to the PostgreSQL server: Connection refused (os error 111)"
        );
        let plain = anyhow::anyhow!("no cause");
        assert_eq!(error_chain(&plain), "no cause");
    }
}
