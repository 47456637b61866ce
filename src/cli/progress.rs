//! Progress of long commands (resync, parked replay): an indicatif bar on stderr when stderr
//! is a terminal, else nothing but the notes (scripts and logs get the summary only).

use std::io::IsTerminal;

use crate::resync::Tick;

/// A progress bar, or nothing.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    /// A bar of `len` steps doing `what` (e.g. `sent`), shown only on a terminal.
    pub fn new(len: u64, what: &str) -> Progress {
        if !std::io::stderr().is_terminal() || len == 0 {
            return Progress { bar: None };
        }
        let bar = indicatif::ProgressBar::new(len);
        let template =
            format!("{{bar:40}} {{pos}}/{{len}} {what}, {{per_sec}}, eta {{eta}} {{msg}}");
        if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
            bar.set_style(style);
        }
        Progress { bar: Some(bar) }
    }

    /// Moves the bar to `n`.
    pub fn set(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.set_position(n);
        }
    }

    /// A line for the person watching (above the bar on a terminal; on stderr otherwise).
    pub fn note(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Applies a tick of the library's long operations.
    pub fn tick(&self, t: Tick) {
        match t {
            Tick::Sent(n) | Tick::Taken(n) => self.set(n),
            Tick::Stalled { waiting, secs } => self.note(&format!(
                "waiting {secs} s: {waiting} events not yet taken by the connector's consumer (is `hms-sync up` running with it?)"
            )),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
