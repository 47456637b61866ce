//! Console logging: seed-style text lines (`INFO [connector] PATCH https://... 200 OK`), or
//! JSON lines whose fields include the delivery's span (connector, endpoint, stream sequence).

use std::fmt;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Target of the seed-style console lines (a delivery's `[connector] PATCH https://... 200
/// OK`, a retry, a park): the text format prints only their message; JSON logs carry their
/// fields (`connector`, `method`, `url`, `status`, `duration_ms`, `stream_seq`,
/// `idempotency_key`, `attempt`, ...).
pub const CONSOLE: &str = "hms_sync::console";

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

/// Installs the process's logger on stderr: `format` is `text` or `json`; the filter comes
/// from `HMS_SYNC_LOG` (default `info`, ractor and async-nats at `warn`).
pub fn init(format: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HMS_SYNC_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,ractor=warn,async_nats=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    if format == "json" {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.event_format(Plain).try_init();
    }
}
