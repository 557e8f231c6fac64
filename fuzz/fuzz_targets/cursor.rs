//! Cursors (`since=`, `Last-Event-ID`, `last_event_id`, WebSocket `since`): parse_entry and
//! parse_cursor never panic, and whatever parses formats back to text that parses the same.
#![no_main]

use herald_core::{parse_cursor, parse_entry, ChannelCursor};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&channels, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    if let Ok(entry) = parse_entry(text) {
        let again = parse_entry(&entry.to_string()).expect("a formatted entry parses");
        // Epochs have no canonical text ("0k3f9" is "k3f9"), so compare values.
        assert_eq!(again, entry);
    }
    let channels = usize::from(channels % 70);
    if let Ok(cursors) = parse_cursor(text, channels) {
        assert_eq!(cursors.len(), channels);
        let text: Vec<String> = cursors.iter().map(ChannelCursor::to_string).collect();
        assert_eq!(parse_cursor(&text.join(","), channels).ok(), Some(cursors));
    }
});
