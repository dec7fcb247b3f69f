//! The REST control API over a Unix socket, in Firecracker's layout.
//!
//! The API thread ([`server`]) parses HTTP with hyper, routes and validates each request
//! ([`router`]) into an [`ApiRequest`] and carries it to the VMM thread over a channel plus an
//! `EventFd`; the VMM thread answers with an [`ApiResponse`]. [`types`] holds the JSON bodies,
//! [`openapi`] the OpenAPI document, and [`client`] the blocking client the CLI uses.

pub mod client;
pub mod image;
pub mod input;
pub mod openapi;
pub mod request;
pub mod router;
pub mod server;
mod service;
mod socket;
pub mod types;
pub mod web;

#[cfg(test)]
mod tests;

pub use client::BinaryResponse;
pub use client::{Client, ClientError};
pub use request::{ApiRequest, ApiResponse};
pub use server::{ApiServer, RequestSender, ServerError};
pub use web::{WebError, WebListener};
