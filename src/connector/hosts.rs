//! The hosts a connector writes out (its target, its lookup, its token endpoints) checked
//! against the outbound address policy when it is loaded: a denied literal address (or a name
//! the policy can never let through) is refused with its `file:line:col`.

use super::model::{AnyConnector, Connector, LookupAuth};
use super::problems::Problem;
use super::rules::authority_of;
use super::yaml_pos::Positions;
use crate::auth::{Auth, Provider};
use crate::policy::AddressPolicy;

/// Every `(key path, host)` written out in an outbound connector.
pub fn literal_hosts(c: &Connector) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut url = |key: &str, u: &str| {
        let (authority, templated) = authority_of(u);
        if templated {
            return;
        }
        if let Some(h) = url::Url::parse(authority)
            .ok()
            .and_then(|p| p.host_str().map(str::to_string))
        {
            out.push((key.to_string(), h));
        }
    };
    url("map.to.url", c.target.url.source());
    if let Some(l) = &c.lookup {
        url("lookup.url", l.url.source());
    }
    let mut auth = |at: &str, a: &Auth| match &a.provider {
        Provider::OAuth2 { token_url, .. } => url(&format!("{at}.tokenUrl"), token_url),
        Provider::ArcgisGenerate { url: u, .. } => url(&format!("{at}.url"), u),
        _ => {}
    };
    if let Some(a) = &c.auth {
        auth("auth", a);
    }
    if let Some(LookupAuth::Own(a)) = c.lookup.as_ref().map(|l| &l.auth) {
        auth("lookup.auth", a);
    }
    out
}

/// The problems of one loaded connector (its `file` and `text`) under `policy`.
pub fn policy_problems(
    c: &AnyConnector,
    file: &str,
    text: &str,
    policy: &AddressPolicy,
) -> Vec<Problem> {
    let AnyConnector::Outbound(c) = c else {
        return vec![];
    };
    let hosts = literal_hosts(c);
    if hosts.is_empty() {
        return vec![];
    }
    let positions = Positions::scan(text).ok();
    hosts
        .into_iter()
        .filter_map(|(key, host)| {
            let denied = policy.literal_problem(&host)?;
            let pos = positions
                .as_ref()
                .map(|p| p.value(&key))
                .unwrap_or_default();
            Some(Problem {
                file: file.to_string(),
                pos,
                message: format!("{key}: {denied}"),
            })
        })
        .collect()
}
