//! Subscriber tokens: `TokenVerifier::verify` never panics, whatever text arrives as a token
//! (query parameter, `Authorization` header or WebSocket `auth` command). Half of the inputs
//! are raw token text; the other half are arbitrary claim bytes correctly signed with the
//! configured HS256 secret, so the fuzzer reaches the claim checks behind the signature. A
//! token that is accepted must not be expired.
#![no_main]

use std::sync::OnceLock;

use base64::Engine as _;
use herald_server::access::TokenVerifier;
use herald_server::Config;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "fuzz-secret";

fn verifier() -> &'static TokenVerifier {
    static VERIFIER: OnceLock<TokenVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let config = Config {
            jwt_hmac_secret: Some(SECRET.into()),
            ..Config::default()
        };
        TokenVerifier::from_config(&config).expect("an HS256 secret is a valid configuration")
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = if mode & 1 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        text.to_owned()
    } else {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let message = format!(
            "{}.{}",
            b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
            b64.encode(rest)
        );
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256)
            .expect("HS256 signing cannot fail");
        format!("{message}.{signature}")
    };
    if let Ok(identity) = verifier().verify(&token) {
        // The JWT library checks `exp` in whole seconds; allow that much rounding.
        assert!(
            !identity.is_expired(now_ms().saturating_sub(1000)),
            "an accepted token must not be expired"
        );
    }
});
