//! The daemon's operational log (not the audit log): where it goes (standard error, the systemd
//! journal through its native protocol, syslog over a unix datagram socket, or a file that
//! SIGUSR1 reopens), in which format (text or JSON lines) and from which level. [`Settings`] is
//! built by `config` from `log:`; [`init`] installs the process-wide tracing subscriber once.
//!
//! Levels: `RUST_LOG` wins over `SUBMITGATE_LOG` (the older name), which wins over `log.level`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;

/// Where syslog listens on Linux.
pub const DEFAULT_SYSLOG_SOCKET: &str = "/dev/log";

/// The level filter when neither `log.level` nor the environment gives one.
pub const DEFAULT_LEVEL: &str = "info";

/// The environment variables that override `log.level`, strongest first.
pub const LEVEL_ENV: [&str; 2] = ["RUST_LOG", "SUBMITGATE_LOG"];

/// How one log line looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// `2024-06-10T12:34:56.789Z  INFO message key=value` (syslog and files without colours).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `message` and the event's fields.
    Json,
}

/// Where log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Standard error (colours only on a terminal).
    Stderr,
    /// The systemd journal, native protocol: the message and every field as journal fields,
    /// the level as `PRIORITY`. `format` does not apply.
    Journald,
    /// RFC 3164 syslog datagrams to a unix socket (facility daemon, tag `submitgate[PID]`).
    Syslog {
        /// The socket, [`DEFAULT_SYSLOG_SOCKET`] by default.
        socket: PathBuf,
    },
    /// Appended to a file, reopened on SIGUSR1 (after logrotate).
    File {
        /// The file.
        path: PathBuf,
    },
}

/// The checked `log:` section.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settings {
    /// Text or JSON.
    pub format: Format,
    /// `None`: the journal when standard error is connected to it (`JOURNAL_STREAM`), standard
    /// error otherwise.
    pub target: Option<Target>,
    /// An `EnvFilter` directive (`info`, `warn,submitgate::milter=debug`), checked by config.
    pub level: Option<String>,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("log file {}: {source}", path.display())]
    File { path: PathBuf, source: io::Error },
    #[error("syslog socket {}: {source}", socket.display())]
    Syslog { socket: PathBuf, source: io::Error },
    #[error("a logger is already installed in this process")]
    AlreadySet,
}

/// What stays of the logger after [`init`]: the file target's handle, for SIGUSR1.
#[derive(Debug, Clone, Default)]
pub struct LogHandle {
    file: Option<ReopenableFile>,
}

impl LogHandle {
    /// Reopens the log file (a no-op for the other targets); an error leaves the old one open.
    pub fn reopen(&self) -> io::Result<()> {
        match &self.file {
            Some(file) => file.reopen(),
            None => Ok(()),
        }
    }
}

/// Whether standard error is the journal's stream: `JOURNAL_STREAM` (`DEVICE:INODE`, set by
/// systemd for a service whose output goes to the journal) names the file standard error is.
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match rustix::fs::fstat(io::stderr()) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

/// The level filter: `RUST_LOG`, else `SUBMITGATE_LOG`, else `configured`, else `info`. A
/// variable that does not parse is skipped with a note on standard error.
pub fn filter(configured: Option<&str>) -> EnvFilter {
    for var in LEVEL_ENV {
        if let Ok(value) = std::env::var(var) {
            match EnvFilter::builder().parse(&value) {
                Ok(f) => return f,
                Err(e) => eprintln!("submitgate: ignoring {var}={value:?}: {e}"),
            }
        }
    }
    EnvFilter::builder()
        .parse(configured.unwrap_or(DEFAULT_LEVEL))
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_LEVEL))
}

/// The journal priorities of the levels: syslog's meaning, as the syslog target writes them
/// and as `journalctl -p` filters (the crate's default makes every info line a notice).
fn journal_priorities() -> tracing_journald::PriorityMappings {
    use tracing_journald::Priority;
    tracing_journald::PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    }
}

/// Installs the process-wide subscriber for `settings`. The journal, when chosen but not
/// reachable (no systemd), falls back to standard error with a warning.
pub fn init(settings: &Settings) -> Result<LogHandle, InitError> {
    let target = match &settings.target {
        Some(t) => t.clone(),
        None if stderr_is_journal() => Target::Journald,
        None => Target::Stderr,
    };
    let filter = filter(settings.level.as_deref());
    let registry = tracing_subscriber::registry().with(filter);
    let mut handle = LogHandle::default();
    let result = match target {
        Target::Journald => match tracing_journald::layer() {
            Ok(layer) => registry
                .with(
                    layer
                        .with_syslog_identifier("submitgate".into())
                        .with_priority_mappings(journal_priorities()),
                )
                .try_init(),
            Err(e) => {
                let r = install(registry, settings.format, Writer::Stderr);
                tracing::warn!("the systemd journal is not reachable ({e}); logging to stderr");
                r
            }
        },
        Target::Stderr => install(registry, settings.format, Writer::Stderr),
        Target::Syslog { socket } => {
            let writer = SyslogWriter::connect(&socket)
                .map_err(|source| InitError::Syslog { socket, source })?;
            install(registry, settings.format, Writer::Syslog(writer))
        }
        Target::File { path } => {
            let file =
                ReopenableFile::open(&path).map_err(|source| InitError::File { path, source })?;
            handle.file = Some(file.clone());
            install(registry, settings.format, Writer::File(file))
        }
    };
    result.map_err(|_| InitError::AlreadySet)?;
    Ok(handle)
}

/// The fmt layer for `format`, writing through `writer`.
fn install<S>(
    registry: S,
    format: Format,
    writer: Writer,
) -> Result<(), tracing_subscriber::util::TryInitError>
where
    S: tracing::Subscriber
        + for<'a> tracing_subscriber::registry::LookupSpan<'a>
        + Send
        + Sync
        + 'static,
{
    let ansi = matches!(writer, Writer::Stderr) && io::IsTerminal::is_terminal(&io::stderr());
    // Syslog stamps every line itself.
    let timestamps = !matches!(writer, Writer::Syslog(_));
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi)
        .with_target(false);
    match (format, timestamps) {
        (Format::Text, true) => registry.with(layer).try_init(),
        (Format::Text, false) => registry.with(layer.without_time()).try_init(),
        (Format::Json, true) => registry
            .with(
                layer
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false),
            )
            .try_init(),
        (Format::Json, false) => registry
            .with(
                layer
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .without_time(),
            )
            .try_init(),
    }
}

/// The destinations of the fmt layer.
enum Writer {
    Stderr,
    Syslog(SyslogWriter),
    File(ReopenableFile),
}

impl Writer {
    fn event_writer(&self, level: Level) -> EventWriter<'_> {
        match self {
            Writer::Stderr => EventWriter::Stderr(io::stderr()),
            Writer::File(f) => EventWriter::File(f),
            Writer::Syslog(s) => EventWriter::Syslog {
                to: s,
                level,
                line: Vec::new(),
            },
        }
    }
}

impl<'a> MakeWriter<'a> for Writer {
    type Writer = EventWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        self.event_writer(Level::INFO)
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        self.event_writer(*meta.level())
    }
}

/// One event's writer. The fmt layer writes a whole formatted event at once; syslog sends it as
/// one datagram when the writer is dropped.
enum EventWriter<'a> {
    Stderr(io::Stderr),
    File(&'a ReopenableFile),
    Syslog {
        to: &'a SyslogWriter,
        level: Level,
        line: Vec<u8>,
    },
}

impl Write for EventWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            EventWriter::Stderr(e) => e.write(buf),
            EventWriter::File(f) => f.write_all(buf).map(|()| buf.len()),
            EventWriter::Syslog { line, .. } => {
                line.extend_from_slice(buf);
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            EventWriter::Stderr(e) => e.flush(),
            EventWriter::File(_) | EventWriter::Syslog { .. } => Ok(()),
        }
    }
}

impl Drop for EventWriter<'_> {
    fn drop(&mut self) {
        if let EventWriter::Syslog { to, level, line } = self {
            let text = String::from_utf8_lossy(line);
            to.send(*level, text.trim_end_matches('\n'));
        }
    }
}

/// RFC 3164 datagrams to a syslog socket (the `syslog` crate formats them); reconnects once when
/// a send fails (the syslog daemon restarted and bound a new socket).
struct SyslogWriter {
    socket: PathBuf,
    logger: Mutex<Option<SyslogLogger>>,
}

type SyslogLogger = syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>;

impl SyslogWriter {
    fn connect(socket: &Path) -> io::Result<SyslogWriter> {
        let logger = Self::open(socket)?;
        Ok(SyslogWriter {
            socket: socket.to_path_buf(),
            logger: Mutex::new(Some(logger)),
        })
    }

    fn open(socket: &Path) -> io::Result<SyslogLogger> {
        let formatter = syslog::Formatter3164 {
            facility: syslog::Facility::LOG_DAEMON,
            hostname: None,
            process: "submitgate".into(),
            pid: std::process::id(),
        };
        syslog::unix_custom(formatter, socket).map_err(|e| match e {
            syslog::Error::Initialization(inner) => match inner.downcast::<syslog::Error>() {
                Ok(inner) => match *inner {
                    syslog::Error::Io(io) => io,
                    other => io::Error::other(other.to_string()),
                },
                Err(other) => io::Error::other(other.to_string()),
            },
            syslog::Error::Io(io) => io,
            other => io::Error::other(other.to_string()),
        })
    }

    /// Sends one line; a line that cannot be sent even after reconnecting is dropped (there is
    /// nowhere left to report it).
    fn send(&self, level: Level, text: &str) {
        let mut guard = self.logger.lock().unwrap_or_else(PoisonError::into_inner);
        for _ in 0..2 {
            if guard.is_none() {
                *guard = Self::open(&self.socket).ok();
            }
            let Some(logger) = guard.as_mut() else {
                return;
            };
            let sent = match level {
                Level::ERROR => logger.err(text),
                Level::WARN => logger.warning(text),
                Level::INFO => logger.info(text),
                Level::DEBUG | Level::TRACE => logger.debug(text),
            };
            if sent.is_ok() {
                return;
            }
            *guard = None;
        }
    }
}

/// A log file shared by every event writer, swapped for a freshly opened one on reopen.
#[derive(Debug, Clone)]
struct ReopenableFile {
    path: PathBuf,
    file: Arc<Mutex<File>>,
}

impl ReopenableFile {
    /// Mode 0640, like the audit log.
    fn open(path: &Path) -> io::Result<ReopenableFile> {
        Ok(ReopenableFile {
            path: path.to_path_buf(),
            file: Arc::new(Mutex::new(open_append(path)?)),
        })
    }

    fn reopen(&self) -> io::Result<()> {
        let fresh = open_append(&self.path)?;
        *self.file.lock().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }

    fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        self.file
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write_all(buf)
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}
