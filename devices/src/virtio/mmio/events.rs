//! The transport on the event loop: queue notifications (ioeventfds) and the device's own
//! host-side sources.

use std::sync::{Arc, Mutex, MutexGuard};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::MmioTransport;
use crate::virtio::HOST_EVENT_BASE;

/// Delivers a transport's events on the VMM thread.
pub struct VirtioSubscriber {
    transport: Arc<Mutex<MmioTransport>>,
}

impl VirtioSubscriber {
    /// A subscriber for `transport`, which vCPU threads reach through the MMIO bus.
    pub fn new(transport: Arc<Mutex<MmioTransport>>) -> Self {
        VirtioSubscriber { transport }
    }

    fn lock(&self) -> MutexGuard<'_, MmioTransport> {
        self.transport
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl MutEventSubscriber for VirtioSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        let mut transport = self.lock();
        let watch_queues = !transport.device().handles_queue_notifications();
        for (index, evt) in transport.queue_evts().iter().enumerate() {
            if !watch_queues {
                break;
            }
            if let Err(e) = ops.add(Events::with_data(evt, index as u32, EventSet::IN)) {
                tracing::error!(?e, index, "cannot watch a queue notification");
            }
        }
        transport.device_mut().init_host_events(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut transport = self.lock();
        let token = events.data();
        if token >= HOST_EVENT_BASE {
            transport.device_mut().host_event(events, ops);
            return;
        }
        let index = token as usize;
        if let Some(evt) = transport.queue_evts().get(index) {
            // Several notifications may have been coalesced; one pass serves them all.
            let _ = evt.read();
        }
        if transport.is_active() {
            transport.device_mut().queue_notify(index);
        } else {
            tracing::debug!(index, "queue notification before DRIVER_OK ignored");
        }
    }
}
