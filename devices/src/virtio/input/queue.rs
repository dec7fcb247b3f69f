//! The events waiting for the driver's buffers: a bounded queue that takes or drops whole
//! groups, so what reaches the guest is always complete groups, in order.

use std::collections::VecDeque;

use super::VirtioInputEvent;

/// Pending events, at most `capacity`, always whole groups.
#[derive(Debug, Clone)]
pub struct PendingEvents {
    events: VecDeque<VirtioInputEvent>,
    capacity: usize,
}

impl PendingEvents {
    /// An empty queue that holds up to `capacity` events.
    pub fn new(capacity: usize) -> Self {
        PendingEvents {
            events: VecDeque::new(),
            capacity,
        }
    }

    /// Appends `group` if all of it fits; returns whether it did. A group that does not fit
    /// is not queued at all.
    pub fn push_group(&mut self, group: &[VirtioInputEvent]) -> bool {
        if group.len() > self.capacity.saturating_sub(self.events.len()) {
            return false;
        }
        self.events.extend(group.iter().copied());
        true
    }

    /// The oldest event, without taking it.
    pub fn front(&self) -> Option<VirtioInputEvent> {
        self.events.front().copied()
    }

    /// Takes the oldest event.
    pub fn pop(&mut self) -> Option<VirtioInputEvent> {
        self.events.pop_front()
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The pending events, oldest first.
    pub fn to_vec(&self) -> Vec<VirtioInputEvent> {
        self.events.iter().copied().collect()
    }
}
