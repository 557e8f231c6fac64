//! Channel patterns, as tokens grant rights with them: an exact channel id, or a prefix ending
//! in `*` (`"chat:*"`; `"*"` alone is every channel).
//!
//! Parsed once when a token is verified, so a check at subscribe or publish time is a short
//! scan with no allocation.

use herald_core::ChannelId;

/// One pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// Exactly this channel.
    Exact(ChannelId),
    /// Every channel whose id starts with this (possibly empty) text.
    Prefix(Box<str>),
}

/// A list of channel patterns; see the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelPatterns(Box<[Pattern]>);

impl ChannelPatterns {
    /// Parses patterns; an entry that is neither a channel id nor a prefix of one followed by a
    /// single trailing `*` is an error naming it.
    pub fn parse(list: &[String]) -> Result<Self, String> {
        list.iter()
            .map(|text| match text.strip_suffix('*') {
                Some("") => Ok(Pattern::Prefix("".into())),
                Some(prefix) => ChannelId::parse(prefix)
                    .map(|_| Pattern::Prefix(prefix.into()))
                    .map_err(|e| format!("invalid channel pattern {text:?}: {e}")),
                None => ChannelId::parse(text)
                    .map(Pattern::Exact)
                    .map_err(|e| format!("invalid channel pattern {text:?}: {e}")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|patterns| Self(patterns.into_boxed_slice()))
    }

    /// True if some pattern matches `cid`.
    pub fn covers(&self, cid: &ChannelId) -> bool {
        self.0.iter().any(|pattern| match pattern {
            Pattern::Exact(exact) => exact == cid,
            Pattern::Prefix(prefix) => cid.as_str().starts_with(&**prefix),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(list: &[&str]) -> Result<ChannelPatterns, String> {
        ChannelPatterns::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn cid(text: &str) -> ChannelId {
        ChannelId::parse(text).expect("cid")
    }

    #[test]
    fn exact_names_and_prefixes() {
        let p = patterns(&["news", "chat:*"]).expect("valid");
        assert!(p.covers(&cid("news")));
        assert!(!p.covers(&cid("news2")), "exact means exact");
        assert!(p.covers(&cid("chat:5")));
        assert!(p.covers(&cid("chat:")));
        assert!(!p.covers(&cid("chatter")));
        assert!(patterns(&["*"]).expect("valid").covers(&cid("anything")));
        assert!(!patterns(&[]).expect("valid").covers(&cid("a")));
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for bad in ["", "a b", "a*b*", "**", "a*b", "é"] {
            assert!(patterns(&[bad]).is_err(), "{bad:?}");
        }
    }
}
