//! Publisher keys: who may call `POST /publish`.
//!
//! Loopback may publish without a key unless `publish-from-loopback` is off; everyone else
//! needs one of the configured keys (several, so keys can be rotated), sent as
//! `Authorization: Bearer KEY` or, for tools that cannot set `Authorization`, as
//! `X-Herald-Key: KEY`. A key that is presented must be valid, from loopback too. Keys are
//! compared in constant time and never written to logs or error messages.

use std::net::SocketAddr;

use http::HeaderMap;

use crate::http::ApiError;

/// The header alternative to `Authorization: Bearer KEY`.
pub const KEY_HEADER: &str = "x-herald-key";

/// The configured publisher keys; see the module documentation.
pub struct PublishKeys {
    keys: Vec<String>,
    from_loopback: bool,
}

impl PublishKeys {
    /// Keys accepted, and whether loopback may publish without one.
    pub fn new(keys: Vec<String>, from_loopback: bool) -> Self {
        Self {
            keys,
            from_loopback,
        }
    }

    /// Decides whether the request may publish: `401` for a wrong or malformed key, `403` for
    /// none where one is needed.
    pub fn authorize(&self, headers: &HeaderMap, peer: SocketAddr) -> Result<(), ApiError> {
        // Another scheme is refused here: a publisher's Authorization is meant for Herald.
        let bearer = super::bearer(headers)
            .map(|key| {
                key.ok_or_else(|| {
                    ApiError::Unauthorized("Authorization must be `Bearer KEY`".into())
                })
            })
            .transpose()?;
        let alternative = headers
            .get(KEY_HEADER)
            .map(|v| {
                v.to_str()
                    .map(str::trim)
                    .map_err(|_| ApiError::Unauthorized("invalid publish key".into()))
            })
            .transpose()?;
        let mut presented = bearer.into_iter().chain(alternative).peekable();
        if presented.peek().is_some() {
            // Every key presented must be valid.
            return if presented.all(|key| self.accepts(key)) {
                Ok(())
            } else {
                Err(ApiError::Unauthorized("invalid publish key".into()))
            };
        }
        let loopback = peer.ip().to_canonical().is_loopback();
        match (loopback, self.from_loopback, self.keys.is_empty()) {
            (true, true, _) => Ok(()),
            (_, _, true) if self.from_loopback => Err(ApiError::Forbidden(
                "publishing is allowed from loopback only (no publish keys are configured)".into(),
            )),
            (_, _, true) => Err(ApiError::Forbidden(
                "publishing is disabled: no publish keys are configured and loopback needs a key"
                    .into(),
            )),
            _ => Err(ApiError::Forbidden(
                "publishing needs a key: `Authorization: Bearer KEY` or `X-Herald-Key: KEY`".into(),
            )),
        }
    }

    fn accepts(&self, key: &str) -> bool {
        // No early exit: every configured key is compared, each in constant time.
        self.keys.iter().fold(false, |found, k| {
            found | constant_time_eq(k.as_bytes(), key.as_bytes())
        })
    }
}

/// Compares secrets without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, HeaderValue::from_static(value));
        }
        h
    }

    #[test]
    fn loopback_publishes_without_a_key_others_need_one() {
        let local: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:1".parse().expect("addr");
        let remote: SocketAddr = "10.0.0.1:1".parse().expect("addr");
        let none = PublishKeys::new(Vec::new(), true);
        let keys = PublishKeys::new(vec!["k1".into(), "k2".into()], true);
        assert!(none.authorize(&headers(&[]), local).is_ok());
        assert!(none.authorize(&headers(&[]), mapped).is_ok());
        assert!(matches!(
            none.authorize(&headers(&[]), remote),
            Err(ApiError::Forbidden(_))
        ));
        assert!(matches!(
            keys.authorize(&headers(&[]), remote),
            Err(ApiError::Forbidden(_))
        ));
        let bearer = headers(&[("authorization", "Bearer k2")]);
        assert!(keys.authorize(&bearer, remote).is_ok());
        let alternative = headers(&[("x-herald-key", "k1")]);
        assert!(keys.authorize(&alternative, remote).is_ok());
        assert!(matches!(
            keys.authorize(&headers(&[("authorization", "Bearer nope")]), remote),
            Err(ApiError::Unauthorized(_))
        ));
        assert!(matches!(
            keys.authorize(&headers(&[("x-herald-key", "nope")]), local),
            Err(ApiError::Unauthorized(_))
        ));
        assert!(matches!(
            keys.authorize(&headers(&[("authorization", "Basic k1")]), local),
            Err(ApiError::Unauthorized(_))
        ));
        let both_one_wrong = headers(&[("authorization", "Bearer k1"), ("x-herald-key", "no")]);
        assert!(keys.authorize(&both_one_wrong, remote).is_err());
    }

    #[test]
    fn loopback_can_be_made_to_need_a_key() {
        let local: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let keys = PublishKeys::new(vec!["k1".into()], false);
        assert!(matches!(
            keys.authorize(&headers(&[]), local),
            Err(ApiError::Forbidden(_))
        ));
        assert!(keys
            .authorize(&headers(&[("x-herald-key", "k1")]), local)
            .is_ok());
        let none = PublishKeys::new(Vec::new(), false);
        assert!(matches!(
            none.authorize(&headers(&[]), local),
            Err(ApiError::Forbidden(_))
        ));
    }
}
