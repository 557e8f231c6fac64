//! Subscriber tokens: JSON Web Tokens signed by the application backend, verified here.
//!
//! Browsers cannot be given publisher keys, so a backend that wants to limit who subscribes
//! signs a short-lived token per user. The token header's `alg` picks the key: HS256 (shared
//! secret), RS256 (RSA public key) or ES256 (P-256 public key), each only if configured; every
//! other algorithm, `none` included, is refused. Keys are loaded once at startup. Claims:
//! `sub` (user id, required), `exp` (required), `channels` and `publish` (lists of
//! [`ChannelPatterns`]); `aud` and `iss` are checked when configured; other claims are ignored.
//! Expiry allows [`LEEWAY_SECS`] of clock skew, at verification and when a stream is ended.

use std::path::Path;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use herald_core::ChannelId;

use super::patterns::ChannelPatterns;
use crate::config::{Config, ConfigError};
use crate::http::ApiError;

/// Clock skew allowed on `exp` (and `nbf`), in seconds: a token is accepted until
/// `exp + LEEWAY_SECS`, and a stream authorised by it ends then.
pub const LEEWAY_SECS: u64 = 5;

/// A verified token: who the subscriber is and what it may do, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The `sub` claim (user id).
    pub sub: String,
    /// The `exp` claim, seconds since the Unix epoch.
    pub exp: u64,
    subscribe: ChannelPatterns,
    publish: ChannelPatterns,
}

impl Identity {
    /// True if the `channels` claim covers `cid`.
    pub fn may_subscribe(&self, cid: &ChannelId) -> bool {
        self.subscribe.covers(cid)
    }

    /// True if the `publish` claim covers `cid`.
    pub fn may_publish(&self, cid: &ChannelId) -> bool {
        self.publish.covers(cid)
    }

    /// When the token stops being accepted (`exp` plus the leeway), in Unix milliseconds.
    pub fn deadline_ms(&self) -> u64 {
        self.exp.saturating_add(LEEWAY_SECS).saturating_mul(1000)
    }

    /// True once the deadline has passed at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        now_ms >= self.deadline_ms()
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TokenError {
    /// The token was valid but has expired.
    pub expired: bool,
    /// What is wrong, for the client.
    pub message: String,
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        Self::Unauthorized(e.message)
    }
}

/// The claims Herald reads; everything else in the token is ignored.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
}

/// The configured token keys, each with the validation rules for its algorithm (built once;
/// they depend only on the settings); see the module documentation.
pub struct TokenVerifier {
    hmac: Option<Verifier>,
    rsa: Option<Verifier>,
    ec: Option<Verifier>,
}

struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl TokenVerifier {
    /// Loads the keys `config` names; a file that cannot be read or parsed is an error naming
    /// it.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let verifier = |key, alg| Verifier {
            key,
            validation: validation(alg, config),
        };
        Ok(Self {
            hmac: config.jwt_hmac_secret.as_ref().map(|secret| {
                verifier(
                    DecodingKey::from_secret(secret.as_bytes()),
                    Algorithm::HS256,
                )
            }),
            rsa: config
                .jwt_rsa_public_key
                .as_deref()
                .map(|path| load(path, "jwt_rsa_public_key", DecodingKey::from_rsa_pem))
                .transpose()?
                .map(|key| verifier(key, Algorithm::RS256)),
            ec: config
                .jwt_ec_public_key
                .as_deref()
                .map(|path| load(path, "jwt_ec_public_key", DecodingKey::from_ec_pem))
                .transpose()?
                .map(|key| verifier(key, Algorithm::ES256)),
        })
    }

    /// Verifies `token`; refused when it is malformed, signed with an algorithm or key that is
    /// not configured, expired, or lacks a required claim.
    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        let invalid = |reason: &str| TokenError {
            expired: false,
            message: format!("invalid token: {reason}"),
        };
        let header = decode_header(token).map_err(|e| invalid(&e.to_string()))?;
        let Verifier { key, validation } = match header.alg {
            Algorithm::HS256 => self.hmac.as_ref(),
            Algorithm::RS256 => self.rsa.as_ref(),
            Algorithm::ES256 => self.ec.as_ref(),
            other => {
                return Err(invalid(&format!(
                    "algorithm {other:?} is not accepted (HS256, RS256, ES256)"
                )))
            }
        }
        .ok_or_else(|| invalid(&format!("no {:?} key is configured", header.alg)))?;
        let claims = decode::<Claims>(token, key, validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError {
                    expired: true,
                    message: "token expired".into(),
                },
                _ => invalid(&e.to_string()),
            })?
            .claims;
        let identity = Identity {
            sub: claims.sub,
            exp: claims.exp,
            subscribe: ChannelPatterns::parse(&claims.channels)
                .map_err(|e| invalid(&format!("channels: {e}")))?,
            publish: ChannelPatterns::parse(&claims.publish)
                .map_err(|e| invalid(&format!("publish: {e}")))?,
        };
        // The library allows up to a second more (whole seconds); a stream ends exactly at
        // the deadline, so a request is held to the same one.
        if identity.is_expired(herald_core::now_ms()) {
            return Err(TokenError {
                expired: true,
                message: "token expired".into(),
            });
        }
        Ok(identity)
    }
}

/// The rules a token signed with `alg` must pass under these settings: `exp` and `sub`
/// required, `aud` and `iss` when configured, a leeway of [`LEEWAY_SECS`].
fn validation(alg: Algorithm, config: &Config) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = LEEWAY_SECS;
    validation.set_required_spec_claims(&["exp", "sub"]);
    match &config.jwt_audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            validation.required_spec_claims.insert("aud".into());
        }
        None => validation.validate_aud = false,
    }
    if let Some(issuer) = &config.jwt_issuer {
        validation.set_issuer(&[issuer]);
        validation.required_spec_claims.insert("iss".into());
    }
    validation
}

fn load(
    path: &Path,
    name: &'static str,
    parse: fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>,
) -> Result<DecodingKey, ConfigError> {
    let pem = std::fs::read(path).map_err(|e| ConfigError::Invalid {
        name,
        message: format!("cannot read {}: {e}", path.display()),
    })?;
    parse(&pem).map_err(|e| ConfigError::Invalid {
        name,
        message: format!(
            "{} is not a PEM public key of that kind: {e}",
            path.display()
        ),
    })
}
