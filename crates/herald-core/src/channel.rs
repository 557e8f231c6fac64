//! Channel identifiers.
//!
//! Every channel name arrives from the network (query strings, WebSocket commands), so it is
//! validated exactly once, here, and carried afterwards as a [`ChannelId`] that cannot hold
//! anything else. The allowed alphabet never needs escaping in JSON, HTTP headers, SSE ids or
//! HTML, which lets the encoders write it verbatim.

use std::fmt;
use std::sync::Arc;

/// Longest channel id accepted, in bytes.
pub const MAX_CHANNEL_ID_LEN: usize = 255;

/// A validated channel id: 1–255 bytes of `A–Z a–z 0–9 _ - . : @ =`.
///
/// Cloning is cheap (a reference count); ids are shared by the hub, the history and every
/// message published to the channel.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(Arc<str>);

/// Why a string is not a channel id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelIdError {
    /// The id is the empty string.
    #[error("channel id is empty")]
    Empty,
    /// The id is longer than [`MAX_CHANNEL_ID_LEN`] bytes.
    #[error("channel id is {0} bytes long; the limit is 255")]
    TooLong(usize),
    /// The id contains a byte outside the allowed alphabet.
    #[error("channel id contains {0:?} at byte {1}; allowed are A-Z a-z 0-9 _ - . : @ =")]
    BadChar(char, usize),
}

impl ChannelId {
    /// Validates `raw` and returns it as a channel id.
    pub fn parse(raw: &str) -> Result<Self, ChannelIdError> {
        if raw.is_empty() {
            return Err(ChannelIdError::Empty);
        }
        if raw.len() > MAX_CHANNEL_ID_LEN {
            return Err(ChannelIdError::TooLong(raw.len()));
        }
        if let Some((at, c)) = raw.char_indices().find(|&(_, c)| !is_channel_char(c)) {
            return Err(ChannelIdError::BadChar(c, at));
        }
        Ok(Self(Arc::from(raw)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True if both are the same allocation, not only equal text. Equality checks this first
    /// (`Arc`'s `==` does), so an id compared once per delivery is best shared: see
    /// [`crate::Subscriptions`].
    pub fn shares(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The namespace of the channel: the part before the first `:`, if any.
    pub fn namespace(&self) -> Option<&str> {
        self.0.split_once(':').map(|(ns, _)| ns)
    }
}

fn is_channel_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '@' | '=')
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelId({:?})", &*self.0)
    }
}

impl std::str::FromStr for ChannelId {
    type Err = ChannelIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_whole_alphabet() {
        let id = ChannelId::parse("chat:5_a-b.c@d=e").expect("valid");
        assert_eq!(id.as_str(), "chat:5_a-b.c@d=e");
        assert_eq!(id.namespace(), Some("chat"));
        assert!(ChannelId::parse(&"x".repeat(255)).is_ok());
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn ids_of_the_alphabet_are_valid_and_kept(id in "[A-Za-z0-9_.:@=-]{1,255}") {
                let parsed = ChannelId::parse(&id).expect("valid");
                prop_assert_eq!(parsed.as_str(), id.as_str());
                prop_assert_eq!(parsed.to_string(), id);
            }

            #[test]
            fn any_other_character_is_refused_where_it_is(
                prefix in "[a-z]{0,100}",
                bad in any::<char>().prop_filter("outside the alphabet", |c| !is_channel_char(*c)),
                suffix in "[a-z]{0,100}",
            ) {
                let id = format!("{prefix}{bad}{suffix}");
                prop_assert_eq!(ChannelId::parse(&id), Err(ChannelIdError::BadChar(bad, prefix.len())));
            }

            #[test]
            fn longer_ids_are_refused(id in "[a-z]{256,400}") {
                prop_assert_eq!(ChannelId::parse(&id), Err(ChannelIdError::TooLong(id.len())));
            }
        }
    }

    #[test]
    fn rejects_bad_ids_with_a_reason() {
        assert_eq!(ChannelId::parse(""), Err(ChannelIdError::Empty));
        assert_eq!(
            ChannelId::parse(&"x".repeat(256)),
            Err(ChannelIdError::TooLong(256))
        );
        assert_eq!(
            ChannelId::parse("a b"),
            Err(ChannelIdError::BadChar(' ', 1))
        );
        assert_eq!(
            ChannelId::parse("a,b"),
            Err(ChannelIdError::BadChar(',', 1))
        );
        assert_eq!(ChannelId::parse("ä"), Err(ChannelIdError::BadChar('ä', 0)));
        assert_eq!(
            ChannelId::parse("<x>"),
            Err(ChannelIdError::BadChar('<', 0))
        );
    }
}
