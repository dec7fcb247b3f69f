//! Saving and restoring a network device.
//!
//! The transport saves the queues and the negotiated features; the device saves its
//! configuration (with the MAC address in use, so a generated one survives) and the features
//! it offered. A frame waiting in the device for receive buffers is not saved: it is lost, as
//! a frame on a wire may be. Counters start again from zero.

use serde::{Deserialize, Serialize};

use super::{Net, NetConfig, NetError};
use crate::rate_limiter::{RateLimiter, RateLimiterState};

/// A network device's saved state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetState {
    /// The configuration, with `mac` always set.
    pub config: NetConfig,
    /// The virtio-net features the device offered; the restored device offers the same.
    pub avail_features: u64,
    /// The rate limiters' budgets (so a one-time burst is not granted again).
    pub rx_rate_limiter: RateLimiterState,
    pub tx_rate_limiter: RateLimiterState,
}

impl Net {
    /// The device's state. The device must be quiescent (the VMM thread is the only one
    /// touching it, vCPUs paused).
    pub fn save(&self) -> NetState {
        NetState {
            config: self.config.clone(),
            avail_features: self.avail_features,
            rx_rate_limiter: self.rx_limiter.save(),
            tx_rate_limiter: self.tx_limiter.save(),
        }
    }

    /// A device as `state` describes it: reopens the TAP. The transport activates it again
    /// with the restored queues.
    pub fn restore(state: &NetState) -> Result<Self, NetError> {
        let mut net = Net::new(state.config.clone())?;
        let missing = state.avail_features & !net.avail_features;
        if missing != 0 {
            return Err(NetError::RestoreFeatures {
                id: state.config.id.clone(),
                tap: state.config.tap.clone(),
                missing,
            });
        }
        net.avail_features = state.avail_features;
        let restore = |s: &RateLimiterState| {
            RateLimiter::restore(s).map_err(|source| NetError::RateLimiter {
                id: state.config.id.clone(),
                source,
            })
        };
        net.rx_limiter = restore(&state.rx_rate_limiter)?;
        net.tx_limiter = restore(&state.tx_rate_limiter)?;
        Ok(net)
    }
}
