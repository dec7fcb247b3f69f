//! Saving and restoring a disk. The queue and the transport's registers are saved by
//! [`crate::virtio::mmio::MmioTransport::save`]; the disk saves what it was built from
//! (after a backing-file swap, the new image's path) and its config generation.

use serde::{Deserialize, Serialize};

use super::{Block, BlockConfig, BlockError};
use crate::rate_limiter::{RateLimiter, RateLimiterState};

/// A disk's saved state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockState {
    pub config: BlockConfig,
    /// The size the guest saw, in sectors; restore refuses an image of another size.
    pub capacity: u64,
    /// The rate limiter's budgets.
    pub rate_limiter: RateLimiterState,
    /// The config generation the driver saw (bumped by backing-file swaps); a driver that
    /// read it before the save compares it after the restore. Zero in older snapshots.
    #[serde(default)]
    pub config_generation: u32,
}

impl Block {
    /// The disk's state. Requests in flight are finished and put on the used ring first,
    /// so nothing is hidden inside the device; call this before the transport's `save` so
    /// the saved queue includes them. The vCPUs must be paused.
    pub fn save(&mut self) -> BlockState {
        self.finish_in_flight();
        BlockState {
            config: self.config().clone(),
            capacity: self.capacity(),
            rate_limiter: self.rate_limiter().save(),
            config_generation: self.generation,
        }
    }

    /// Reopens (and relocks) the disk of `state`. If the device was active, the transport
    /// then activates it with the restored queues and notifies it, which serves whatever
    /// the driver made available before the save.
    pub fn restore(state: &BlockState) -> Result<Self, BlockError> {
        let limiter = RateLimiter::restore(&state.rate_limiter).map_err(|source| {
            BlockError::RateLimiter {
                id: state.config.id.clone(),
                source,
            }
        })?;
        let mut block = Block::with_limiter(state.config.clone(), limiter)?;
        if block.capacity() != state.capacity {
            return Err(BlockError::CapacityChanged {
                path: state.config.path.clone(),
                saved: state.capacity,
                now: block.capacity(),
            });
        }
        block.generation = state.config_generation;
        Ok(block)
    }
}
