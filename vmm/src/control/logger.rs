//! `PUT /logger`: the API's body as a change to the process's logging.

use api::types::Logger;
use api::ApiResponse;

use crate::logging::{LogConfig, LogError, LogHandle, LogLevel};

/// Applies `logger`; a field that cannot be used changes nothing.
pub fn configure(log: &LogHandle, logger: Logger) -> Result<(), ApiResponse> {
    let level = logger
        .level
        .as_deref()
        .map(|l| {
            l.parse::<LogLevel>()
                .map_err(|e| ApiResponse::bad_request(format!("level: {e}")))
        })
        .transpose()?;
    let config = LogConfig {
        log_path: logger.log_path.map(Into::into),
        level,
        show_level: logger.show_level,
        show_log_origin: logger.show_log_origin,
        module: logger.module,
    };
    log.configure(&config).map_err(|e| match e {
        LogError::Reload(_) => ApiResponse::error(500, e.to_string()),
        _ => ApiResponse::bad_request(e.to_string()),
    })
}
