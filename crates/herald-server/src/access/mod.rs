//! Access control: who may publish, subscribe and publish from a client, decided in one place.
//!
//! - [`keys`]: publisher keys for `POST /publish`.
//! - [`token`]: subscriber tokens (JWT) and the [`Identity`] they prove.
//! - [`namespace`]: per-namespace options (`ns:rest` channels), private namespaces.
//! - [`expiry`]: the one schedule that ends streams when their token expires.
//!
//! Every subscribe (any transport, any source of channel ids) goes through
//! [`Access::may_subscribe`], every client publish through [`Access::may_publish_from_client`],
//! and every HTTP publish through [`Access::namespace`]. Checks happen at connect, subscribe
//! and publish time, never per delivered message.

pub mod expiry;
pub mod keys;
pub mod namespace;
pub mod patterns;
pub mod token;

use std::sync::Arc;

use http::{header, HeaderMap};

use herald_core::ChannelId;

use crate::config::{Config, ConfigError};
use crate::http::ApiError;

pub use expiry::{ExpiryEntry, ExpirySchedule};
pub use keys::PublishKeys;
pub use namespace::{validate_namespace_name, NamespacePolicy, Namespaces};
pub use token::{Identity, TokenError, TokenVerifier, LEEWAY_SECS};

/// The access rules of a server; see the module documentation.
pub struct Access {
    /// Publisher keys.
    pub keys: PublishKeys,
    /// Subscriber token verification.
    pub tokens: TokenVerifier,
    /// Namespace policies.
    pub namespaces: Arc<Namespaces>,
    /// Token deadlines of open streams.
    pub expiry: Arc<ExpirySchedule>,
}

impl Access {
    /// The rules of `config`; fails if a token key file cannot be loaded.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        Ok(Self {
            keys: PublishKeys::new(config.publish_keys.clone(), config.publish_from_loopback),
            tokens: TokenVerifier::from_config(config)?,
            namespaces: Arc::new(Namespaces::from_config(config)),
            expiry: Arc::new(ExpirySchedule::default()),
        })
    }

    /// The identity a subscribe or poll request proves with a token in the `token` query
    /// parameter or `Authorization: Bearer`; `None` without a token. A token that is presented
    /// must be valid (`401`); two tokens at once are a `400`. An `Authorization` header of
    /// another scheme is left alone (it may be a proxy's).
    pub fn identify(
        &self,
        query_token: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<Option<Arc<Identity>>, ApiError> {
        let token = match (query_token, bearer(headers).flatten()) {
            (Some(_), Some(_)) => {
                return Err(ApiError::BadRequest(
                    "token given twice: use the token parameter or Authorization, not both".into(),
                ))
            }
            (Some(token), None) | (None, Some(token)) => token,
            (None, None) => return Ok(None),
        };
        Ok(Some(Arc::new(self.tokens.verify(token)?)))
    }

    /// The policy of `cid`'s namespace; `400` if the namespace is not configured.
    pub fn namespace(&self, cid: &ChannelId) -> Result<&NamespacePolicy, ApiError> {
        self.namespaces.policy(cid)
    }

    /// Whether `identity` may subscribe to `cid`: `400` for an unknown namespace, `401` for a
    /// private channel without a token, `403` for a token that does not cover it.
    pub fn may_subscribe(
        &self,
        identity: Option<&Identity>,
        cid: &ChannelId,
    ) -> Result<&NamespacePolicy, ApiError> {
        let policy = self.namespace(cid)?;
        if policy.private {
            match identity {
                None => {
                    return Err(ApiError::Unauthorized(format!(
                        "channel \"{cid}\" is private: subscribing needs a token (token parameter, Authorization: Bearer, or a WebSocket auth command)"
                    )))
                }
                Some(identity) if !identity.may_subscribe(cid) => {
                    return Err(ApiError::Forbidden(format!(
                        "the token does not allow subscribing to \"{cid}\""
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(policy)
    }

    /// Whether a WebSocket client with `identity` may publish to `cid`: its token's `publish`
    /// claim covers the channel, or the namespace allows client publishing and the client may
    /// subscribe to it.
    pub fn may_publish_from_client(
        &self,
        identity: Option<&Identity>,
        cid: &ChannelId,
    ) -> Result<(), ApiError> {
        let policy = self.namespace(cid)?;
        if identity.is_some_and(|identity| identity.may_publish(cid)) {
            return Ok(());
        }
        if !policy.client_publish {
            return Err(ApiError::Forbidden(format!(
                "publishing to \"{cid}\" from clients is not allowed"
            )));
        }
        self.may_subscribe(identity, cid).map(|_| ())
    }
}

/// The `Authorization` header's credentials: `None` without the header, `Some(None)` when it
/// is not `Bearer …` (another scheme, or not text), `Some(Some(token))` otherwise.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<Option<&str>> {
    headers.get(header::AUTHORIZATION).map(|value| {
        value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
    })
}
