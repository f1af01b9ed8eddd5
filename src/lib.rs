//! The `ticketing` command: runs the gateway and both services (together in
//! `dev`, or one per process), mints dev tokens, migrates, checks and
//! load-tests. Each component is started through its own `*App::build`, so
//! tests start exactly what production starts.
//!
//! | path | what it holds |
//! |---|---|
//! | `cli.rs` | the clap types: every subcommand and setting |
//! | `commands/` | what each subcommand does, one module per command |
//! | `system.rs` | the three components in one process (`dev`, bench, tests) and the broker choice |
//! | `audit.rs` | the invariants `ticketing check` verifies, folded from the event stores |
//! | `bench/` | the load generator, its pgbench baseline and the report |
//! | `ports.rs` | ports for the processes the bench and the fault tests start |
//! | `private_postgres.rs` | `dev`'s own PostgreSQL cluster when none is running |

pub mod audit;
pub mod bench;
pub mod cli;
pub mod commands;
pub mod ports;
pub mod private_postgres;
pub mod system;

pub use cli::{BenchArgs, BookingArgs, Cli, Command, DevArgs, PaymentArgs, RedriveArgs, StoresArgs, TokenArgs};
pub use commands::{main_with, main_with_subcommand, run};
pub use system::{dev_secret_path, start_system, DevSystem};

/// With `--features mimalloc`, mimalloc instead of the system allocator for
/// every binary: 12-22 % more bookings per second in the bench (glibc
/// malloc/free is the largest item of our process's CPU profile), at the
/// price of a larger resident set (booking-service peak 43 -> 70 MiB), so
/// it is off by default (docs/PERFORMANCE.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
