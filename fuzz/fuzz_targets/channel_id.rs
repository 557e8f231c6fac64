//! Channel ids: ChannelId::parse never panics, and an accepted id is exactly the input, within
//! the documented length and alphabet (so encoders may write it without escaping).
#![no_main]

use herald_core::ChannelId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cid) = ChannelId::parse(text) {
        assert_eq!(cid.as_str(), text);
        assert!((1..=255).contains(&text.len()));
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:@=".contains(&b)));
    }
});
