//! Ctrl-C: a flag that every wait loop checks, so that an interrupted run still tears its
//! namespaces and processes down (the topology's `Drop` does it while the error unwinds).
//!
//! The handler is tokio's (a current-thread runtime on a thread of its own) because the
//! workspace denies unsafe code and installing a signal handler by hand is unsafe.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Result};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs the SIGINT handler; later Ctrl-Cs only set the flag again.
pub fn install() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    // Registered here, before returning, so that no Ctrl-C can slip in with the default
    // disposition (which would kill xtask and leave the namespaces behind).
    let mut sigint = {
        let _context = runtime.enter();
        signal(SignalKind::interrupt())?
    };
    std::thread::Builder::new()
        .name("ctrl-c".into())
        .spawn(move || {
            runtime.block_on(async {
                while sigint.recv().await.is_some() {
                    if INTERRUPTED.swap(true, Ordering::SeqCst) {
                        eprintln!("xtask: Ctrl-C again; still tearing down");
                    } else {
                        eprintln!("xtask: interrupted; tearing down");
                    }
                }
            })
        })?;
    Ok(())
}

/// True once Ctrl-C was pressed.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails once Ctrl-C was pressed.
pub fn check() -> Result<()> {
    if interrupted() {
        bail!("interrupted by Ctrl-C");
    }
    Ok(())
}
