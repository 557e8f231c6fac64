//! Routes a request to its endpoint by path and method. Trailing slashes are accepted
//! (`/listen/` as in the lecture); everything else unknown is a JSON 404 or 405. The
//! subscriber endpoints (`/listen`, `/messages`) pass the browser-origin check first and
//! answer CORS preflights (see `browser`).

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};

use crate::app::App;
use crate::browser;
use crate::front::Lent;
use crate::http::{json, ApiError, Body, RequestBody};
use crate::{publish, transport};

/// Answers one request. The request comes boxed: every future it passes through keeps a slot
/// for it (an async function's arguments live as long as its future), and a waiting long poll
/// lives in those futures; a pointer there instead of the request keeps that state small.
pub async fn handle<B: RequestBody>(
    app: &Arc<App>,
    request: Box<Request<B>>,
    peer: &SocketAddr,
    lent: Option<&Lent>,
) -> Response<Body> {
    let method = request.method().clone();
    let url_length = url_length(request.uri());
    if url_length > app.config.max_url_length {
        let error = ApiError::UriTooLong(app.config.max_url_length);
        tracing::debug!(%peer, %method, url_length, "request refused: URL too long");
        return error.into_response();
    }
    let path = request.uri().path();
    let path = if path.len() > 1 {
        path.strip_suffix('/').unwrap_or(path)
    } else {
        path
    };
    let subscriber_endpoint = matches!(path, "/listen" | "/messages");
    let origin = if subscriber_endpoint {
        match app.browser.check(request.headers()) {
            Ok(origin) => origin,
            Err(e) => {
                tracing::debug!(%peer, %method, error = %e, "request refused");
                let mut response = e.into_response();
                browser::vary_origin(&mut response);
                return response;
            }
        }
    } else {
        None
    };
    let result = match path {
        "/publish" => match method {
            Method::POST => {
                publish::handle(app, request, *peer, lent.and_then(Lent::answer_first)).await
            }
            _ => Err(not_allowed(&method, "POST")),
        },
        "/listen" => match method {
            Method::GET => {
                transport::listen(app, request, peer.ip(), lent.and_then(Lent::socket)).await
            }
            Method::OPTIONS => app.browser.preflight(request.headers()),
            _ => Err(not_allowed(&method, "GET, OPTIONS")),
        },
        "/messages" => match method {
            Method::GET => transport::poll::handle(app, &request).await,
            Method::OPTIONS => app.browser.preflight(request.headers()),
            _ => Err(not_allowed(&method, "GET, OPTIONS")),
        },
        "/health" => match method {
            Method::GET => Ok(health(app)),
            _ => Err(not_allowed(&method, "GET")),
        },
        // Conformance builds only (`--features conformance`): see transport/websocket/echo.rs.
        #[cfg(feature = "conformance")]
        "/echo" => match method {
            Method::GET => transport::websocket::echo::upgrade(app, request, peer.ip()).await,
            _ => Err(not_allowed(&method, "GET")),
        },
        other => Err(ApiError::NotFound(other.chars().take(200).collect())),
    };
    let mut response = result.unwrap_or_else(|e| {
        tracing::debug!(%peer, %method, status = %e.status(), error = %e, "request refused");
        e.into_response()
    });
    if subscriber_endpoint && response.status() != StatusCode::SWITCHING_PROTOCOLS {
        browser::vary_origin(&mut response);
        if let Some(origin) = origin {
            app.browser.allow(&mut response, origin);
        }
    }
    response
}

/// Length of the request target as the client sent it (origin form: path and query).
fn url_length(uri: &http::Uri) -> usize {
    uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len())
}

fn not_allowed(method: &Method, allow: &'static str) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.as_str().chars().take(32).collect(),
        allow,
    }
}

fn health(app: &App) -> Response<Body> {
    let shutting_down = app.shutdown.is_cancelled();
    let body = serde_json::json!({
        "status": if shutting_down { "shutting_down" } else { "ok" },
        "connections": app.connections(),
        "channels": app.engine.channel_count(),
        "subscribed_channels": app.engine.hub().channel_count(),
    });
    let status = if shutting_down {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    json(status, body.to_string())
}
