//! The `gateway` binary of decisions.md: the same as `ticketing gateway`.

fn main() -> std::process::ExitCode {
    ticketing::main_with_subcommand("gateway")
}
