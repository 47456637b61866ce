//! The admin token: with `http.adminToken` set, the status page, `/metrics` and `/api/*` need
//! `Authorization: Bearer <token>`, compared in constant time; anything else is 401. `GET /`
//! without it gets the status page itself with the 401 (it holds no data: it asks for the
//! token, keeps it in the tab and sends it with every API call).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::auth::SecretString;

/// Whether `headers` carry `Authorization: Bearer <token>`. Both sides are hashed first, so
/// the comparison takes the same time whatever the length or content of the guess.
pub fn authorized(headers: &HeaderMap, token: &SecretString) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
    else {
        return false;
    };
    let a = Sha256::digest(given.trim().as_bytes());
    let b = Sha256::digest(token.expose().as_bytes());
    a.ct_eq(&b).into()
}

/// The middleware of the admin side.
pub async fn require(
    State(token): State<Option<Arc<SecretString>>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(token) = token else {
        return next.run(req).await;
    };
    if authorized(req.headers(), &token) {
        return next.run(req).await;
    }
    let challenge = (header::WWW_AUTHENTICATE, "Bearer realm=\"hms-sync\"");
    if req.uri().path() == "/" {
        return (
            StatusCode::UNAUTHORIZED,
            [
                challenge,
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            Body::from(super::status::STATUS_PAGE),
        )
            .into_response();
    }
    (
        StatusCode::UNAUTHORIZED,
        [challenge],
        axum::Json(serde_json::json!({
            "error": "this needs Authorization: Bearer <token> (the admin token of http.adminToken)"
        })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let t = SecretString::new("s3cret-token-0123".into());
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::AUTHORIZATION, v.parse().unwrap());
            m
        };
        assert!(authorized(&h("Bearer s3cret-token-0123"), &t));
        assert!(!authorized(&h("Bearer s3cret-token-012"), &t));
        assert!(!authorized(&h("Bearer s3cret-token-01234"), &t));
        assert!(!authorized(&h("Basic s3cret-token-0123"), &t));
        assert!(!authorized(&h("s3cret-token-0123"), &t));
        assert!(!authorized(&HeaderMap::new(), &t));
    }
}
