//! petrel's log: where it goes, how much of it and in what shape, changeable at runtime.
//!
//! [`init`] installs the process-wide `tracing` subscriber (and routes the `log` crate, which
//! rust-vmm crates such as virtio-queue use, into it). At start the log goes to stderr, with
//! ANSI colours only when stderr is a terminal, filtered by `PETREL_LOG` (an `EnvFilter`
//! specification such as `info,vmm::control=debug`) or, when that is unset or invalid, by
//! `warn,virtio_queue=off`: virtio-queue reports malformed rings at error level, the guest
//! controls those, and petrel counts and logs them itself, rate-limited.
//!
//! [`LogHandle::configure`] changes the running configuration the way Firecracker's
//! `PUT /logger` does. Each field of [`LogConfig`] left `None` keeps its current setting:
//!
//! - `log_path`: a file or a named pipe. It is opened for writing with `O_APPEND|O_NONBLOCK`
//!   (a missing file is created, mode 0600) and the log goes there instead of stderr, without
//!   colours. A named pipe must already have a reader, otherwise the call fails (`ENXIO`).
//!   Writes never block the VMM: a line that does not fit in a full pipe is dropped (one
//!   longer than `PIPE_BUF`, 4 KiB, may be cut). Firecracker opens the path read-write and
//!   does not create it; petrel creates a missing file and reports a pipe nobody reads.
//! - `level`: one of [`LogLevel`]. It replaces the whole filter, `PETREL_LOG` included, with
//!   "this level everywhere, virtio-queue off". It applies to `log` records too.
//! - `module`: log only events whose target is this module path or lies below it
//!   (`vmm::control` keeps `vmm::control` and `vmm::control::x`, not `vmm::controller`).
//!   The empty string lifts the restriction.
//! - `show_level`, `show_log_origin`: print the level word, and the source file and line,
//!   on each line. At start the level is shown and the origin is not.
//!
//! A call is all or nothing: the module is validated and the file opened first, and only
//! then is the new configuration swapped in, so an error leaves logging as it was.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

use tracing::{Metadata, Subscriber};
use tracing_subscriber::fmt::format::{DefaultFields, Format, Full};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

/// The environment variable holding the start-up filter.
pub const ENV_VAR: &str = "PETREL_LOG";
/// The filter used when [`ENV_VAR`] is unset or invalid.
pub const DEFAULT_FILTER: &str = "warn,virtio_queue=off";
/// Appended to an explicit level: virtio-queue stays quiet (see the module docs).
const QUIET_DIRECTIVES: &str = "virtio_queue=off";

/// A verbosity level, named as in Firecracker's API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Off,
    Error,
    Warning,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    fn directive(self) -> &'static str {
        match self {
            LogLevel::Off => "off",
            LogLevel::Error => "error",
            LogLevel::Warning => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogLevel::Off => "Off",
            LogLevel::Error => "Error",
            LogLevel::Warning => "Warning",
            LogLevel::Info => "Info",
            LogLevel::Debug => "Debug",
            LogLevel::Trace => "Trace",
        })
    }
}

/// A level name that is not one of [`LogLevel`]'s.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "unknown log level {0:?}: expected one of Off, Error, Warning (or Warn), Info, Debug, \
     Trace, in any case"
)]
pub struct ParseLogLevelError(pub String);

impl FromStr for LogLevel {
    type Err = ParseLogLevelError;

    /// Firecracker's names, in any case; `Warn` is accepted for `Warning`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const NAMES: [(&str, LogLevel); 7] = [
            ("off", LogLevel::Off),
            ("error", LogLevel::Error),
            ("warning", LogLevel::Warning),
            ("warn", LogLevel::Warning),
            ("info", LogLevel::Info),
            ("debug", LogLevel::Debug),
            ("trace", LogLevel::Trace),
        ];
        NAMES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s))
            .map(|&(_, level)| level)
            .ok_or_else(|| ParseLogLevelError(s.to_owned()))
    }
}

/// A change to the log configuration; `None` keeps the current setting. Mirrors the body of
/// `PUT /logger`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogConfig {
    /// File or named pipe to write the log to, instead of stderr.
    pub log_path: Option<PathBuf>,
    /// Level for every target; replaces `PETREL_LOG`.
    pub level: Option<LogLevel>,
    /// Print the level of each line.
    pub show_level: Option<bool>,
    /// Print the source file and line of each line.
    pub show_log_origin: Option<bool>,
    /// Log only this module and the modules below it; `""` logs every module.
    pub module: Option<String>,
}

/// Why [`LogHandle::configure`] refused a configuration. Logging is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(
        "log_path {}: the named pipe has no reader; open it for reading first",
        path.display()
    )]
    NoReader { path: PathBuf },
    #[error("log_path {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error(
        "module {0:?}: expected a Rust module path such as `vmm::control` (letters, digits \
         and `_`, segments separated by `::`)"
    )]
    InvalidModule(String),
    #[error("cannot change the log configuration: {0}")]
    Reload(#[from] reload::Error),
}

/// Checks that `module` reads as a Rust module path: non-empty segments of ASCII letters,
/// digits and `_`, separated by `::`.
pub fn validate_module(module: &str) -> Result<(), LogError> {
    let plausible = module.split("::").all(|segment| {
        !segment.is_empty()
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    });
    if plausible {
        Ok(())
    } else {
        Err(LogError::InvalidModule(module.to_owned()))
    }
}

/// Where lines are written.
#[derive(Clone, Debug)]
enum Sink {
    Stderr,
    File(Arc<File>),
}

enum SinkWriter<'a> {
    Stderr(io::Stderr),
    File(&'a File),
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = SinkWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        match self {
            Sink::Stderr => SinkWriter::Stderr(io::stderr()),
            Sink::File(file) => SinkWriter::File(file),
        }
    }
}

impl Write for SinkWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            SinkWriter::Stderr(w) => w.write(buf),
            SinkWriter::File(w) => w.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        // One write per line keeps lines whole in an O_APPEND file and, up to PIPE_BUF, in a
        // pipe.
        match self {
            SinkWriter::Stderr(w) => w.write_all(buf),
            SinkWriter::File(w) => w.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            SinkWriter::Stderr(w) => w.flush(),
            SinkWriter::File(w) => w.flush(),
        }
    }
}

/// Keeps events whose target is the module or lies below it; everything without a module.
struct ModuleFilter(Option<String>);

impl ModuleFilter {
    fn allows(&self, target: &str) -> bool {
        match &self.0 {
            None => true,
            Some(module) => target
                .strip_prefix(module.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::")),
        }
    }
}

impl<S: Subscriber> Layer<S> for ModuleFilter {
    fn enabled(&self, metadata: &Metadata<'_>, _: Context<'_, S>) -> bool {
        self.allows(metadata.target())
    }
}

// Three reloadable layers rather than one reloaded stack: stacked as layers on the registry,
// a callsite that the level filter turns down is cached as never interesting and costs
// nothing, which a stack of layers composed inside one `reload::Layer` does not give.
type LevelLayer = reload::Layer<EnvFilter, Registry>;
type WithLevel = Layered<LevelLayer, Registry>;
type ModuleLayer = reload::Layer<ModuleFilter, WithLevel>;
type WithModule = Layered<ModuleLayer, WithLevel>;
type FmtLayer = tracing_subscriber::fmt::Layer<WithModule, DefaultFields, Format<Full>, Sink>;

/// The complete current configuration; `LogConfig` is a change to it.
#[derive(Clone, Debug)]
struct Settings {
    /// The start-up filter specification: `PETREL_LOG` or [`DEFAULT_FILTER`].
    base: String,
    level: Option<LogLevel>,
    module: Option<String>,
    sink: Sink,
    /// Colours on stderr (only when it is a terminal); never in a file.
    ansi_on_stderr: bool,
    show_level: bool,
    show_log_origin: bool,
}

impl Settings {
    fn from_env() -> Self {
        // Unset, not UTF-8 or not a valid filter: the default, as before `PUT /logger`.
        let base = std::env::var(ENV_VAR)
            .ok()
            .filter(|spec| EnvFilter::try_new(spec).is_ok())
            .unwrap_or_else(|| DEFAULT_FILTER.to_owned());
        Settings {
            base,
            level: None,
            module: None,
            sink: Sink::Stderr,
            ansi_on_stderr: io::stderr().is_terminal(),
            show_level: true,
            show_log_origin: false,
        }
    }

    /// The settings after applying `cfg`, with the log file opened; `self` is untouched.
    fn apply(&self, cfg: &LogConfig) -> Result<Settings, LogError> {
        let mut next = self.clone();
        if let Some(module) = &cfg.module {
            next.module = if module.is_empty() {
                None
            } else {
                validate_module(module)?;
                Some(module.clone())
            };
        }
        if let Some(path) = &cfg.log_path {
            next.sink = Sink::File(Arc::new(open_log_path(path)?));
        }
        if let Some(level) = cfg.level {
            next.level = Some(level);
        }
        if let Some(show) = cfg.show_level {
            next.show_level = show;
        }
        if let Some(show) = cfg.show_log_origin {
            next.show_log_origin = show;
        }
        Ok(next)
    }

    fn level_filter(&self) -> EnvFilter {
        // Both specifications parse: the start-up one was checked in `from_env`, the other
        // is made of fixed directives.
        match self.level {
            None => EnvFilter::builder().parse_lossy(&self.base),
            Some(level) => EnvFilter::builder()
                .parse_lossy(format!("{},{QUIET_DIRECTIVES}", level.directive())),
        }
    }

    fn module_filter(&self) -> ModuleFilter {
        ModuleFilter(self.module.clone())
    }

    fn fmt_layer(&self) -> FmtLayer {
        let to_file = matches!(self.sink, Sink::File(_));
        tracing_subscriber::fmt::layer()
            .with_writer(self.sink.clone())
            .with_ansi(self.ansi_on_stderr && !to_file)
            .with_level(self.show_level)
            .with_file(self.show_log_origin)
            .with_line_number(self.show_log_origin)
            // A full pipe drops lines; saying so on stderr for each one would only add noise.
            .log_internal_errors(!to_file)
    }
}

/// Opens a log file or named pipe for append, never blocking (`O_NONBLOCK`, as Firecracker).
fn open_log_path(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| {
            if source.raw_os_error() == Some(libc::ENXIO) {
                LogError::NoReader {
                    path: path.to_owned(),
                }
            } else {
                LogError::Open {
                    path: path.to_owned(),
                    source,
                }
            }
        })
}

/// Changes the running log configuration. Cheap to clone; every clone drives the same
/// subscriber.
#[derive(Clone)]
pub struct LogHandle {
    settings: Arc<Mutex<Settings>>,
    level: reload::Handle<EnvFilter, Registry>,
    module: reload::Handle<ModuleFilter, WithLevel>,
    format: reload::Handle<FmtLayer, WithModule>,
}

impl fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogHandle").finish_non_exhaustive()
    }
}

impl LogHandle {
    /// Applies `cfg` (see the module docs). On error the configuration is unchanged.
    pub fn configure(&self, cfg: &LogConfig) -> Result<(), LogError> {
        let mut settings = self.settings.lock().unwrap_or_else(PoisonError::into_inner);
        let next = settings.apply(cfg)?;
        // The three swaps can fail only when the subscriber is gone, and then the first one
        // does, having changed nothing; no swap runs code that could poison a lock.
        self.format.reload(next.fmt_layer())?;
        self.module.reload(next.module_filter())?;
        self.level.reload(next.level_filter())?;
        // Each reload also moves `log::max_level()`, which cuts `log` records before they
        // reach tracing, to the new maximum.
        *settings = next;
        Ok(())
    }
}

/// Builds petrel's subscriber at its start-up configuration without installing it, and the
/// handle that reconfigures it. [`init`] installs it process-wide; tests can install it for
/// a scope with `tracing::subscriber::with_default`.
pub fn build() -> (impl Subscriber + Send + Sync + 'static, LogHandle) {
    let settings = Settings::from_env();
    let (level_layer, level) = reload::Layer::new(settings.level_filter());
    let (module_layer, module) = reload::Layer::new(settings.module_filter());
    let (fmt_layer, format) = reload::Layer::new(settings.fmt_layer());
    let subscriber = tracing_subscriber::registry()
        .with(level_layer)
        .with(module_layer)
        .with(fmt_layer);
    let handle = LogHandle {
        settings: Arc::new(Mutex::new(settings)),
        level,
        module,
        format,
    };
    (subscriber, handle)
}

/// Installs petrel's subscriber for the whole process (see the module docs) and returns the
/// handle that reconfigures it. Keep the handle for `PUT /logger`.
///
/// If a global subscriber is already installed, that one stays, and [`LogHandle::configure`]
/// on the returned handle fails.
pub fn init() -> LogHandle {
    let (subscriber, handle) = build();
    // The only failures are a subscriber or a `log` logger installed before; the first is
    // reported by `configure`, the second leaves `log` records to that logger.
    let _ = subscriber.try_init();
    handle
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_names_parse_in_any_case() {
        let cases = [
            ("Off", LogLevel::Off),
            ("off", LogLevel::Off),
            ("Error", LogLevel::Error),
            ("ERROR", LogLevel::Error),
            ("Warning", LogLevel::Warning),
            ("warning", LogLevel::Warning),
            ("Warn", LogLevel::Warning),
            ("warn", LogLevel::Warning),
            ("Info", LogLevel::Info),
            ("info", LogLevel::Info),
            ("Debug", LogLevel::Debug),
            ("dEbUg", LogLevel::Debug),
            ("Trace", LogLevel::Trace),
            ("trace", LogLevel::Trace),
        ];
        for (name, level) in cases {
            assert_eq!(name.parse::<LogLevel>(), Ok(level), "{name}");
        }
    }

    #[test]
    fn display_round_trips_through_from_str() {
        for level in [
            LogLevel::Off,
            LogLevel::Error,
            LogLevel::Warning,
            LogLevel::Info,
            LogLevel::Debug,
            LogLevel::Trace,
        ] {
            assert_eq!(level.to_string().parse::<LogLevel>(), Ok(level));
        }
    }

    #[test]
    fn unknown_level_is_rejected_naming_the_accepted_values() {
        for bad in ["", "verbose", "warnings", " info", "Info ", "5"] {
            let err = bad.parse::<LogLevel>().unwrap_err();
            assert_eq!(err, ParseLogLevelError(bad.to_owned()));
            let text = err.to_string();
            for name in ["Off", "Error", "Warning", "Warn", "Info", "Debug", "Trace"] {
                assert!(text.contains(name), "{text:?} lacks {name}");
            }
        }
    }

    #[test]
    fn module_paths_are_accepted() {
        for good in [
            "vmm",
            "vmm::control",
            "devices::virtio::block",
            "virtio_queue",
            "_x::y2",
        ] {
            assert!(validate_module(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn implausible_module_paths_are_rejected() {
        for bad in [
            "",
            "vmm::",
            "::vmm",
            "vmm:control",
            "vmm:::control",
            "vmm::::control",
            "vmm control",
            "vmm-control",
            "vmm/control",
            "vmm.control",
            "vmm::contrôle",
            "vmm=debug",
        ] {
            let err = validate_module(bad).unwrap_err();
            assert!(
                matches!(&err, LogError::InvalidModule(m) if m == bad),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn module_filter_matches_whole_path_segments() {
        let filter = ModuleFilter(Some("vmm::control".to_owned()));
        assert!(filter.allows("vmm::control"));
        assert!(filter.allows("vmm::control::queue"));
        assert!(!filter.allows("vmm::controller"));
        assert!(!filter.allows("vmm"));
        assert!(!filter.allows("devices::virtio"));
        assert!(ModuleFilter(None).allows("anything::at_all"));
    }

    #[test]
    fn invalid_module_fails_before_the_log_file_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let cfg = LogConfig {
            log_path: Some(path.clone()),
            module: Some("not a module".to_owned()),
            ..LogConfig::default()
        };
        let err = Settings::from_env().apply(&cfg).unwrap_err();
        assert!(matches!(err, LogError::InvalidModule(_)), "{err}");
        assert!(!path.exists());
    }
}
