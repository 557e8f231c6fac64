//! WebSocket client commands: commands::parse (everything a command is checked for before it
//! touches server state) never panics on any text.
#![no_main]

use herald_server::transport::websocket::commands;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match commands::parse(text) {
        Ok((commands::Action::Publish(_, payload), _)) => {
            let _: serde_json::Value =
                serde_json::from_slice(payload.as_bytes()).expect("strict JSON");
        }
        Ok(_) | Err(_) => {}
    }
});
