//! Graceful shutdown: one [`CancellationToken`] per process, cancelled on
//! SIGTERM or Ctrl-C. Every long-running task selects on it, finishes the
//! unit of work in hand (a batch, a record), then returns.

use tokio_util::sync::CancellationToken;

pub use tokio_util::sync::CancellationToken as Shutdown;

/// Returns a token that is cancelled when the process receives SIGTERM or
/// SIGINT. From then on the process exits within `bound` even if some task
/// does not stop.
pub fn on_signal(bound: std::time::Duration) -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received: readiness fails now, then draining");
        trigger.cancel();
        std::thread::spawn(move || {
            std::thread::sleep(bound);
            eprintln!("shutdown did not finish within {bound:?}; exiting");
            std::process::exit(1);
        });
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the process");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Sleeps for `duration` unless `shutdown` fires first; returns false if it did.
pub async fn sleep_or_shutdown(duration: std::time::Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(duration) => true,
        () = shutdown.cancelled() => false,
    }
}
