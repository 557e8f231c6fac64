//! Browser boundaries: which web pages may use the subscriber endpoints, and the CORS and
//! frame headers that let exactly those pages in.
//!
//! Any web page can make a browser open a WebSocket, an `EventSource` or a frame to Herald;
//! the browser then says where the page came from in `Origin` (or, for frame navigations,
//! only in `Referer`). Requests without either are not from a browser page and are allowed.
//! A browser origin is allowed if it is the server's own (same host and port as `Host`,
//! whatever the scheme, since Herald may sit behind a TLS proxy) or on the allowlist
//! (`--allowed-origins`). Everything else is refused with 403 before any subscription is made:
//! this is what stops cross-site WebSocket hijacking. For allowed origins, responses carry
//! the CORS headers that let the page read them, and the forever iframe carries
//! `Content-Security-Policy: frame-ancestors` so only allowed pages can embed it.
//! All of this is decided per request from headers; nothing is kept per connection.

use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};

use crate::config::ConfigError;
use crate::http::{boxed, ApiError, Body};

/// How long browsers may cache a preflight answer, in seconds.
const PREFLIGHT_MAX_AGE: &str = "600";
/// Request headers a cross-site page may send (resume position and bearer tokens).
const ALLOWED_HEADERS: &str = "Authorization, Last-Event-ID";
/// Longest origin text quoted back in an error.
const MAX_QUOTED: usize = 200;

/// An origin: scheme, host and port (`None` for the scheme's default port).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Origin {
    /// Parses `scheme://host[:port]`, lowercased, with a default port dropped. With `lenient`,
    /// anything from the first `/`, `?` or `#` after the host is ignored (a `Referer` URL).
    fn parse(text: &str, lenient: bool) -> Option<Self> {
        let (scheme, rest) = text.split_once("://")?;
        let mut chars = scheme.chars();
        let scheme_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !scheme_ok {
            return None;
        }
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if !lenient && end != rest.len() && &rest[end..] != "/" {
            return None;
        }
        let authority = &rest[..end];
        let (host, port) = match authority.rfind(':') {
            // `[::1]:80` has its port after the bracket; `[::1]` has none.
            Some(i) if !authority[i..].contains(']') => {
                let port = authority[i + 1..].parse::<u16>().ok()?;
                (&authority[..i], Some(port))
            }
            _ => (authority, None),
        };
        let host_ok = !host.is_empty()
            && host.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':' | '*')
            });
        if !host_ok {
            return None;
        }
        let scheme = scheme.to_ascii_lowercase();
        let port = port.filter(|p| Some(*p) != default_port(&scheme));
        Some(Self {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    fn serialize(&self) -> String {
        match self.port {
            Some(port) => format!("{}://{}:{port}", self.scheme, self.host),
            None => format!("{}://{}", self.scheme, self.host),
        }
    }

    /// True when this origin names the server the request was sent to (`Host`).
    fn is_host(&self, host_header: &str) -> bool {
        let host_header = host_header.to_ascii_lowercase();
        let (host, port) = match host_header.rfind(':') {
            Some(i) if !host_header[i..].contains(']') => {
                match host_header[i + 1..].parse::<u16>() {
                    Ok(port) => (&host_header[..i], Some(port)),
                    Err(_) => return false,
                }
            }
            _ => (host_header.as_str(), None),
        };
        let port = port.filter(|p| Some(*p) != default_port(&self.scheme));
        host == self.host && port == self.port
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// One allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// Exactly this origin.
    Exact(Origin),
    /// `scheme://*.suffix[:port]`: any subdomain of `suffix` (not `suffix` itself).
    Subdomains(Origin),
    /// The opaque origin `null` (sandboxed frames, `file:` pages).
    Null,
}

impl Entry {
    fn matches(&self, origin: &Origin) -> bool {
        match self {
            Self::Exact(allowed) => allowed == origin,
            Self::Subdomains(allowed) => {
                allowed.scheme == origin.scheme
                    && allowed.port == origin.port
                    && origin
                        .host
                        .strip_suffix(&allowed.host)
                        .is_some_and(|sub| !sub.is_empty())
            }
            Self::Null => false,
        }
    }
}

/// The resolved allowlist and the headers derived from it. See the module documentation.
#[derive(Debug)]
pub struct OriginPolicy {
    any: bool,
    entries: Vec<Entry>,
    credentials: bool,
    frame_ancestors: HeaderValue,
}

impl OriginPolicy {
    /// The policy for `allowed` origins (`*`, `null`, `scheme://host[:port]`,
    /// `scheme://*.domain[:port]`), with credentialed CORS or not. Errors name the entry that
    /// is not an origin, or refuse credentials for `*` (any site could then read with the
    /// user's credentials).
    pub fn new(allowed: &[String], credentials: bool) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            name: "allowed_origins",
            message,
        };
        let mut any = false;
        let mut entries = Vec::new();
        for text in allowed {
            let text = text.trim();
            match text {
                "*" => any = true,
                "null" => entries.push(Entry::Null),
                _ => {
                    let origin = Origin::parse(text, false).ok_or_else(|| {
                        invalid(format!("{text:?} is not an origin; expected scheme://host[:port], scheme://*.domain or *"))
                    })?;
                    let entry = match origin.host.strip_prefix("*.") {
                        Some(domain) if !domain.contains('*') && !domain.is_empty() => {
                            Entry::Subdomains(Origin {
                                host: format!(".{domain}"),
                                ..origin
                            })
                        }
                        _ if origin.host.contains('*') => {
                            return Err(invalid(format!(
                                "{text:?}: a wildcard is only allowed as the first label (https://*.example.com)"
                            )))
                        }
                        _ => Entry::Exact(origin),
                    };
                    entries.push(entry);
                }
            }
        }
        if credentials && any {
            return Err(ConfigError::Invalid {
                name: "cors_credentials",
                message: "cannot be combined with allowed_origins = \"*\" (any site could read with the user's credentials)".into(),
            });
        }
        let frame_ancestors = frame_ancestors(any, &entries);
        Ok(Self {
            any,
            entries,
            credentials,
            frame_ancestors,
        })
    }

    /// Decides whether the request may proceed. `Ok(Some(origin))`: a browser page sent an
    /// allowed `Origin`, to be echoed in the CORS headers; `Ok(None)`: no `Origin` (a
    /// non-browser client, or a navigation whose `Referer` is allowed or absent).
    pub fn check(&self, headers: &HeaderMap) -> Result<Option<HeaderValue>, ApiError> {
        if let Some(value) = headers.get(header::ORIGIN) {
            // Browsers send a serialized origin or `null`; anything else is refused.
            let text = value.to_str().unwrap_or("");
            let allowed = if text == "null" {
                self.any || self.entries.contains(&Entry::Null)
            } else {
                Origin::parse(text, false).is_some_and(|origin| self.allows(&origin, headers))
            };
            return if allowed {
                Ok(Some(value.clone()))
            } else {
                Err(refused(text))
            };
        }
        // Browsers always send a URL; a `Referer` that is not one (`-`, junk from some other
        // client) tells nothing about a page and is ignored.
        let referer = headers
            .get(header::REFERER)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| Origin::parse(text, true));
        match referer {
            Some(origin) if !self.allows(&origin, headers) => Err(refused(&origin.serialize())),
            _ => Ok(None),
        }
    }

    fn allows(&self, origin: &Origin, headers: &HeaderMap) -> bool {
        let same_origin = || {
            headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .is_some_and(|host| origin.is_host(host))
        };
        self.any || same_origin() || self.entries.iter().any(|e| e.matches(origin))
    }

    /// Adds the CORS headers for an allowed `origin` to a response of a subscriber endpoint.
    pub fn allow(&self, response: &mut Response<Body>, origin: HeaderValue) {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED_HEADERS),
        );
        if self.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }

    /// The answer to an `OPTIONS` request on a subscriber endpoint whose origin passed
    /// [`check`](Self::check): 204 with what cross-site pages may send, or 403 for a method
    /// other than `GET`.
    pub fn preflight(&self, headers: &HeaderMap) -> Result<Response<Body>, ApiError> {
        if let Some(method) = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD) {
            if method.as_bytes() != Method::GET.as_str().as_bytes() {
                return Err(ApiError::Forbidden(format!(
                    "method {} not allowed from browsers; use GET",
                    String::from_utf8_lossy(method.as_bytes())
                        .chars()
                        .take(32)
                        .collect::<String>()
                )));
            }
        }
        let mut response = Response::new(boxed(http_body_util::Empty::new()));
        *response.status_mut() = StatusCode::NO_CONTENT;
        let out = response.headers_mut();
        out.insert(header::ALLOW, HeaderValue::from_static("GET, OPTIONS"));
        if headers.contains_key(header::ORIGIN) {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET"),
            );
            out.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(ALLOWED_HEADERS),
            );
            out.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static(PREFLIGHT_MAX_AGE),
            );
        }
        Ok(response)
    }

    /// `Content-Security-Policy` value for the forever iframe: `frame-ancestors` with the
    /// server itself and the allowlist.
    pub fn frame_ancestors(&self) -> &HeaderValue {
        &self.frame_ancestors
    }
}

/// Response headers a cross-site page may read.
const EXPOSED_HEADERS: &str = "X-Herald-Cursor, X-Herald-Gap";

/// Marks a response of a subscriber endpoint as depending on `Origin` (for caches).
pub fn vary_origin(response: &mut Response<Body>) {
    response
        .headers_mut()
        .append(header::VARY, HeaderValue::from_static("Origin"));
}

fn frame_ancestors(any: bool, entries: &[Entry]) -> HeaderValue {
    let mut value = String::from("frame-ancestors");
    if any {
        value.push_str(" *");
    } else {
        value.push_str(" 'self'");
        for entry in entries {
            match entry {
                Entry::Exact(origin) => {
                    value.push(' ');
                    value.push_str(&origin.serialize());
                }
                Entry::Subdomains(origin) => {
                    value.push(' ');
                    value.push_str(
                        &Origin {
                            host: format!("*{}", origin.host),
                            ..origin.clone()
                        }
                        .serialize(),
                    );
                }
                // CSP has no source expression for the opaque origin.
                Entry::Null => {}
            }
        }
    }
    HeaderValue::from_str(&value)
        .unwrap_or_else(|_| HeaderValue::from_static("frame-ancestors 'self'"))
}

fn refused(origin: &str) -> ApiError {
    ApiError::Forbidden(format!(
        "origin {} not allowed",
        origin.chars().take(MAX_QUOTED).collect::<String>()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(list: &[&str]) -> OriginPolicy {
        let list: Vec<String> = list.iter().map(|s| (*s).to_string()).collect();
        OriginPolicy::new(&list, false).expect("valid list")
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).expect("value"));
        }
        map
    }

    fn allowed(p: &OriginPolicy, pairs: &[(&'static str, &str)]) -> bool {
        p.check(&headers(pairs)).is_ok()
    }

    #[test]
    fn no_origin_and_same_origin_are_allowed_by_default() {
        let p = policy(&[]);
        assert!(allowed(&p, &[]));
        assert!(allowed(&p, &[("host", "push.example.com")]));
        for (origin, host) in [
            ("http://127.0.0.1:8000", "127.0.0.1:8000"),
            ("https://push.example.com", "push.example.com"),
            ("http://push.example.com", "push.example.com:80"),
            ("https://PUSH.example.com", "push.example.com"),
            ("http://[::1]:8000", "[::1]:8000"),
        ] {
            assert!(
                allowed(&p, &[("origin", origin), ("host", host)]),
                "{origin} on {host}"
            );
        }
        for (origin, host) in [
            ("https://evil.example", "push.example.com"),
            ("http://127.0.0.1:3000", "127.0.0.1:8000"),
            ("http://push.example.com", "push.example.com:8000"),
            ("null", "push.example.com"),
            ("garbage", "push.example.com"),
        ] {
            assert!(
                !allowed(&p, &[("origin", origin), ("host", host)]),
                "{origin} on {host}"
            );
        }
        assert!(!allowed(&p, &[("origin", "https://evil.example")]));
    }

    #[test]
    fn allowlist_entries_match_exactly_or_by_subdomain() {
        let p = policy(&[
            "https://app.example.com",
            "http://localhost:3000/",
            "https://*.example.org",
        ]);
        let host = ("host", "push.example.net");
        for ok in [
            "https://app.example.com",
            "https://app.example.com:443",
            "http://localhost:3000",
            "https://a.example.org",
            "https://a.b.example.org",
        ] {
            assert!(allowed(&p, &[("origin", ok), host]), "{ok}");
        }
        for bad in [
            "http://app.example.com",
            "https://app.example.com:8443",
            "http://localhost:3001",
            "https://example.org",
            "https://evilexample.org",
            "http://a.example.org",
        ] {
            assert!(!allowed(&p, &[("origin", bad), host]), "{bad}");
        }
        assert_eq!(
            p.frame_ancestors(),
            "frame-ancestors 'self' https://app.example.com http://localhost:3000 https://*.example.org"
        );
    }

    #[test]
    fn referer_is_checked_when_there_is_no_origin() {
        let p = policy(&["https://app.example.com"]);
        let host = ("host", "push.example.net");
        assert!(allowed(
            &p,
            &[("referer", "https://app.example.com/chat?room=1"), host]
        ));
        assert!(allowed(
            &p,
            &[("referer", "https://push.example.net/page"), host]
        ));
        assert!(!allowed(&p, &[("referer", "https://evil.example/x"), host]));
        assert!(allowed(&p, &[("referer", "-"), host]), "not a URL: ignored");
    }

    #[test]
    fn star_and_null_and_bad_entries() {
        let p = policy(&["*"]);
        assert!(allowed(&p, &[("origin", "https://anything.example")]));
        assert_eq!(p.frame_ancestors(), "frame-ancestors *");
        let p = policy(&["null"]);
        assert!(allowed(&p, &[("origin", "null")]));
        for bad in [
            "example.com",
            "https://",
            "https://a.example.com/path",
            "https://a.*.example.com",
            "https://x:99999",
        ] {
            assert!(
                OriginPolicy::new(&[bad.to_string()], false).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn exposed_headers_are_the_ones_the_transports_send() {
        use crate::transport::poll::{CURSOR_HEADER, GAP_HEADER};
        let exposed = EXPOSED_HEADERS.to_ascii_lowercase();
        assert!(exposed.contains(CURSOR_HEADER) && exposed.contains(GAP_HEADER));
    }

    #[test]
    fn preflight_allows_get_only() {
        let p = policy(&[]);
        let ok = p
            .preflight(&headers(&[
                ("origin", "http://x"),
                ("access-control-request-method", "GET"),
            ]))
            .expect("allowed");
        assert_eq!(ok.status(), StatusCode::NO_CONTENT);
        assert!(p
            .preflight(&headers(&[
                ("origin", "http://x"),
                ("access-control-request-method", "POST"),
            ]))
            .is_err());
    }
}
