//! Stage 1 of a delivery, prepare: parse the event, filter it, check its schema, render its
//! request. Pure: no I/O (but `${VAR}` secrets are read from the environment as the request
//! is rendered, which is when they are needed).

use std::time::Instant;

use serde_json::Value as Json;

use super::attempt::Attempted;
use crate::bus::Delivery;
use crate::connector::Connector;
use crate::filter::{EventMeta, Verdict};
use crate::outcome::Outcome;
use crate::request::{self, Request};
use crate::template::Secrets;

/// What preparing one delivery came to.
pub enum Prepared {
    /// The filter excluded the event (or could not evaluate it): acked at once.
    Filtered,
    /// The event cannot be sent; the attempt ends here.
    Invalid(Box<Attempted>),
    /// Ready to send.
    Ready(Ready),
}

/// A delivery ready to be sent.
pub struct Ready {
    pub event: Json,
    /// When preparing began (after the filter).
    pub started: Instant,
    /// The request, rendered now; `None` when a lookup's answer is needed first.
    pub request: Option<Rendered>,
}

/// A rendered request and its URL as shown (secrets masked).
pub struct Rendered {
    pub request: Request,
    pub shown_url: String,
}

/// Parse, filter, schema, render.
pub fn prepare(c: &Connector, d: &Delivery, key: &str) -> Prepared {
    let event: Json = match serde_json::from_slice(d.payload()) {
        Ok(v) => v,
        Err(e) => {
            return Prepared::Invalid(Box::new(Attempted::invalid(
                format!("payload is not JSON: {e}"),
                c.target.url.source().to_string(),
                c.target.method.clone(),
                Instant::now(),
            )))
        }
    };
    if let Some(filter) = &c.trigger.filter {
        // The metadata is only built for filters that read `event`.
        let meta = if filter.uses_event() {
            EventMeta {
                topic: d.original_subject(),
                sequence: d.stream_sequence,
                published: crate::clock::format(d.published),
                id: d.msg_id.clone().unwrap_or_default(),
            }
        } else {
            EventMeta::default()
        };
        match filter.evaluate(&event, &meta) {
            Verdict::Pass => {}
            Verdict::Excluded => return Prepared::Filtered,
            Verdict::NotEvaluable(why) => {
                tracing::debug!(connector = %c.id, seq = d.stream_sequence, "filtered out: {why}");
                return Prepared::Filtered;
            }
            Verdict::Failed(why) => {
                let mut a = Attempted::invalid(
                    String::new(),
                    c.target.url.source().to_string(),
                    c.target.method.clone(),
                    Instant::now(),
                );
                a.outcome = Outcome::Rejected {
                    reason: "filter",
                    transient: false,
                    message: format!("the filter failed on this event: {why}"),
                };
                return Prepared::Invalid(Box::new(a));
            }
        }
    }
    let started = Instant::now();
    if let Err(e) = c.schema.check(&event) {
        return Prepared::Invalid(Box::new(Attempted::invalid(
            format!("schema check failed: {e}"),
            c.target.url.source().to_string(),
            c.target.method.clone(),
            started,
        )));
    }
    let request = if c.lookup.is_some() {
        None
    } else {
        match render(c, &event, key, d, started) {
            Ok(r) => Some(r),
            Err(a) => return Prepared::Invalid(a),
        }
    };
    Prepared::Ready(Ready {
        event,
        started,
        request,
    })
}

/// Renders the main request from `ctx` (the event, with the lookup's answer bound when the
/// connector has a lookup), as a CloudEvent when `map.to.format` says so.
pub fn render(
    c: &Connector,
    ctx: &Json,
    key: &str,
    d: &Delivery,
    started: Instant,
) -> Result<Rendered, Box<Attempted>> {
    let built = request::build(c, ctx, Some(key), Secrets::Env).and_then(|mut r| {
        if c.target.format.cloudevents().is_some() {
            let topic = d.original_subject();
            let time = crate::clock::format(d.published);
            let origin = request::EventOrigin {
                topic: &topic,
                time: &time,
            };
            request::cloud_event(c, &mut r, ctx, key, origin)?;
        }
        Ok(r)
    });
    match built {
        Ok(request) => {
            let shown_url = if c.target.url.secrets().next().is_some() {
                c.target
                    .url
                    .render_text(ctx, Secrets::Masked)
                    .unwrap_or_default()
            } else {
                request.url.clone()
            };
            Ok(Rendered { request, shown_url })
        }
        Err(e) => {
            let url = c
                .target
                .url
                .render_text(ctx, Secrets::Masked)
                .unwrap_or_else(|_| c.target.url.source().to_string());
            Err(Box::new(Attempted::invalid(
                e.to_string(),
                url,
                c.target.method.clone(),
                started,
            )))
        }
    }
}
