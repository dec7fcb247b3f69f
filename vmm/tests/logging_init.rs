//! `logging::init` installs the process-wide subscriber, which can happen once per process:
//! this file holds a single test.

use std::fs;

use vmm::logging::{self, LogConfig, LogLevel};

#[test]
fn init_honours_petrel_log_until_a_level_is_set_and_log_records_follow_the_level() {
    // Arrange: before any other thread could read the environment. `other` gets errors only;
    // the default filter would let its warnings through.
    std::env::set_var(logging::ENV_VAR, "error,logging_init=warn");
    let log = logging::init();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("petrel.log");

    // Only the path: the PETREL_LOG filter stays.
    log.configure(&LogConfig {
        log_path: Some(path.clone()),
        ..LogConfig::default()
    })
    .unwrap();
    tracing::warn!("own warning under PETREL_LOG");
    tracing::warn!(target: "other", "other warning under PETREL_LOG");
    log::info!(target: "other", "log info under PETREL_LOG");

    // An explicit level replaces PETREL_LOG, for `log` records too: `init` capped those at
    // PETREL_LOG's maximum, warn, and they must follow the new one.
    log.configure(&LogConfig {
        level: Some(LogLevel::Info),
        ..LogConfig::default()
    })
    .unwrap();
    tracing::warn!(target: "other", "other warning at Info");
    log::info!(target: "other", "log info at Info");
    log::debug!(target: "other", "log debug at Info");

    log.configure(&LogConfig {
        level: Some(LogLevel::Error),
        ..LogConfig::default()
    })
    .unwrap();
    log::warn!(target: "other", "log warning at Error");
    log::error!(target: "other", "log error at Error");

    let text = fs::read_to_string(&path).unwrap();
    let has = |needle: &str| text.lines().any(|l| l.contains(needle));
    assert!(has("own warning under PETREL_LOG"), "{text}");
    assert!(!has("other warning under PETREL_LOG"), "{text}");
    assert!(!has("log info under PETREL_LOG"), "{text}");
    assert!(has("other warning at Info"), "{text}");
    assert!(has("log info at Info"), "{text}");
    assert!(!has("log debug at Info"), "{text}");
    assert!(!has("log warning at Error"), "{text}");
    assert!(has("log error at Error"), "{text}");
}
