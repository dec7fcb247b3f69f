//! Polling for a device with a timeout.

use core::fmt;

use crate::rt::deadline::Deadline;
use crate::scenarios;

/// Polls `done` until it returns true. If it has not after `timeout_ms`, the run ends at once
/// with `FAIL <scenario>: timed out ...` and this never returns: the device still owns the
/// buffers of the request being waited for (often on the caller's stack), so returning, or
/// dropping the driver (whose queue teardown waits for the device), would not be sound or could
/// hang.
pub fn wait(timeout_ms: u64, what: fmt::Arguments, mut done: impl FnMut() -> bool) {
    let deadline = Deadline::after_ms(timeout_ms);
    while !done() {
        if deadline.expired() {
            scenarios::fail_now(format_args!(
                "timed out after {timeout_ms} ms waiting for {what}"
            ));
        }
        core::hint::spin_loop();
    }
}
