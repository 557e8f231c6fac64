//! Positions in a channel's stream and the cursors clients send to resume from them.
//!
//! A channel is a stream: an [`Epoch`] names one unbroken history of it, and an offset counts
//! its messages from 1. The pair is a [`Position`]. Clients send positions back as text
//! (`since=`, SSE `Last-Event-ID`, WebSocket `since`), so the text form and its parser live
//! here, next to the type, with one grammar for every transport:
//!
//! ```text
//! cursor   = entry *( "," entry )        ; one entry per channel, in the order of `cid`
//! entry    = "" / offset / epoch ":" offset
//! epoch    = 1*13( DIGIT / "a"-"z" )     ; base 36
//! offset   = 1*20DIGIT
//! ```
//!
//! An empty entry means "no cursor: new messages only". An entry without an epoch is an offset
//! in the channel's current epoch (the lecture's `since=17`); with an epoch the server can also
//! tell when the history it refers to is gone.

use std::fmt;

/// One unbroken history of a channel. It changes only when the history is lost (the channel
/// expired, or the server restarted without persistent storage).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(u64);

/// Largest epoch value; keeps the text form at most 8 base-36 digits.
const EPOCH_MAX: u64 = (1 << 40) - 1;

impl Epoch {
    /// A fresh random epoch.
    pub fn random() -> Self {
        Self(rand::random_range(1..=EPOCH_MAX))
    }

    /// The epoch with this numeric value (used by stores that persist epochs).
    pub fn from_u64(value: u64) -> Self {
        Self(value)
    }

    /// The numeric value.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// Parses the base-36 text form.
    pub fn parse(text: &str) -> Result<Self, CursorError> {
        if text.is_empty() || text.len() > 13 {
            return Err(CursorError::BadEpoch(text.into()));
        }
        let mut value: u64 = 0;
        for b in text.bytes() {
            let digit = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'z' => b - b'a' + 10,
                _ => return Err(CursorError::BadEpoch(text.into())),
            };
            value = value
                .checked_mul(36)
                .and_then(|v| v.checked_add(u64::from(digit)))
                .ok_or_else(|| CursorError::BadEpoch(text.into()))?;
        }
        Ok(Self(value))
    }

    /// The base-36 text form, on the stack: it goes into every envelope and answer.
    pub fn text(self) -> EpochText {
        let mut digits = [0u8; EPOCH_DIGITS];
        let mut n = self.0;
        let mut start = digits.len();
        loop {
            start -= 1;
            let d = (n % 36) as u8;
            digits[start] = if d < 10 { b'0' + d } else { b'a' + d - 10 };
            n /= 36;
            if n == 0 {
                break;
            }
        }
        EpochText { digits, start }
    }
}

/// Base-36 digits of the largest epoch (`u64::MAX`).
const EPOCH_DIGITS: usize = 13;

/// An epoch's text form (see [`Epoch::text`]).
#[derive(Debug, Clone, Copy)]
pub struct EpochText {
    digits: [u8; EPOCH_DIGITS],
    start: usize,
}

impl EpochText {
    /// The digits.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and lower-case letters are ever written (see `Epoch::text`).
        std::str::from_utf8(&self.digits[self.start..]).unwrap_or_default()
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text().as_str())
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Epoch({self})")
    }
}

/// A place in a channel's stream: the epoch and the offset of the last message seen
/// (0 before the first message).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Position {
    /// The history this offset belongs to.
    pub epoch: Epoch,
    /// The offset of the last message at this position; 0 = before the first.
    pub offset: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

/// Where one channel's subscriber wants to start.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum ChannelCursor {
    /// No cursor: only messages published from now on.
    #[default]
    Latest,
    /// Messages after this offset in the channel's current epoch.
    Offset(u64),
    /// Messages after this exact position; a different epoch is a gap.
    Exact(Position),
}

impl fmt::Display for ChannelCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Latest => Ok(()),
            Self::Offset(n) => write!(f, "{n}"),
            Self::Exact(p) => write!(f, "{p}"),
        }
    }
}

/// Why a cursor could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    /// The epoch part is not 1–13 base-36 digits (`0-9 a-z`).
    #[error("invalid epoch {0:?} in cursor: expected 1-13 characters of 0-9 a-z")]
    BadEpoch(String),
    /// The offset part is not a decimal number that fits in 64 bits.
    #[error("invalid offset {0:?} in cursor: expected a decimal number")]
    BadOffset(String),
    /// The cursor has a different number of entries than there are channels.
    #[error("cursor has {got} entries but {expected} channels are subscribed; give one entry per cid, in the same order, or a single entry for all")]
    WrongCount {
        /// Entries in the cursor.
        got: usize,
        /// Channels in the request.
        expected: usize,
    },
    /// The cursor text is longer than any valid cursor can be.
    #[error("cursor is too long")]
    TooLong,
}

/// Longest cursor text accepted for one channel entry.
const MAX_ENTRY_LEN: usize = 13 + 1 + 20;

/// Parses one channel's cursor entry.
pub fn parse_entry(text: &str) -> Result<ChannelCursor, CursorError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(ChannelCursor::Latest);
    }
    if text.len() > MAX_ENTRY_LEN {
        return Err(CursorError::TooLong);
    }
    match text.split_once(':') {
        None => parse_offset(text).map(ChannelCursor::Offset),
        Some((epoch, offset)) => Ok(ChannelCursor::Exact(Position {
            epoch: Epoch::parse(epoch)?,
            offset: parse_offset(offset)?,
        })),
    }
}

fn parse_offset(text: &str) -> Result<u64, CursorError> {
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CursorError::BadOffset(text.into()));
    }
    text.parse()
        .map_err(|_| CursorError::BadOffset(text.into()))
}

/// Parses a composite cursor for `channels` channels: either one entry per channel or a single
/// entry that applies to all of them.
pub fn parse_cursor(text: &str, channels: usize) -> Result<Vec<ChannelCursor>, CursorError> {
    if text.len() > channels.max(1) * (MAX_ENTRY_LEN + 2) + 16 {
        return Err(CursorError::TooLong);
    }
    if !text.contains(',') {
        // One entry (for one channel, or for all): no list to collect.
        return Ok(vec![parse_entry(text)?; channels]);
    }
    let entries = text
        .split(',')
        .map(parse_entry)
        .collect::<Result<Vec<_>, _>>()?;
    // Two entries or more here: one per channel, or a mistake.
    match entries.len() {
        n if n == channels => Ok(entries),
        got => Err(CursorError::WrongCount {
            got,
            expected: channels,
        }),
    }
}

/// Formats positions as a composite cursor, the inverse of [`parse_cursor`].
pub fn format_cursor<'a>(positions: impl IntoIterator<Item = &'a Position>) -> String {
    let positions = positions.into_iter();
    // Sized for the longest entries at once: every long-poll answer carries a cursor, and
    // growing the string entry by entry cost more than the formatting.
    let mut out = String::with_capacity(positions.size_hint().0 * (MAX_ENTRY_LEN + 1));
    for (i, p) in positions.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(p.epoch.text().as_str());
        out.push(':');
        out.push_str(itoa::Buffer::new().format(p.offset));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_text_round_trips() {
        for v in [1, 35, 36, 1295, EPOCH_MAX, u64::MAX] {
            let e = Epoch::from_u64(v);
            assert_eq!(Epoch::parse(&e.to_string()), Ok(e));
        }
        assert_eq!(Epoch::from_u64(36).to_string(), "10");
        assert!(Epoch::parse("").is_err());
        assert!(Epoch::parse("ABC").is_err());
        assert!(Epoch::parse("zzzzzzzzzzzzz").is_err(), "overflows u64");
        let r = Epoch::random();
        assert!(r.as_u64() >= 1 && r.as_u64() <= EPOCH_MAX);
        assert!(r.to_string().len() <= 8);
    }

    #[test]
    fn entries_parse() {
        assert_eq!(parse_entry(""), Ok(ChannelCursor::Latest));
        assert_eq!(parse_entry("17"), Ok(ChannelCursor::Offset(17)));
        let e = Epoch::parse("k3f9").expect("epoch");
        assert_eq!(
            parse_entry("k3f9:17"),
            Ok(ChannelCursor::Exact(Position {
                epoch: e,
                offset: 17
            }))
        );
        assert!(matches!(parse_entry("-1"), Err(CursorError::BadOffset(_))));
        assert!(matches!(parse_entry("+1"), Err(CursorError::BadOffset(_))));
        assert!(matches!(parse_entry("1.5"), Err(CursorError::BadOffset(_))));
        assert!(matches!(
            parse_entry("99999999999999999999"),
            Err(CursorError::BadOffset(_))
        ));
        assert!(matches!(parse_entry("K:1"), Err(CursorError::BadEpoch(_))));
        assert!(matches!(parse_entry(":1"), Err(CursorError::BadEpoch(_))));
        assert!(matches!(parse_entry("a:"), Err(CursorError::BadOffset(_))));
        assert!(matches!(
            parse_entry("a:b:1"),
            Err(CursorError::BadOffset(_))
        ));
    }

    #[test]
    fn composite_cursors() {
        let parsed = parse_cursor("5", 3).expect("one for all");
        assert_eq!(parsed, vec![ChannelCursor::Offset(5); 3]);
        let parsed = parse_cursor("a:1,,7", 3).expect("one each");
        assert_eq!(parsed[1], ChannelCursor::Latest);
        assert_eq!(parsed[2], ChannelCursor::Offset(7));
        assert_eq!(
            parse_cursor("1,2", 3),
            Err(CursorError::WrongCount {
                got: 2,
                expected: 3
            })
        );
        assert_eq!(
            parse_cursor(&"1,".repeat(1000), 2),
            Err(CursorError::TooLong)
        );
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        fn position() -> impl Strategy<Value = Position> {
            (any::<u64>(), any::<u64>()).prop_map(|(epoch, offset)| Position {
                epoch: Epoch::from_u64(epoch),
                offset,
            })
        }

        fn cursor() -> impl Strategy<Value = ChannelCursor> {
            prop_oneof![
                Just(ChannelCursor::Latest),
                any::<u64>().prop_map(ChannelCursor::Offset),
                position().prop_map(ChannelCursor::Exact),
            ]
        }

        proptest! {
            #[test]
            fn epochs_round_trip_through_base36(value in any::<u64>()) {
                let epoch = Epoch::from_u64(value);
                let text = epoch.to_string();
                prop_assert!(text.len() <= 13);
                prop_assert!(text.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()));
                prop_assert_eq!(Epoch::parse(&text), Ok(epoch));
            }

            #[test]
            fn formatted_positions_parse_back(positions in prop::collection::vec(position(), 1..70)) {
                let text = format_cursor(&positions);
                let parsed = parse_cursor(&text, positions.len()).expect("parses");
                let expected: Vec<_> = positions.iter().copied().map(ChannelCursor::Exact).collect();
                prop_assert_eq!(parsed, expected);
            }

            #[test]
            fn cursor_entries_round_trip(cursors in prop::collection::vec(cursor(), 1..70)) {
                let text: Vec<String> = cursors.iter().map(ToString::to_string).collect();
                prop_assert_eq!(parse_cursor(&text.join(","), cursors.len()), Ok(cursors.clone()));
                for cursor in &cursors {
                    prop_assert_eq!(parse_entry(&cursor.to_string()), Ok(*cursor));
                }
            }

            #[test]
            fn cursor_parsing_never_panics(text in ".{0,200}", channels in 0usize..70) {
                if let Ok(parsed) = parse_cursor(&text, channels) {
                    prop_assert_eq!(parsed.len(), channels);
                }
            }
        }
    }

    #[test]
    fn format_is_the_inverse_of_parse() {
        let positions = [
            Position {
                epoch: Epoch::from_u64(12345),
                offset: 0,
            },
            Position {
                epoch: Epoch::from_u64(7),
                offset: 99,
            },
        ];
        let text = format_cursor(&positions);
        assert_eq!(text, "9ix:0,7:99");
        let back = parse_cursor(&text, 2).expect("parses");
        assert_eq!(
            back,
            vec![
                ChannelCursor::Exact(positions[0]),
                ChannelCursor::Exact(positions[1])
            ]
        );
    }
}
