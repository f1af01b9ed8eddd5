//! Fault injection with real processes, the way production breaks: every
//! test runs its own tansu broker process (so it can hang it with SIGSTOP
//! without disturbing other tests), the components as separate `ticketing`
//! processes started with the settings a user would use (no static group
//! membership), and purchases that retry like real clients. After each
//! fault it requires two things: nothing is lost (every acknowledged
//! purchase reaches its final state, `ticketing check` is clean) and new
//! work still completes.
//!
//! The heavy tests run one at a time (`SERIAL`): their recovery deadlines
//! are about the system, not about two cores shared by six deployments.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod broker;
mod database;
mod dev;
mod feed;
mod processes;
mod support;
mod waiting_room;

use support::*;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{json, Value};
use testkit::eventually;
use testkit::server_url;
use testkit::unique_name;
use testkit::TestKafka;
