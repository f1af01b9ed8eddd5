//! The `booking-service` binary: the same as `ticketing booking`.

fn main() -> std::process::ExitCode {
    ticketing::main_with_subcommand("booking")
}
