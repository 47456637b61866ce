//! Console logging: seed-style text lines (`INFO [connector] PATCH https://... 200 OK`), or
//! JSON lines whose fields include the delivery's span (connector, endpoint, stream sequence).

use std::fmt;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

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
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Keeps the console writer running; dropping it writes out every line still queued (hold
/// it until the process exits).
pub struct Guard {
    _worker: Option<tracing_appender::non_blocking::WorkerGuard>,
}

/// Lines the console writer may queue before a logging call waits (it never drops one).
const QUEUED_LINES: usize = 64 * 1024;

/// Installs the process's logger on stderr: `format` is `text` or `json`; the filter comes
/// from `HMS_SYNC_LOG` (default `info`, ractor and async-nats at `warn`).
///
/// Lines are written by a thread of their own through a buffer, so a flood of delivery lines
/// costs the delivery a queue push instead of a `write` each; the buffer is written out
/// whenever the queue runs empty, and at exit (the returned [`Guard`]). The queue is not
/// lossy: when it is full, logging waits.
pub fn init(format: &str) -> Guard {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HMS_SYNC_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,ractor=warn,async_nats=warn"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("hms-sync-log")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let installed = if format == "json" {
        builder.json().try_init()
    } else {
        builder.event_format(Plain).try_init()
    };
    // Another logger already runs (tests): this one's writer is not needed.
    Guard {
        _worker: installed.is_ok().then_some(guard),
    }
}
