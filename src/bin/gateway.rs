//! The `gateway` binary: the same as `ticketing gateway`.

fn main() -> std::process::ExitCode {
    ticketing::main_with_subcommand("gateway")
}
