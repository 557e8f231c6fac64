//! The query string of /listen, /messages and /publish: SubscribeQuery::parse, the cursor
//! step after it and the iframe callback check never panic, and what they accept respects the
//! documented limits.
#![no_main]

use herald_server::query::SubscribeQuery;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(query) = SubscribeQuery::parse(Some(raw), 8) {
        assert!(query.cids.len() <= 8);
        if let Ok(cursors) = query.cursors(None) {
            assert_eq!(cursors.len(), query.cids.len());
        }
        let _ = query.cursors(Some(raw));
        let _ = query.require_cids();
        if let Some(callback) = &query.callback {
            if herald_server::transport::iframe::is_valid_callback(callback) {
                assert!(callback.len() <= 128);
                assert!(!callback.contains(['<', '>', '(', ')', '"', '\'', '/']));
            }
        }
    }
});
