//! Live migration: the versioned wire protocol, the pre-copy sender and the receiver.
//!
//! Nothing lives here yet; issue 7 builds it on the `State`s that snapshots use.
