//! Console logging: seed-style text lines (`INFO [connector] PATCH https://... 200 OK`), or
//! JSON lines whose fields include the delivery's span (connector, endpoint, stream sequence).

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Target of the seed-style console lines (a delivery's `[connector] PATCH https://... 200
/// OK`, a retry, a park): the text format prints only their message; JSON logs carry their
/// fields (`connector`, `method`, `url`, `status`, `duration_ms`, `stream_seq`,
/// `idempotency_key`, `attempt`, ...).
pub const CONSOLE: &str = "hms_sync::console";

/// Text that came from elsewhere (an event, a consumer, NATS) made safe for one terminal line:
/// every control character (newline, escape, ...) becomes a space.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Collects the `message` field of an event.
struct MessageOnly(String);

impl tracing::field::Visit for MessageOnly {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            use std::fmt::Write as _;
            let _ = write!(self.0, "{value:?}");
        }
    }
}

/// The text format: level and message (and the event's own fields), without time, target or
/// span context, as the seed's console shows it.
pub struct Plain;

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = *event.metadata().level();
        if writer.has_ansi_escapes() {
            let color = match level {
                tracing::Level::ERROR => "31",
                tracing::Level::WARN => "33",
                tracing::Level::INFO => "32",
                tracing::Level::DEBUG => "34",
                tracing::Level::TRACE => "35",
            };
            write!(writer, "\x1b[{color}m{level:>5}\x1b[0m ")?;
        } else {
            write!(writer, "{level:>5} ")?;
        }
        if event.metadata().target() == CONSOLE {
            // A console line: its message as the seed shows it; its fields are for JSON logs.
            let mut message = MessageOnly(String::new());
            event.record(&mut message);
            write!(writer, "{}", message.0)?;
        } else {
            ctx.field_format().format_fields(writer.by_ref(), event)?;
        }
        writeln!(writer)
    }
}

/// Keeps the console writer running; dropping it writes out every line still buffered (hold
/// it until the process exits).
pub struct Guard {
    console: Option<Arc<Console>>,
    flusher: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.console.take() {
            c.stop.store(true, Ordering::SeqCst);
            if let Some(t) = self.flusher.take() {
                t.thread().unpark();
                let _ = t.join();
            }
            c.flush();
        }
    }
}

/// How often buffered console lines are written out.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// A writer whose buffer holds more writes it out itself (a slow stderr slows logging down;
/// no line is dropped).
const MAX_BUFFERED: usize = 1 << 20;

/// The console (stderr) behind a buffer: a log line costs a copy into memory; a thread writes
/// the buffer out every [`FLUSH_EVERY`] (one `write` for many lines), and at exit.
pub struct Console {
    buffer: Mutex<Vec<u8>>,
    /// Held while writing to stderr, so that buffers go out in order.
    out: Mutex<std::io::Stderr>,
    stop: AtomicBool,
}

impl Console {
    fn new() -> Console {
        Console {
            buffer: Mutex::new(Vec::with_capacity(64 * 1024)),
            out: Mutex::new(std::io::stderr()),
            stop: AtomicBool::new(false),
        }
    }

    /// Writes out what is buffered.
    fn flush(&self) {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let taken = {
            let mut b = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
            if b.is_empty() {
                return;
            }
            std::mem::replace(&mut *b, Vec::with_capacity(64 * 1024))
        };
        let _ = out.write_all(&taken);
        let _ = out.flush();
    }
}

/// The installed console, for [`flush`].
static INSTALLED: std::sync::OnceLock<Arc<Console>> = std::sync::OnceLock::new();

/// Writes out the buffered console lines now: call it before printing to stderr directly
/// (an error message, a panic), so that lines stay in the order they were made.
pub fn flush() {
    if let Some(c) = INSTALLED.get() {
        c.flush();
    }
}

/// One log line's writer.
pub struct ConsoleWriter(Arc<Console>);

impl Write for ConsoleWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let full = {
            let mut b = self.0.buffer.lock().unwrap_or_else(PoisonError::into_inner);
            b.extend_from_slice(data);
            b.len() >= MAX_BUFFERED
        };
        if full {
            self.0.flush();
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for ConsoleMaker {
    type Writer = ConsoleWriter;

    fn make_writer(&'a self) -> ConsoleWriter {
        ConsoleWriter(self.0.clone())
    }
}

/// Makes the writer of each line.
pub struct ConsoleMaker(Arc<Console>);

/// Installs the process's logger on stderr: `format` is `text` or `json`; the filter comes
/// from `HMS_SYNC_LOG` (default `info`, ractor and async-nats at `warn`).
///
/// Lines go through a buffer written out every 50 ms by a thread of its own (one `write` for
/// many lines under a flood) and at exit (the returned [`Guard`]); none is dropped.
pub fn init(format: &str) -> Guard {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HMS_SYNC_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,ractor=warn,async_nats=warn"));
    let console = Arc::new(Console::new());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(ConsoleMaker(console.clone()))
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let installed = if format == "json" {
        builder.json().try_init()
    } else {
        builder.event_format(Plain).try_init()
    };
    if installed.is_err() {
        // Another logger already runs (tests): this one's writer is not needed.
        return Guard {
            console: None,
            flusher: None,
        };
    }
    let _ = INSTALLED.set(console.clone());
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // The lines before a panic come before its message.
        flush();
        previous(info);
    }));
    let c = console.clone();
    let flusher = std::thread::Builder::new()
        .name("hms-sync-log".into())
        .spawn(move || {
            while !c.stop.load(Ordering::SeqCst) {
                std::thread::park_timeout(FLUSH_EVERY);
                c.flush();
            }
        })
        .ok();
    Guard {
        console: Some(console),
        flusher,
    }
}
