//! Which hosts a producer may name as its own `check_url` (`checks.check_url_hosts`).
//!
//! A per-message `check_url` makes the broker POST to an address a producer chose, from inside
//! the operator's network: without a limit, any producer could make it call internal services
//! or a cloud metadata endpoint (server-side request forgery). So only hosts the operator
//! lists are called; the list is empty by default, which refuses every per-message URL. A
//! group's configured `check_url` is the operator's own choice and is not limited.
//!
//! An entry is `host` (any port) or `host:port`; a host is a name, an IPv4 address or a
//! bracketed IPv6 address, and `*.example.com` matches every name under `example.com` (not
//! `example.com` itself). Hosts are compared after URL normalisation (lower case, IPv4 in dotted
//! form), so `http://2130706433/` is `127.0.0.1`. Names are compared as names: an operator who
//! lists one trusts what it resolves to.

use reqwest::Url;

/// One allowed host.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// This host exactly.
    Exact(String),
    /// Any name ending in this suffix (kept with its leading dot).
    Under(String),
}

/// One entry: a host pattern and, when given, the only port allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    host: HostPattern,
    port: Option<u16>,
}

/// The parsed `check_url_hosts`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CheckUrlHosts(Vec<Entry>);

impl CheckUrlHosts {
    /// Parses the configured entries; the error names the bad one.
    pub(crate) fn parse(entries: &[String]) -> Result<Self, String> {
        entries
            .iter()
            .map(|e| parse_entry(e).ok_or_else(|| bad_entry(e)))
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// True when `url`'s host (and port) is listed.
    pub(crate) fn allows(&self, url: &Url) -> bool {
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return false;
        };
        self.0.iter().any(|e| {
            e.port.is_none_or(|p| p == port)
                && match &e.host {
                    HostPattern::Exact(h) => h == host,
                    HostPattern::Under(suffix) => host.ends_with(suffix.as_str()),
                }
        })
    }

    /// True when the text is a URL whose host is listed.
    pub(crate) fn allows_text(&self, url: &str) -> bool {
        Url::parse(url).is_ok_and(|u| self.allows(&u))
    }
}

/// The port written in an entry's `host[:port]` text: `Some(None)` when there is none, `None`
/// when it is not a port.
fn explicit_port(rest: &str) -> Option<Option<u16>> {
    let after_host = rest.rfind(']').map_or(rest, |i| &rest[i + 1..]);
    match after_host.rfind(':') {
        None => Some(None),
        Some(i) => after_host[i + 1..].parse::<u16>().ok().map(Some),
    }
}

fn bad_entry(e: &str) -> String {
    format!(
        "checks.check_url_hosts: {e:?} is not a host, host:port or *.domain (no scheme, path or \
         credentials)"
    )
}

/// `host`, `host:port`, `*.domain` or `*.domain:port`, normalised as a URL host would be.
fn parse_entry(raw: &str) -> Option<Entry> {
    let raw = raw.trim();
    if raw.is_empty() || raw.contains(['/', '?', '#', '@', '\\']) || raw.contains("://") {
        return None;
    }
    let (wildcard, rest) = match raw.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, raw),
    };
    let url = Url::parse(&format!("http://{rest}/")).ok()?;
    let host = url.host_str().filter(|h| !h.is_empty())?.to_owned();
    // The port as written: `http://host:80/` (or `:080`) parses with no port, as the
    // scheme's default, and the entry would then allow every port.
    let port = explicit_port(rest)?;
    let host = if wildcard {
        if host.starts_with('[') || host.parse::<std::net::Ipv4Addr>().is_ok() {
            return None; // addresses have no names under them
        }
        HostPattern::Under(format!(".{host}"))
    } else {
        HostPattern::Exact(host)
    };
    Some(Entry { host, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(entries: &[&str]) -> CheckUrlHosts {
        CheckUrlHosts::parse(&entries.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
            .expect("valid entries")
    }

    #[test]
    fn an_empty_list_allows_no_url() {
        let none = CheckUrlHosts::default();
        assert!(!none.allows_text("http://127.0.0.1:9000/check"));
        assert!(!none.allows_text("https://hooks.example.com/x"));
    }

    #[test]
    fn a_host_allows_every_port_and_a_host_with_a_port_only_that_port() {
        let h = hosts(&["127.0.0.1", "hooks.example.com:8443"]);
        assert!(h.allows_text("http://127.0.0.1:9000/check?x=1"));
        assert!(h.allows_text("http://127.0.0.1/check"));
        assert!(h.allows_text("https://hooks.example.com:8443/txn"));
        assert!(!h.allows_text("https://hooks.example.com/txn"));
        assert!(!h.allows_text("http://127.0.0.2:9000/check"));
    }

    #[test]
    fn hosts_are_compared_after_url_normalisation() {
        let h = hosts(&["127.0.0.1", "Hooks.Example.COM", "[::1]:9000"]);
        assert!(h.allows_text("http://2130706433/check"), "decimal IPv4");
        assert!(h.allows_text("http://0x7f.0.0.1/check"), "hex IPv4");
        assert!(h.allows_text("https://HOOKS.example.com/x"));
        assert!(h.allows_text("http://[0:0::1]:9000/x"));
        assert!(!h.allows_text("http://[::1]:9001/x"));
    }

    #[test]
    fn a_wildcard_allows_names_under_its_domain_only() {
        let h = hosts(&["*.hooks.example.com"]);
        assert!(h.allows_text("https://orders.hooks.example.com/check"));
        assert!(h.allows_text("https://a.b.hooks.example.com/check"));
        assert!(!h.allows_text("https://hooks.example.com/check"));
        assert!(!h.allows_text("https://evilhooks.example.com/check"));
        assert!(!h.allows_text("https://hooks.example.com.evil.net/check"));
    }

    #[test]
    fn a_listed_host_does_not_allow_names_that_merely_start_with_it() {
        let h = hosts(&["127.0.0.1"]);
        assert!(!h.allows_text("http://127.0.0.1.nip.io/check"));
        assert!(!h.allows_text("http://127.0.0.1@evil.example/check"));
    }

    #[test]
    fn entries_with_a_scheme_path_or_credentials_are_refused() {
        for bad in [
            "",
            "http://127.0.0.1",
            "127.0.0.1/check",
            "user@host",
            "*.127.0.0.1",
            "host:notaport",
            "host:99999",
        ] {
            let err = CheckUrlHosts::parse(&[bad.to_owned()]).expect_err(bad);
            assert!(err.contains("check_url_hosts"), "{err}");
        }
    }

    #[test]
    fn an_explicit_default_port_is_kept() {
        for entry in ["hooks.example.com:80", "hooks.example.com:080"] {
            let h = hosts(&[entry]);
            assert!(h.allows_text("http://hooks.example.com/x"), "{entry}");
            assert!(!h.allows_text("https://hooks.example.com/x"), "{entry}");
            assert!(!h.allows_text("http://hooks.example.com:8080/x"), "{entry}");
        }
        let v6 = hosts(&["[::1]:80"]);
        assert!(v6.allows_text("http://[::1]/x"));
        assert!(!v6.allows_text("http://[::1]:81/x"));
    }
}
