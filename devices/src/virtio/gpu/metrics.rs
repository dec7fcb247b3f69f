//! The GPU's counters.

use serde::Serialize;

/// Counters of one GPU, exposed through the metrics endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GpuMetrics {
    /// Control-queue commands handled.
    pub commands: u64,
    /// Cursor-queue commands handled.
    pub cursor_commands: u64,
    /// Commands answered with an error response.
    pub errors: u64,
    /// Chains refused as malformed (outside guest memory, too long, misordered) or whose
    /// response did not fit.
    pub malformed: u64,
    /// RESOURCE_FLUSH commands carried out.
    pub flushes: u64,
    /// Bytes copied from guest memory by TRANSFER_TO_HOST_2D.
    pub transfer_bytes: u64,
    /// Host memory the resources' pixels take now.
    pub resource_bytes: u64,
    /// Resources that exist now.
    pub resources: u64,
}
