//! The virtio-net device: features, config space, activation and reset, and its place on
//! the event loop.

use std::sync::Arc;

use event_manager::{EventOps, Events};
use libc::c_uint;
use memory::GuestMemoryMmap;
use virtio_bindings::virtio_net::*;
use virtio_queue::Queue;
use vmm_sys_util::epoll::EventSet;

use super::rx::RxBuffers;
use super::{
    LogLimit, MacAddr, NetConfig, NetError, NetMetrics, Tap, QUEUE_SIZE, RX_QUEUE, TX_QUEUE,
};
use crate::rate_limiter::{RateLimitConfig, RateLimiter};
use crate::virtio::{
    features, ids, ActivateError, DeviceEnv, Interrupt, QueueKicks, VirtioDevice, HOST_EVENT_BASE,
};

/// The event-loop token of the TAP.
const TAP_EVENT: u32 = HOST_EVENT_BASE;
/// Length of the config space petrel fills: `mac`, `status`, `max_virtqueue_pairs`.
const CONFIG_LEN: usize = 10;

/// A virtio-net device on a TAP.
pub struct Net {
    /// The configuration, with the MAC address actually used.
    pub(super) config: NetConfig,
    pub(super) mac: MacAddr,
    pub(super) tap: Tap,
    pub(super) avail_features: u64,
    pub(super) active: Option<Active>,
    pub(super) rx: RxBuffers,
    pub(super) metrics: NetMetrics,
    pub(super) log: LogLimit,
    /// Limits frames to the guest and from the guest.
    pub(super) rx_limiter: RateLimiter,
    pub(super) tx_limiter: RateLimiter,
}

/// The event-loop tokens of the rate limiters' timers.
const RX_LIMITER_EVENT: u32 = HOST_EVENT_BASE + 1;
const TX_LIMITER_EVENT: u32 = HOST_EVENT_BASE + 2;

/// The two limiters of a configuration.
fn limiters(config: &NetConfig) -> Result<(RateLimiter, RateLimiter), NetError> {
    let make = |c: Option<RateLimitConfig>| {
        RateLimiter::new(c.unwrap_or_default()).map_err(|source| NetError::RateLimiter {
            id: config.id.clone(),
            source,
        })
    };
    Ok((make(config.rx_rate_limiter)?, make(config.tx_rate_limiter)?))
}

/// What an activated device works with.
pub(super) struct Active {
    pub(super) mem: GuestMemoryMmap,
    pub(super) interrupt: Arc<Interrupt>,
    pub(super) acked_features: u64,
    pub(super) rx_queue: Queue,
    pub(super) tx_queue: Queue,
    /// Reschedules a queue whose pass ran out of budget.
    pub(super) kicks: QueueKicks,
}

const fn bit(feature: u32) -> u64 {
    1 << feature
}

/// The features offered on a TAP that accepted the `TUN_F_*` offloads in `offloads`.
pub(super) fn features_for(offloads: c_uint) -> u64 {
    // The kernel completes partial checksums of frames written to a TAP with a virtio-net
    // header, so VIRTIO_NET_F_CSUM needs nothing from the TAP.
    let mut features = features::COMMON
        | bit(VIRTIO_NET_F_MAC)
        | bit(VIRTIO_NET_F_STATUS)
        | bit(VIRTIO_NET_F_MRG_RXBUF)
        | bit(VIRTIO_NET_F_CSUM);
    if offloads & libc::TUN_F_CSUM == 0 {
        return features;
    }
    features |= bit(VIRTIO_NET_F_GUEST_CSUM);
    let pairs = [
        (
            libc::TUN_F_TSO4,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_HOST_TSO4,
        ),
        (
            libc::TUN_F_TSO6,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_HOST_TSO6,
        ),
        (
            libc::TUN_F_UFO,
            VIRTIO_NET_F_GUEST_UFO,
            VIRTIO_NET_F_HOST_UFO,
        ),
    ];
    for (offload, guest, host) in pairs {
        if offloads & offload != 0 {
            features |= bit(guest) | bit(host);
        }
    }
    features
}

/// The `TUN_F_*` offloads for a driver that accepted `acked`: what the guest can take in, the
/// kernel may leave undone.
pub(super) fn offloads_for(acked: u64) -> c_uint {
    // Every offload needs checksum offload, in virtio (feature dependencies) and in the TAP.
    if acked & bit(VIRTIO_NET_F_GUEST_CSUM) == 0 {
        return 0;
    }
    let mut offloads = libc::TUN_F_CSUM;
    let pairs = [
        (VIRTIO_NET_F_GUEST_TSO4, libc::TUN_F_TSO4),
        (VIRTIO_NET_F_GUEST_TSO6, libc::TUN_F_TSO6),
        (VIRTIO_NET_F_GUEST_UFO, libc::TUN_F_UFO),
    ];
    for (feature, offload) in pairs {
        if acked & bit(feature) != 0 {
            offloads |= offload;
        }
    }
    offloads
}

pub(super) use crate::virtio::queue::signal_used;

impl Net {
    /// A device for `config`: attaches to (or creates) its TAP. Without a configured MAC
    /// address it makes up a locally administered one, which [`Net::config`] and
    /// [`Net::save`] then report.
    pub fn new(config: NetConfig) -> Result<Self, NetError> {
        let mac = match config.mac {
            Some(mac) => mac,
            None => MacAddr::random().map_err(|source| NetError::Random {
                id: config.id.clone(),
                source,
            })?,
        };
        let tap = Tap::open(&config.tap).map_err(|source| NetError::Tap {
            id: config.id.clone(),
            source,
        })?;
        let (rx_limiter, tx_limiter) = limiters(&config)?;
        let avail_features = features_for(tap.supported_offloads());
        tracing::info!(
            id = %config.id,
            tap = %config.tap,
            %mac,
            offloads = tap.supported_offloads(),
            "virtio-net on TAP"
        );
        Ok(Net {
            config: NetConfig {
                mac: Some(mac),
                ..config
            },
            mac,
            tap,
            avail_features,
            active: None,
            rx: RxBuffers::new(),
            metrics: NetMetrics::default(),
            log: LogLimit::default(),
            rx_limiter,
            tx_limiter,
        })
    }

    /// The configuration, with the MAC address in use.
    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// The device's counters.
    pub fn metrics(&self) -> NetMetrics {
        self.metrics
    }

    /// The receive and transmit rate limiters.
    pub fn rate_limiters(&self) -> (&RateLimiter, &RateLimiter) {
        (&self.rx_limiter, &self.tx_limiter)
    }

    /// Replaces the rate limits while the device runs.
    pub fn update_rate_limiters(&mut self, rx: RateLimitConfig, tx: RateLimitConfig) {
        self.rx_limiter.update(rx);
        self.tx_limiter.update(tx);
        self.config.rx_rate_limiter = rx.is_limited().then_some(rx);
        self.config.tx_rate_limiter = tx.is_limited().then_some(tx);
    }

    /// A limiter's timer fired: carry on with what it held back.
    pub fn process_limiter_event(&mut self, token: u32) {
        let (limiter, direction) = if token == RX_LIMITER_EVENT {
            (&mut self.rx_limiter, RX_QUEUE)
        } else {
            (&mut self.tx_limiter, TX_QUEUE)
        };
        if let Err(e) = limiter.event_handler() {
            tracing::debug!(%e, id = %self.config.id, "rate limiter event");
        }
        if direction == RX_QUEUE {
            self.process_rx();
        } else {
            self.process_tx();
        }
    }

    /// The TAP the device uses.
    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    fn config_space(&self) -> [u8; CONFIG_LEN] {
        let mut space = [0; CONFIG_LEN];
        space[..6].copy_from_slice(&self.mac.bytes());
        space[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        space[8..10].copy_from_slice(&1u16.to_le_bytes());
        space
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        ids::NET
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let space = self.config_space();
        let Some(rest) = usize::try_from(offset).ok().and_then(|o| space.get(o..)) else {
            return;
        };
        let n = rest.len().min(data.len());
        data[..n].copy_from_slice(&rest[..n]);
    }

    fn activate(&mut self, queues: Vec<Queue>, env: DeviceEnv) -> Result<(), ActivateError> {
        let got = queues.len();
        let Ok([rx_queue, tx_queue]) = <[Queue; 2]>::try_from(queues) else {
            return Err(ActivateError::QueueCount { expected: 2, got });
        };
        let offloads = offloads_for(env.acked_features);
        self.tap.set_offload(offloads).map_err(|e| {
            ActivateError::Backend(format!(
                "net device {:?}: TAP {:?}: cannot set offloads {offloads:#x}: {e}",
                self.config.id, self.config.tap
            ))
        })?;
        tracing::debug!(
            id = %self.config.id,
            acked = env.acked_features,
            offloads,
            "virtio-net activated",
        );
        self.active = Some(Active {
            mem: env.mem,
            interrupt: env.interrupt,
            acked_features: env.acked_features,
            kicks: env.kicks,
            rx_queue,
            tx_queue,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.rx.drop_pending();
        // The next driver may not take partial checksums or large frames.
        if let Err(e) = self.tap.set_offload(0) {
            tracing::warn!(
                id = %self.config.id,
                tap = %self.config.tap,
                %e,
                "cannot clear TAP offloads",
            );
        }
    }

    fn metrics(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self.metrics).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            for (name, limiter) in [
                ("rx_rate_limiter", &self.rx_limiter),
                ("tx_rate_limiter", &self.tx_limiter),
            ] {
                if let Ok(m) = serde_json::to_value(limiter.metrics()) {
                    map.insert(name.into(), m);
                }
            }
        }
        value
    }

    fn queues(&self) -> Vec<&Queue> {
        match &self.active {
            Some(active) => vec![&active.rx_queue, &active.tx_queue],
            None => Vec::new(),
        }
    }

    fn queue_notify(&mut self, index: usize) {
        match index {
            RX_QUEUE => self.process_rx(),
            TX_QUEUE => self.process_tx(),
            _ => tracing::debug!(
                id = %self.config.id,
                index,
                "notification for a queue virtio-net does not have"
            ),
        }
    }

    fn init_host_events(&mut self, ops: &mut EventOps) {
        for (limiter, token) in [
            (&self.rx_limiter, RX_LIMITER_EVENT),
            (&self.tx_limiter, TX_LIMITER_EVENT),
        ] {
            if let Err(e) = ops.add(Events::with_data(limiter, token, EventSet::IN)) {
                tracing::error!(id = %self.config.id, ?e, "cannot watch a rate limiter");
            }
        }
        // Edge-triggered: the device stops reading while the guest has no receive buffers, and
        // a level-triggered TAP would wake the loop again and again meanwhile. Every pass reads
        // until EAGAIN or until buffers run out, and the driver's next receive notification
        // resumes reading, so no wakeup is lost.
        let events = Events::with_data(
            &self.tap,
            TAP_EVENT,
            EventSet::IN | EventSet::EDGE_TRIGGERED,
        );
        if let Err(e) = ops.add(events) {
            tracing::error!(
                id = %self.config.id,
                tap = %self.config.tap,
                ?e,
                "cannot watch the TAP",
            );
        }
    }

    fn host_event(&mut self, events: Events, _ops: &mut EventOps) {
        if matches!(events.data(), RX_LIMITER_EVENT | TX_LIMITER_EVENT) {
            self.process_limiter_event(events.data());
            return;
        }
        if events.data() != TAP_EVENT {
            tracing::debug!(id = %self.config.id, token = events.data(), "unknown host event");
            return;
        }
        if events
            .event_set()
            .intersects(EventSet::ERROR | EventSet::HANG_UP)
        {
            if let Some(suppressed) = self.log.allow() {
                tracing::warn!(
                    id = %self.config.id,
                    tap = %self.config.tap,
                    events = ?events.event_set(),
                    suppressed,
                    "TAP reports an error",
                );
            }
        }
        self.process_rx();
    }
}
