//! The outbound address policy (SSRF): which hosts and addresses connectors may call, host
//! patterns (`*.arcgis.com`), and which targets go through the proxy (`NO_PROXY` rules). Pure.
//!
//! A request passes when no deny rule matches its host name or any address it resolves to,
//! and, when an allow list is set, its host name matches an allowed name or every address is in
//! an allowed network. Deny wins. The built-in deny list holds the link-local networks (where
//! cloud metadata services answer), `0.0.0.0/8` and `fd00:ec2::254`.

use std::fmt;
use std::net::IpAddr;

/// Networks no connector may call, whatever the config says.
pub const BUILT_IN_DENY: &[&str] = &["169.254.0.0/16", "fe80::/10", "0.0.0.0/8", "fd00:ec2::254"];

/// A host name pattern: `api.stripe.com`, or `*.arcgis.com` (any name below `arcgis.com`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// Lower-case, without a trailing dot; for a wildcard, the part after `*.`.
    name: String,
    wildcard: bool,
}

impl HostPattern {
    /// Parses `name` or `*.name`; `None` when it is neither.
    pub fn parse(s: &str) -> Option<HostPattern> {
        let s = s.trim().trim_end_matches('.').to_ascii_lowercase();
        let (name, wildcard) = match s.strip_prefix("*.") {
            Some(rest) => (rest.to_string(), true),
            None => (s, false),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        (!name.is_empty() && name.split('.').all(label_ok))
            .then_some(HostPattern { name, wildcard })
    }

    /// Whether `host` (a name as in a URL) matches.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if self.wildcard {
            host.len() > self.name.len() + 1
                && host.ends_with(&self.name)
                && host.as_bytes()[host.len() - self.name.len() - 1] == b'.'
        } else {
            host == self.name
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            write!(f, "*.{}", self.name)
        } else {
            f.write_str(&self.name)
        }
    }
}

/// An IP network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// Parses `10.0.0.0/8`, `fe80::/10`, or one address (a network of one).
    pub fn parse(s: &str) -> Option<Network> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim_matches(['[', ']']).parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Network { addr, prefix })
    }

    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let max = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.prefix == max {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// An IPv4-mapped IPv6 address as IPv4; any other address as it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// One entry of `outbound.allow` / `outbound.deny`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    Name(HostPattern),
    Net(Network),
}

impl Rule {
    /// Parses a host name (leading `*.` allowed), an IP address or a CIDR network.
    pub fn parse(s: &str) -> Result<Rule, String> {
        if let Some(n) = Network::parse(s) {
            return Ok(Rule::Net(n));
        }
        if s.contains('/') || s.contains(':') {
            return Err(format!(
                "`{s}` is not a valid IP network (expected e.g. 10.20.0.0/16 or fd00::/8)"
            ));
        }
        HostPattern::parse(s).map(Rule::Name).ok_or_else(|| {
            format!("`{s}`: expected a host name (`*.` allowed in front), an IP address or a CIDR network")
        })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Name(p) => p.fmt(f),
            Rule::Net(n) => n.fmt(f),
        }
    }
}

/// How every refusal's text begins.
pub const REFUSAL: &str = "refused by the outbound address policy";

/// Whether an error text carries a refusal of the policy (a token endpoint's failure, told by
/// the token service as text).
pub fn is_refusal(text: &str) -> bool {
    text.contains(REFUSAL)
}

/// Why a call was refused by the policy. Names the host and the rule, never anything else.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused by the outbound address policy: {host}{} {why}", .addr.map(|a| format!(" ({a})")).unwrap_or_default())]
pub struct Denied {
    pub host: String,
    /// The address that was refused, when it was one.
    pub addr: Option<IpAddr>,
    pub why: String,
}

/// The compiled outbound policy.
#[derive(Debug, Clone)]
pub struct AddressPolicy {
    /// The built-in list, then `outbound.deny`, each with where it comes from.
    deny: Vec<(Rule, &'static str)>,
    /// `outbound.allow`, when set.
    allow: Option<Vec<Rule>>,
}

impl Default for AddressPolicy {
    fn default() -> Self {
        AddressPolicy::new(&[], None).unwrap_or(AddressPolicy {
            deny: vec![],
            allow: None,
        })
    }
}

impl AddressPolicy {
    /// Compiles `outbound.deny` and `outbound.allow`; errors name the entry (`deny[1]: ...`).
    pub fn new(deny: &[String], allow: Option<&[String]>) -> Result<AddressPolicy, Vec<String>> {
        let mut errors = Vec::new();
        let mut rules: Vec<(Rule, &'static str)> = BUILT_IN_DENY
            .iter()
            .filter_map(|s| Rule::parse(s).ok())
            .map(|r| (r, "the built-in deny list"))
            .collect();
        for (i, s) in deny.iter().enumerate() {
            match Rule::parse(s) {
                Ok(r) => rules.push((r, "outbound.deny")),
                Err(e) => errors.push(format!("deny[{i}]: {e}")),
            }
        }
        let allow = allow.map(|list| {
            list.iter()
                .enumerate()
                .filter_map(|(i, s)| match Rule::parse(s) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        errors.push(format!("allow[{i}]: {e}"));
                        None
                    }
                })
                .collect()
        });
        if errors.is_empty() {
            Ok(AddressPolicy { deny: rules, allow })
        } else {
            Err(errors)
        }
    }

    fn denied(host: &str, addr: Option<IpAddr>, why: String) -> Denied {
        Denied {
            host: host.to_string(),
            addr,
            why,
        }
    }

    /// The checks that need no name resolution: a deny rule naming `host`, or `host` being an
    /// IP address the policy refuses. `Ok(true)` when `host` is an IP address (nothing to
    /// resolve), `Ok(false)` for a name.
    pub fn check_host(&self, host: &str) -> Result<bool, Denied> {
        let bare = host.trim_matches(['[', ']']);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            self.check(bare, &[ip])?;
            return Ok(true);
        }
        for (rule, from) in &self.deny {
            if let Rule::Name(p) = rule {
                if p.matches(host) {
                    return Err(Self::denied(host, None, format!("matches `{p}` of {from}")));
                }
            }
        }
        Ok(false)
    }

    /// The whole check: `host` and every address it resolved to (`addrs`; for an IP address
    /// host, that address).
    pub fn check(&self, host: &str, addrs: &[IpAddr]) -> Result<(), Denied> {
        for (rule, from) in &self.deny {
            match rule {
                Rule::Name(p) if p.matches(host) => {
                    return Err(Self::denied(host, None, format!("matches `{p}` of {from}")))
                }
                Rule::Net(n) => {
                    if let Some(a) = addrs.iter().find(|a| n.contains(**a)) {
                        return Err(Self::denied(host, Some(*a), format!("is in {n} of {from}")));
                    }
                }
                Rule::Name(_) => {}
            }
        }
        let Some(allow) = &self.allow else {
            return Ok(());
        };
        let by_name = allow
            .iter()
            .any(|r| matches!(r, Rule::Name(p) if p.matches(host)));
        if by_name {
            return Ok(());
        }
        let outside = addrs.iter().find(|a| {
            !allow
                .iter()
                .any(|r| matches!(r, Rule::Net(n) if n.contains(**a)))
        });
        match (addrs.is_empty(), outside) {
            (false, None) => Ok(()),
            (_, outside) => Err(Self::denied(
                host,
                outside.copied(),
                "is not in outbound.allow".to_string(),
            )),
        }
    }

    /// What `validate` can tell about a host written in a connector without resolving it:
    /// refused when it is a denied (or not allowed) IP address, matches a deny name, or can
    /// never pass the allow list (no allowed name matches and the list has no networks).
    pub fn literal_problem(&self, host: &str) -> Option<Denied> {
        match self.check_host(host) {
            Err(d) => return Some(d),
            Ok(true) => return None,
            Ok(false) => {}
        }
        let allow = self.allow.as_ref()?;
        let by_name = allow
            .iter()
            .any(|r| matches!(r, Rule::Name(p) if p.matches(host)));
        let has_nets = allow.iter().any(|r| matches!(r, Rule::Net(_)));
        (!by_name && !has_nets).then(|| {
            Self::denied(
                host,
                None,
                "matches no host name of outbound.allow".to_string(),
            )
        })
    }
}

/// An entry of `allowHosts`: a host pattern (or IP address) with an optional `:port`. Without
/// a port only the scheme's default port (443 for https, 80 for http) matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    host: HostPattern,
    /// An IP address entry, compared as an address.
    ip: Option<IpAddr>,
    port: Option<u16>,
}

impl HostPort {
    /// Parses `host`, `*.host`, `host:port`, `10.0.0.1:8080`, `[fd00::1]:8443`.
    pub fn parse(s: &str) -> Option<HostPort> {
        let s = s.trim();
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, tail) = rest.split_once(']')?;
            let port = match tail.strip_prefix(':') {
                Some(p) => Some(p.parse().ok()?),
                None if tail.is_empty() => None,
                None => return None,
            };
            (h, port)
        } else {
            match s.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h, Some(p.parse().ok()?)),
                _ => (s, None),
            }
        };
        let ip = host.parse::<IpAddr>().ok();
        let pattern = match ip {
            Some(a) => HostPattern {
                name: a.to_string(),
                wildcard: false,
            },
            None => HostPattern::parse(host)?,
        };
        Some(HostPort {
            host: pattern,
            ip,
            port,
        })
    }

    /// Whether a URL's host and port (its scheme's default when none is written) match.
    pub fn matches(&self, host: &str, port: Option<u16>, scheme: &str) -> bool {
        let default = match scheme {
            "https" => Some(443),
            "http" => Some(80),
            _ => None,
        };
        let port_ok = match self.port {
            Some(p) => port.or(default) == Some(p),
            None => port.is_none() || port == default,
        };
        let bare = host.trim_matches(['[', ']']);
        let host_ok = match (self.ip, bare.parse::<IpAddr>().ok()) {
            (Some(want), Some(got)) => canonical(want) == canonical(got),
            (Some(_), None) | (None, Some(_)) => false,
            (None, None) => self.host.matches(host),
        };
        port_ok && host_ok
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.ip, self.port) {
            (Some(IpAddr::V6(a)), Some(p)) => write!(f, "[{a}]:{p}"),
            (_, Some(p)) => write!(f, "{}:{p}", self.host),
            (_, None) => write!(f, "{}", self.host),
        }
    }
}

/// Which targets bypass the proxy: `NO_PROXY` syntax (comma-separated; `*` for all; a name
/// matches itself and every name below it, a leading `.` or `*.` changes nothing; IP
/// addresses and CIDR networks match addresses written in the URL).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    all: bool,
    names: Vec<String>,
    nets: Vec<Network>,
}

impl NoProxy {
    /// Parses a `NO_PROXY` value (also used for `outbound.noProxy` entries joined by commas).
    pub fn parse(list: &str) -> NoProxy {
        let mut out = NoProxy::default();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry == "*" {
                out.all = true;
            } else if let Some(n) = Network::parse(entry) {
                out.nets.push(n);
            } else {
                let name = entry
                    .trim_start_matches("*.")
                    .trim_start_matches('.')
                    .to_ascii_lowercase();
                // `host:port` entries: the port is not compared.
                let name = match name.rsplit_once(':') {
                    Some((n, p)) if p.bytes().all(|b| b.is_ascii_digit()) => n.to_string(),
                    _ => name,
                };
                out.names.push(name);
            }
        }
        out
    }

    /// Whether a request to `host` goes straight to it.
    pub fn bypasses(&self, host: &str) -> bool {
        if self.all {
            return true;
        }
        let bare = host.trim_matches(['[', ']']);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return self.nets.iter().any(|n| n.contains(ip));
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.names.iter().any(|n| {
            host == *n
                || (host.len() > n.len()
                    && host.ends_with(n.as_str())
                    && host.as_bytes()[host.len() - n.len() - 1] == b'.')
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn host_patterns() {
        let cases = [
            ("*.arcgis.com", "services.arcgis.com", true),
            ("*.arcgis.com", "a.b.arcgis.com", true),
            ("*.arcgis.com", "arcgis.com", false),
            ("*.arcgis.com", "evilarcgis.com", false),
            ("*.arcgis.com", "services.arcgis.com.evil.example", false),
            ("api.stripe.com", "API.Stripe.com.", true),
            ("api.stripe.com", "x.api.stripe.com", false),
        ];
        for (p, host, want) in cases {
            assert_eq!(
                HostPattern::parse(p).unwrap().matches(host),
                want,
                "{p} {host}"
            );
        }
        for bad in ["", "*.", "a b", "*", "a..b", "http://x"] {
            assert!(HostPattern::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn networks() {
        let n = Network::parse("10.20.0.0/16").unwrap();
        assert!(n.contains("10.20.3.4".parse().unwrap()));
        assert!(!n.contains("10.21.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.20.0.9".parse().unwrap()));
        let v6 = Network::parse("fe80::/10").unwrap();
        assert!(v6.contains("fe80::1".parse().unwrap()));
        assert!(!v6.contains("fec0::1".parse().unwrap()));
        assert!(Network::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Network::parse("10.0.0.0/33").is_none());
        assert!(Network::parse("10.0.0/8").is_none());
        assert_eq!(
            Network::parse("fd00:ec2::254").unwrap().to_string(),
            "fd00:ec2::254"
        );
        assert!(Rule::parse("10.0.0.0/99").is_err());
        assert!(Rule::parse("not a host").is_err());
    }

    #[test]
    fn the_decision_table() {
        let p = AddressPolicy::new(
            &["192.168.0.0/16".into(), "*.internal.example".into()],
            Some(&[
                "*.arcgis.com".into(),
                "api.stripe.com".into(),
                "10.20.0.0/16".into(),
            ]),
        )
        .unwrap();
        let cases: &[(&str, &[&str], bool)] = &[
            ("services.arcgis.com", &["52.1.2.3"], true),
            ("api.stripe.com", &["54.1.2.3"], true),
            ("gis.agency", &["10.20.1.1"], true),
            ("gis.agency", &["10.20.1.1", "10.30.0.1"], false),
            ("other.example", &["52.1.2.3"], false),
            // Deny wins, for names and for addresses (DNS rebinding to metadata).
            ("services.arcgis.com", &["169.254.169.254"], false),
            ("services.arcgis.com", &["192.168.1.1"], false),
            ("x.internal.example", &["10.20.1.1"], false),
            ("meta", &["fd00:ec2::254"], false),
            ("meta", &["::ffff:169.254.169.254"], false),
            ("zero", &["0.0.0.0"], false),
        ];
        for (host, addrs, want) in cases {
            assert_eq!(
                p.check(host, &ips(addrs)).is_ok(),
                *want,
                "{host} {addrs:?}"
            );
        }
        let open = AddressPolicy::new(&[], None).unwrap();
        assert!(open.check("x", &ips(&["127.0.0.1"])).is_ok());
        assert!(open.check("x", &ips(&["169.254.169.254"])).is_err());
        let err = open
            .check("meta.example", &ips(&["169.254.169.254"]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "refused by the outbound address policy: meta.example (169.254.169.254) is in 169.254.0.0/16 of the built-in deny list"
        );
    }

    #[test]
    fn what_validate_can_tell_without_resolving() {
        let p = AddressPolicy::new(&["127.0.0.0/8".into()], None).unwrap();
        assert!(p.literal_problem("127.0.0.1").is_some());
        assert!(p.literal_problem("[::ffff:127.0.0.1]").is_some());
        assert!(p.literal_problem("169.254.169.254").is_some());
        assert!(p.literal_problem("localhost").is_none());
        let names_only = AddressPolicy::new(&[], Some(&["*.arcgis.com".into()])).unwrap();
        assert!(names_only.literal_problem("api.stripe.com").is_some());
        assert!(names_only.literal_problem("services.arcgis.com").is_none());
        assert!(names_only.literal_problem("52.1.2.3").is_some());
        let with_nets = AddressPolicy::new(&[], Some(&["10.0.0.0/8".into()])).unwrap();
        assert!(with_nets.literal_problem("gis.agency").is_none());
        assert!(with_nets.literal_problem("10.1.1.1").is_none());
        assert!(with_nets.literal_problem("11.1.1.1").is_some());
        let errors =
            AddressPolicy::new(&["10.0.0.0/40".into()], Some(&["a b".into()])).unwrap_err();
        assert_eq!(errors.len(), 2);
        assert!(errors[0].starts_with("deny[0]:"), "{errors:?}");
        assert!(errors[1].starts_with("allow[0]:"), "{errors:?}");
    }

    #[test]
    fn allow_host_entries() {
        let p = |s: &str| HostPort::parse(s).unwrap();
        assert!(p("*.arcgis.com").matches("services.arcgis.com", None, "https"));
        assert!(p("*.arcgis.com").matches("services.arcgis.com", Some(443), "https"));
        assert!(!p("*.arcgis.com").matches("services.arcgis.com", Some(8443), "https"));
        assert!(p("gis.agency:8443").matches("gis.agency", Some(8443), "https"));
        assert!(!p("gis.agency:8443").matches("gis.agency", None, "https"));
        assert!(p("10.0.0.5:8080").matches("10.0.0.5", Some(8080), "http"));
        assert!(p("[fd00::1]:8443").matches("[fd00::1]", Some(8443), "https"));
        assert!(!p("api.example.com").matches("evil.example", None, "https"));
        assert!(HostPort::parse("a b").is_none());
        assert!(HostPort::parse("host:port").is_none());
    }

    #[test]
    fn no_proxy_rules() {
        let n = NoProxy::parse("localhost, .agency.gov, 10.0.0.0/8, *.corp, host:8080");
        for (host, want) in [
            ("localhost", true),
            ("gis.agency.gov", true),
            ("agency.gov", true),
            ("notagency.gov", false),
            ("10.1.2.3", true),
            ("11.1.2.3", false),
            ("a.corp", true),
            ("host", true),
            ("api.stripe.com", false),
        ] {
            assert_eq!(n.bypasses(host), want, "{host}");
        }
        assert!(NoProxy::parse("*").bypasses("anything"));
        assert!(!NoProxy::parse("").bypasses("anything"));
    }
}
