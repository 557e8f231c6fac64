//! The TOML config file: Config::from_toml_str never panics, and what it accepts validates.
#![no_main]

use herald_server::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::from_toml_str(text) {
        assert!(config.validate().is_ok());
        let _ = format!("{config:?}");
    }
});
