//! `LogHandle::configure` on a subscriber installed for the test's thread only, so the tests
//! can run side by side; `logging_init.rs` covers the process-wide `init`.

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use vmm::logging::{self, LogConfig, LogError, LogHandle, LogLevel};

/// Runs `f` with petrel's subscriber as this thread's default.
fn with_logging<R>(f: impl FnOnce(&LogHandle) -> R) -> R {
    let (subscriber, handle) = logging::build();
    tracing::subscriber::with_default(subscriber, || f(&handle))
}

fn to_file(path: &Path) -> LogConfig {
    LogConfig {
        log_path: Some(path.to_owned()),
        ..LogConfig::default()
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap()
}

fn line_with<'a>(text: &'a str, needle: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in {text:?}"))
}

#[test]
fn warnings_go_to_the_log_path_and_info_follows_the_level() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("petrel.log");
    with_logging(|log| {
        log.configure(&LogConfig {
            level: Some(LogLevel::Warning),
            ..to_file(&path)
        })
        .unwrap();
        tracing::info!("info at warning");
        tracing::warn!("warn at warning");
        // An explicit level keeps virtio-queue's guest-driven complaints off.
        tracing::error!(target: "virtio_queue::queue", "ring error at warning");

        log.configure(&LogConfig {
            level: Some(LogLevel::Info),
            ..LogConfig::default()
        })
        .unwrap();
        tracing::info!("info at info");
        tracing::debug!("debug at info");
    });

    let text = read(&path);
    assert!(!text.contains("info at warning"), "{text}");
    assert!(!text.contains("ring error"), "{text}");
    assert!(line_with(&text, "warn at warning").contains("WARN"));
    assert!(line_with(&text, "info at info").contains("INFO"));
    assert!(!text.contains("debug at info"), "{text}");
    // Files get no colour codes, and a created file is private.
    assert!(!text.contains('\x1b'), "{text:?}");
    let mode = fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn log_path_is_appended_to_not_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("petrel.log");
    fs::write(&path, "earlier line\n").unwrap();
    with_logging(|log| {
        log.configure(&to_file(&path)).unwrap();
        tracing::warn!("later line");
    });

    let text = read(&path);
    assert!(text.starts_with("earlier line\n"), "{text}");
    line_with(&text, "later line");
}

#[test]
fn level_off_silences_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("petrel.log");
    with_logging(|log| {
        log.configure(&LogConfig {
            level: Some(LogLevel::Off),
            ..to_file(&path)
        })
        .unwrap();
        tracing::error!("an error");
    });

    assert_eq!(read(&path), "");
}

#[test]
fn show_level_and_show_log_origin_shape_the_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("petrel.log");
    with_logging(|log| {
        log.configure(&to_file(&path)).unwrap();
        tracing::warn!("default shape");
        log.configure(&LogConfig {
            show_level: Some(false),
            show_log_origin: Some(true),
            ..LogConfig::default()
        })
        .unwrap();
        tracing::warn!("without level, with origin");
    });

    let text = read(&path);
    let default = line_with(&text, "default shape");
    assert!(default.contains("WARN"), "{default}");
    assert!(!default.contains("logging.rs:"), "{default}");
    let changed = line_with(&text, "without level, with origin");
    assert!(!changed.contains("WARN"), "{changed}");
    assert!(changed.contains("tests/logging.rs:"), "{changed}");
}

#[test]
fn module_keeps_only_that_module_and_the_ones_below() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("petrel.log");
    with_logging(|log| {
        log.configure(&LogConfig {
            module: Some("vmm::control".to_owned()),
            ..to_file(&path)
        })
        .unwrap();
        tracing::warn!(target: "vmm::control", "from control");
        tracing::warn!(target: "vmm::control::queue", "from below control");
        tracing::warn!(target: "vmm::controller", "from a sibling");
        tracing::warn!(target: "devices::virtio::block", "from a device");

        log.configure(&LogConfig {
            module: Some(String::new()),
            ..LogConfig::default()
        })
        .unwrap();
        tracing::warn!(target: "devices::virtio::block", "after lifting");
    });

    let text = read(&path);
    line_with(&text, "from control");
    line_with(&text, "from below control");
    assert!(!text.contains("from a sibling"), "{text}");
    assert!(!text.contains("from a device"), "{text}");
    line_with(&text, "after lifting");
}

#[test]
fn bad_configuration_is_refused_and_logging_carries_on_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("petrel.log");
    let unused = dir.path().join("unused.log");
    with_logging(|log| {
        log.configure(&LogConfig {
            level: Some(LogLevel::Warning),
            ..to_file(&path)
        })
        .unwrap();

        let refused: [(LogConfig, &str); 3] = [
            (to_file(dir.path()), "a directory"),
            (
                to_file(&dir.path().join("missing/petrel.log")),
                "missing dir",
            ),
            (
                LogConfig {
                    module: Some("vmm control".to_owned()),
                    ..to_file(&unused)
                },
                "bad module",
            ),
        ];
        for (cfg, what) in refused {
            // Each bad request also asks for more: none of it may take effect.
            let cfg = LogConfig {
                level: Some(LogLevel::Trace),
                show_level: Some(false),
                ..cfg
            };
            let err = log.configure(&cfg).unwrap_err();
            match (&err, what) {
                (LogError::Open { path, .. }, "a directory" | "missing dir") => {
                    assert_eq!(Some(path), cfg.log_path.as_ref());
                    assert!(err.to_string().contains(&path.display().to_string()));
                }
                (LogError::InvalidModule(_), "bad module") => {}
                _ => panic!("{what}: unexpected {err:?}"),
            }
            tracing::debug!("debug after {what}");
            tracing::warn!("warn after {what}");
        }
    });

    let text = read(&path);
    for what in ["a directory", "missing dir", "bad module"] {
        assert!(line_with(&text, &format!("warn after {what}")).contains("WARN"));
        assert!(!text.contains(&format!("debug after {what}")), "{text}");
    }
    assert!(!unused.exists(), "a refused request created its log file");
}

fn mkfifo(path: &Path) {
    let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c_path` is a NUL-terminated string that lives across the call; mkfifo only
    // reads it.
    let rc = unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
}

fn fifo_in(dir: &Path) -> PathBuf {
    let path = dir.join("petrel.fifo");
    mkfifo(&path);
    path
}

#[test]
fn named_pipe_without_a_reader_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = fifo_in(dir.path());
    let file = dir.path().join("petrel.log");
    with_logging(|log| {
        log.configure(&to_file(&file)).unwrap();
        // On a thread: a blocking open would wait for a reader forever.
        let (done, result) = mpsc::channel();
        let clone = log.clone();
        let cfg = to_file(&fifo);
        std::thread::spawn(move || done.send(clone.configure(&cfg)));
        let err = result
            .recv_timeout(Duration::from_secs(10))
            .expect("configure blocked opening a pipe without a reader")
            .unwrap_err();
        assert!(
            matches!(&err, LogError::NoReader { path } if *path == fifo),
            "{err:?}"
        );
        assert!(err.to_string().contains("no reader"), "{err}");
        tracing::warn!("still to the file");
    });

    line_with(&read(&file), "still to the file");
}

#[test]
fn named_pipe_with_a_reader_receives_the_lines() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = fifo_in(dir.path());
    let mut reader = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    with_logging(|log| {
        log.configure(&to_file(&fifo)).unwrap();
        tracing::warn!("through the pipe");
    });

    let mut buf = vec![0u8; 4096];
    let n = reader.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    line_with(&text, "through the pipe");
}

#[test]
fn handles_are_shared_clones_usable_from_any_thread() {
    fn send_sync_clone<T: Send + Sync + Clone>() {}
    send_sync_clone::<LogHandle>();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("petrel.log");
    with_logging(|log| {
        let clone = log.clone();
        std::thread::spawn(move || clone.configure(&to_file(&path)))
            .join()
            .unwrap()
            .unwrap();
        tracing::warn!("configured by a clone");
    });

    line_with(
        &read(&dir.path().join("petrel.log")),
        "configured by a clone",
    );
}

#[test]
fn configure_after_the_subscriber_is_dropped_fails() {
    let (subscriber, log) = logging::build();
    drop(subscriber);
    let err = log.configure(&LogConfig::default()).unwrap_err();
    assert!(matches!(err, LogError::Reload(_)), "{err:?}");
}
