//! The shutdown signal every service's `main` hands to its `run`.

use tracing::{error, info};

/// Completes on Ctrl-C or SIGTERM, whichever comes first.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            error!(cause = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(err) => {
                error!(cause = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        () = ctrl_c => info!("Ctrl-C received; shutting down"),
        () = terminate => info!("SIGTERM received; shutting down"),
    }
}

/// A token cancelled once `shutdown` completes, for start-up steps that wait for a
/// dependency (the broker) and must give up waiting when asked to stop.
pub fn cancelled_by(
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio_util::sync::CancellationToken {
    let stop = tokio_util::sync::CancellationToken::new();
    let cancel = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        cancel.cancel();
    });
    stop
}

/// Runs the blocking `work` on a thread of its own until it returns, or until `shutdown`
/// completes: then `work`'s token is cancelled and its own orderly end awaited (it finishes
/// the open batch and commits). Dropping the returned future cancels the token as well, so
/// no loop outlives the runtime that started it.
pub async fn run_blocking_until<F>(
    shutdown: impl std::future::Future<Output = ()>,
    work: F,
) -> anyhow::Result<()>
where
    F: FnOnce(tokio_util::sync::CancellationToken) -> anyhow::Result<()> + Send + 'static,
{
    use anyhow::Context;
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop_on_drop = stop.clone().drop_guard();
    let worker_stop = stop.clone();
    let mut worker = tokio::task::spawn_blocking(move || work(worker_stop));
    tokio::select! {
        result = &mut worker => return result.context("the worker thread panicked")?,
        () = shutdown => {
            info!("finishing the open batch");
            stop.cancel();
        }
    }
    worker.await.context("the worker thread panicked")?
}
