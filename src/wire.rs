//! Wire types of an outgoing HTTP request, as the pure core builds it and the HTTP client sends
//! it: `http` crate types, so that nothing below the HTTP edge depends on the client library.

pub use http::header::{HeaderName, HeaderValue};
pub use http::Method;

/// How a request body is encoded on the wire (`map.to.encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Form,
}

impl Encoding {
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => "application/json",
            Encoding::Form => "application/x-www-form-urlencoded",
        }
    }
}

/// A rendered request, ready for the HTTP client (or for printing, when built with masked
/// secrets).
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Option<Vec<u8>>,
}

impl Request {
    /// The request as text: request line, headers, blank line, body (as sent). A form body is
    /// followed by its decoded fields, one `name = value` per line.
    pub fn to_text(&self) -> String {
        let mut out = format!("{} {}\n", self.method, self.url);
        for (n, v) in &self.headers {
            out.push_str(&format!(
                "{}: {}\n",
                title_case(n.as_str()),
                v.to_str().unwrap_or("<binary>")
            ));
        }
        out.push('\n');
        if let Some(b) = &self.body {
            out.push_str(&String::from_utf8_lossy(b));
            out.push('\n');
            let form = self.headers.iter().any(|(n, v)| {
                *n == http::header::CONTENT_TYPE
                    && v.to_str()
                        .is_ok_and(|v| v.starts_with(Encoding::Form.content_type()))
            });
            if form {
                out.push_str("\n# form body, decoded:\n");
                for (k, v) in form_urlencoded::parse(b) {
                    out.push_str(&format!("{k} = {v}\n"));
                }
            }
        }
        out
    }
}

/// `idempotency-key` -> `Idempotency-Key` (display only; HTTP header names are case-insensitive).
pub fn title_case(name: &str) -> String {
    name.split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_are_shown_title_cased() {
        for (name, want) in [
            ("idempotency-key", "Idempotency-Key"),
            ("content-type", "Content-Type"),
            ("x", "X"),
            ("", ""),
        ] {
            assert_eq!(title_case(name), want);
        }
    }
}
