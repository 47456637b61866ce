//! Takes known secret values out of text that comes from elsewhere (a target's answer, a token
//! endpoint's error) before it is logged or stored: each value, and its URL-encoded,
//! form-encoded, base64 (at any alignment) and hex forms, becomes `***`. Pure.

use base64::Engine as _;

/// Values shorter than this are not looked for (they would match ordinary words).
const MIN_LEN: usize = 6;

/// What to take out of texts: the secret values of one request and their encodings.
#[derive(Default)]
pub struct Scrubber {
    /// Longest first, so that an encoding containing another is replaced whole.
    needles: Vec<String>,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scrubber({} forms)", self.needles.len())
    }
}

impl Scrubber {
    /// A scrubber for `values` (secrets, tokens); a value spanning several lines (a PEM key)
    /// is also looked for line by line.
    pub fn new<S: AsRef<str>>(values: impl IntoIterator<Item = S>) -> Scrubber {
        let mut needles = Vec::new();
        for v in values {
            let v = v.as_ref();
            let mut add = |s: &str| {
                if s.len() >= MIN_LEN {
                    needles.extend(forms(s));
                }
            };
            add(v);
            if v.contains('\n') {
                for line in v.lines() {
                    add(line.trim());
                }
            }
        }
        needles.retain(|n| n.len() >= MIN_LEN);
        needles.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        needles.dedup();
        Scrubber { needles }
    }

    /// Whether there is nothing to look for.
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// `text` with every form of every value replaced by `***`.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for n in &self.needles {
            if out.contains(n.as_str()) {
                out = out.replace(n.as_str(), "***");
            }
        }
        out
    }
}

/// `v` as it may appear in other text: itself, URL- and form-encoded, base64 (standard and
/// URL-safe, the part that does not depend on what surrounds it, at the three alignments),
/// hex in either case.
fn forms(v: &str) -> Vec<String> {
    let b = v.as_bytes();
    let mut out = vec![
        v.to_string(),
        percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string(),
        form_urlencoded::byte_serialize(b).collect(),
        hex::encode(b),
        hex::encode_upper(b),
    ];
    for engine in [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::URL_SAFE,
    ] {
        for shift in 0..3 {
            let mut shifted = vec![0u8; shift];
            shifted.extend_from_slice(b);
            let enc = engine.encode(&shifted);
            let skip = if shift == 0 { 0 } else { 4 };
            // The last group depends on what follows (or is padding): left out.
            let end = enc.len().saturating_sub(4).max(skip);
            out.push(enc[skip..end].to_string());
            if shift == 0 {
                out.push(enc.trim_end_matches('=').to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_of_a_secret_is_taken_out() {
        let secret = "s3cr3t+/value=xyz";
        let s = Scrubber::new([secret]);
        let b64 = |x: &[u8]| base64::engine::general_purpose::STANDARD.encode(x);
        let texts = [
            format!("token {secret} refused"),
            "q=s3cr3t%2B%2Fvalue%3Dxyz&x=1".to_string(),
            format!("Basic {}", b64(format!("client:{secret}").as_bytes())),
            format!("Basic {}", b64(format!("c:{secret}").as_bytes())),
            format!("Basic {}", b64(secret.as_bytes())),
            format!("hex {}", hex::encode(secret)),
            format!(
                "form {}",
                form_urlencoded::byte_serialize(secret.as_bytes()).collect::<String>()
            ),
        ];
        for t in &texts {
            let out = s.scrub(t);
            assert!(out.contains("***"), "{t} -> {out}");
            assert!(!out.contains(secret), "{out}");
        }
        // Nothing else is touched; short values are not looked for.
        assert_eq!(
            s.scrub("HTTP 500: upstream down"),
            "HTTP 500: upstream down"
        );
        assert!(Scrubber::new(["abc"]).is_empty());
        let pem = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQ\n-----END KEY-----\n";
        assert_eq!(
            Scrubber::new([pem])
                .scrub("got MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQ here"),
            "got *** here"
        );
    }
}
