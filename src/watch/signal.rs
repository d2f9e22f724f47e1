//! Ctrl-C (and SIGTERM) for watch mode: the first one asks the loop to stop after
//! cancelling the running stage; a second one exits at once.

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::low_level;
use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs the handler and returns the flag it sets.
pub fn install() -> &'static AtomicBool {
    for signal in [SIGINT, SIGTERM] {
        // SAFETY: only async-signal-safe work: an atomic swap and _exit. Registering fails
        // only for signals that cannot be handled, which these are not.
        let _ = unsafe {
            low_level::register(signal, || {
                if INTERRUPTED.swap(true, Ordering::SeqCst) {
                    low_level::exit(130);
                }
            })
        };
    }
    &INTERRUPTED
}
