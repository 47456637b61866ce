//! Webhook signatures: verifying never panics whatever the headers, body, secrets and clock;
//! what a sender signs verifies, and any change to the body or the signature does not.
//! (Signatures are compared with `hmac`'s constant-time `verify_slice`, see `signature.rs`.)

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

use crate::signature::{sign, verify, HmacSpec, Scheme, SigEncoding, SignatureError};

fn scheme() -> impl Strategy<Value = Scheme> {
    prop_oneof![
        Just(Scheme::Stripe),
        Just(Scheme::Github),
        Just(Scheme::StandardWebhooks),
        (any::<bool>(), "[a-z=]{0,8}").prop_map(|(hex, prefix)| Scheme::HmacSha256(HmacSpec {
            header: "x-signature".into(),
            encoding: if hex {
                SigEncoding::Hex
            } else {
                SigEncoding::Base64
            },
            prefix,
        })),
    ]
}

/// Header names every scheme reads, and some it does not.
fn header_name() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "stripe-signature",
        "x-hub-signature-256",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "svix-id",
        "svix-timestamp",
        "svix-signature",
        "x-signature",
        "x-other",
    ])
}

/// Header values: random bytes, and fragments of every scheme's syntax.
fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..80),
        prop::collection::vec(
            prop::sample::select(vec![
                "t=",
                "v1=",
                ",",
                "sha256=",
                "v1,",
                " ",
                "=",
                "ff",
                "zz",
                "AAAA",
                "====",
                "1700000000",
                "-1",
                "99999999999999999999",
                "9223372036854775807",
                "-9223372036854775808",
                "whsec_",
            ]),
            0..10
        )
        .prop_map(|p| p.concat().into_bytes()),
    ]
}

/// Header names and raw values.
type Headers = Vec<(&'static str, Vec<u8>)>;

fn headers(pairs: &[(&'static str, Vec<u8>)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            h.append(HeaderName::from_static(k), v);
        }
    }
    h
}

proptest! {
    #[test]
    fn verifying_never_panics(
        scheme in scheme(),
        tolerance in any::<u64>(),
        pairs in prop::collection::vec((header_name(), header_value()), 0..8),
        body in prop::collection::vec(any::<u8>(), 0..200),
        secrets in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..3),
        now in any::<i64>(),
    ) {
        let keys: Vec<&[u8]> = secrets.iter().map(Vec::as_slice).collect();
        let _ = verify(&scheme, tolerance, &headers(&pairs), &body, &keys, now);
    }

    #[test]
    fn what_is_signed_verifies_and_any_change_does_not(
        secret in "[a-zA-Z0-9_]{1,40}",
        body in prop::collection::vec(any::<u8>(), 1..200),
        flip in any::<prop::sample::Index>(),
        t in 1_000_000_000i64..4_000_000_000,
        hex in any::<bool>(),
    ) {
        let encoding = if hex { SigEncoding::Hex } else { SigEncoding::Base64 };
        let spec = Scheme::HmacSha256(HmacSpec { header: "x-signature".into(), encoding, prefix: "sha256=".into() });
        let sig = format!("sha256={}", sign::hmac_sha256(&secret, &body, encoding));
        let cases: Vec<(Scheme, Headers)> = vec![
            (Scheme::Stripe, vec![("stripe-signature", sign::stripe(&secret, t, &body).into_bytes())]),
            (Scheme::Github, vec![("x-hub-signature-256", sign::github(&secret, &body).into_bytes())]),
            (spec, vec![("x-signature", sig.into_bytes())]),
        ];
        let mut changed = body.clone();
        let i = flip.index(changed.len());
        changed[i] ^= 0x01;
        for (scheme, pairs) in cases {
            let h = headers(&pairs);
            prop_assert_eq!(verify(&scheme, 300, &h, &body, &[secret.as_bytes()], t), Ok(()));
            prop_assert_eq!(
                verify(&scheme, 300, &h, &changed, &[secret.as_bytes()], t),
                Err(SignatureError::Mismatch)
            );
            prop_assert!(verify(&scheme, 300, &h, &body, &[b"another secret"], t).is_err());
        }
    }
}
