//! The `payment-service` binary: the same as `ticketing payment`.

fn main() -> std::process::ExitCode {
    ticketing::main_with_subcommand("payment")
}
