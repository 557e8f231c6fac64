//! Namespaces: a channel `ns:rest` takes its options from namespace `ns` of the config file, a
//! channel without `:` from the top-level settings (the default namespace).
//!
//! Options are resolved once at startup into one [`NamespacePolicy`] per namespace; a lookup is
//! one hash of the short namespace name, done at subscribe and publish time only. A `:` whose
//! prefix names no configured namespace is an error, never a silent default.

use std::collections::HashMap;

use herald_core::{ChannelId, ChannelLimits};

use crate::config::Config;
use crate::http::ApiError;

/// What a namespace allows, fully resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespacePolicy {
    /// History bound and age of its channels.
    pub limits: ChannelLimits,
    /// Subscribing needs a token that covers the channel.
    pub private: bool,
    /// Clients that may subscribe may also publish from a WebSocket.
    pub client_publish: bool,
    /// Most subscribers per channel; 0 = unlimited.
    pub max_subscribers: usize,
}

/// Every namespace's policy; see the module documentation.
#[derive(Debug, Clone)]
pub struct Namespaces {
    default: NamespacePolicy,
    named: HashMap<Box<str>, NamespacePolicy>,
}

impl Namespaces {
    /// The namespaces of `config`, unset options inherited from its top-level settings.
    pub fn from_config(config: &Config) -> Self {
        let default = NamespacePolicy {
            limits: ChannelLimits {
                size: config.history_size,
                ttl: config.history_ttl,
            },
            private: config.private,
            client_publish: config.client_publish,
            max_subscribers: config.max_subscribers,
        };
        let named = config
            .namespaces
            .iter()
            .map(|(name, options)| {
                let policy = NamespacePolicy {
                    limits: ChannelLimits {
                        size: options.history_size.unwrap_or(default.limits.size),
                        ttl: options.history_ttl.unwrap_or(default.limits.ttl),
                    },
                    private: options.private.unwrap_or(default.private),
                    client_publish: options.client_publish.unwrap_or(default.client_publish),
                    max_subscribers: options.max_subscribers.unwrap_or(default.max_subscribers),
                };
                (name.as_str().into(), policy)
            })
            .collect();
        Self { default, named }
    }

    /// The policy of `cid`'s namespace; `400` for a namespace that is not configured.
    pub fn policy(&self, cid: &ChannelId) -> Result<&NamespacePolicy, ApiError> {
        match cid.namespace() {
            None => Ok(&self.default),
            Some(name) => self.named.get(name).ok_or_else(|| {
                ApiError::BadRequest(format!("unknown namespace \"{name}\" in channel \"{cid}\""))
            }),
        }
    }

    /// The history limits of a new channel (the default namespace's for a channel whose
    /// namespace is unknown; such channels are refused before they are created).
    pub fn limits(&self, cid: &ChannelId) -> ChannelLimits {
        self.policy(cid).unwrap_or(&self.default).limits
    }
}

/// Checks a namespace name: the channel-id alphabet, without `:`.
pub fn validate_namespace_name(name: &str) -> Result<(), String> {
    ChannelId::parse(name).map_err(|e| e.to_string())?;
    if name.contains(':') {
        return Err("a namespace name cannot contain ':'".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::NamespaceOptions;

    #[test]
    fn namespaces_inherit_unset_options_and_unknown_ones_are_refused() {
        let mut config = Config {
            history_size: 7,
            private: true,
            ..Config::default()
        };
        config.namespaces.insert(
            "chat".into(),
            NamespaceOptions {
                history_size: Some(3),
                private: Some(false),
                max_subscribers: Some(2),
                ..NamespaceOptions::default()
            },
        );
        let namespaces = Namespaces::from_config(&config);
        let cid = |s: &str| ChannelId::parse(s).expect("cid");
        let chat = namespaces.policy(&cid("chat:1:x")).expect("known");
        assert_eq!(chat.limits.size, 3);
        assert_eq!(chat.limits.ttl, Duration::from_secs(600), "inherited");
        assert!(!chat.private);
        assert_eq!(chat.max_subscribers, 2);
        let plain = namespaces.policy(&cid("lobby")).expect("default");
        assert_eq!((plain.limits.size, plain.private), (7, true));
        let error = namespaces.policy(&cid("x:1")).expect_err("unknown");
        assert_eq!(
            error.to_string(),
            "unknown namespace \"x\" in channel \"x:1\""
        );
        assert!(namespaces.policy(&cid(":1")).is_err(), "empty namespace");
        assert_eq!(namespaces.limits(&cid("x:1")).size, 7);
    }

    #[test]
    fn namespace_names() {
        assert!(validate_namespace_name("chat_2.v1").is_ok());
        for bad in ["", "a:b", "a b", "é"] {
            assert!(validate_namespace_name(bad).is_err(), "{bad:?}");
        }
    }
}
