//! HTTP plumbing shared by every endpoint: the response body type, JSON and error responses,
//! and the API error enum that maps each failure to a status code.

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

/// The body of every response Herald sends: a full buffer or a stream.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A request body Herald can read: hyper's `Incoming` for requests served by hyper, or an
/// empty body for the subscriber requests the connection front answers itself (see `front`).
pub trait RequestBody:
    http_body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
    + Send
    + Unpin
    + 'static
{
}

impl<B> RequestBody for B where
    B: http_body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + Unpin
        + 'static
{
}

/// Boxes any infallible body.
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes, Error = Infallible> + Send + 'static,
{
    body.boxed_unsync()
}

/// A response with a complete body and a content type. (`front::json_head` writes the same
/// head for a JSON answer without making the response.)
pub fn full(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(boxed(Full::new(body.into())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The content type of JSON responses.
pub const JSON: &str = "application/json";

/// A JSON response.
pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    full(status, JSON, body)
}

/// A failure of an API call, carrying everything needed to answer it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed (bad cid, cursor, body, parameter).
    #[error("{0}")]
    BadRequest(String),
    /// The credentials are wrong.
    #[error("{0}")]
    Unauthorized(String),
    /// The client may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// No such endpoint.
    #[error("not found: {0}")]
    NotFound(String),
    /// The endpoint exists but not for this method.
    #[error("method {method} not allowed; use {allow}")]
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The methods allowed.
        allow: &'static str,
    },
    /// The body exceeds the limit.
    #[error("body larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// The request URL exceeds `max-url-length`.
    #[error("URL longer than {0} bytes")]
    UriTooLong(usize),
    /// The client exceeds a rate limit.
    #[error("{0}")]
    TooManyRequests(String),
    /// The server cannot serve this now (limits, shutdown, backend down).
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    /// The status code for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The JSON error response: `{"error": "…"}` with the fitting status and headers.
    pub fn into_response(self) -> Response<Body> {
        let body = serde_json::json!({ "error": self.to_string() }).to_string();
        let mut response = json(self.status(), body);
        match &self {
            Self::MethodNotAllowed { allow, .. } => {
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            Self::Unavailable(_) | Self::TooManyRequests(_) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::Unauthorized(_) => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

impl From<herald_core::EngineError> for ApiError {
    fn from(e: herald_core::EngineError) -> Self {
        match e {
            // A namespace's subscriber bound, as nchan's max_channel_subscribers: 403.
            herald_core::EngineError::ChannelFull { .. } => Self::Forbidden(e.to_string()),
            _ => Self::Unavailable(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_are_json_with_the_right_status() {
        let response = ApiError::MethodNotAllowed {
            method: "PUT".into(),
            allow: "GET",
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "GET");
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(value["error"], "method PUT not allowed; use GET");
    }
}
