//! Live migration wire protocol: framed, checksummed messages over a Unix or TCP stream.
//!
//! A migration runs, source → destination unless noted:
//! 1. `Hello { version, compat }`; the destination checks [`Compat::check`] and answers
//!    `HelloAck` or `Refuse { reason }` (destination → source). No memory moves before.
//! 2. `Config { json }`.
//! 3. Rounds: `Pages` frames (see [`Connection::send_pages`]) then `RoundEnd { round, pages }`,
//!    which the destination echoes once the round is in RAM. On one host the source may
//!    instead hand its memory over: `MemoryFd { size }` with the descriptor (no rounds).
//! 4. With the vCPUs paused: the last `Pages` and `RoundEnd`, then `State { json }`.
//! 5. `Running` (destination → source): the source may exit.
//!
//! Either side may send `Abort { reason }` at any point. Frame layout: see [`frame`].

pub mod compat;
pub mod error;
pub mod frame;
pub mod message;
pub mod pages;
pub mod ram;
pub mod receive;
pub mod transport;
pub mod url;

pub use compat::Compat;
pub use error::MigrationError;
pub use message::{Message, PageRecord, PAGE_SIZE};
pub use pages::{apply_pages, PagesSent};
pub use ram::RamView;
pub use receive::Incoming;
pub use transport::{Connection, Listener};
pub use url::{MigrationUrl, UrlError};

/// Version of the wire protocol; a `Hello` of another version is refused.
pub const PROTOCOL_VERSION: u32 = 1;
