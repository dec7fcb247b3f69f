//! The REST control API over a Unix socket: request and response types, the OpenAPI
//! document, and the client the CLI uses. The VMM implements a handler trait.
//!
//! Nothing lives here yet; issue 4 builds it.
