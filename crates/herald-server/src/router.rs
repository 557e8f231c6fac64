//! Routes a request to its endpoint by path and method. Trailing slashes are accepted
//! (`/listen/` as in the lecture); everything else unknown is a JSON 404 or 405.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::app::App;
use crate::http::{json, ApiError, Body};
use crate::{publish, transport};

/// Answers one request.
pub async fn handle(app: Arc<App>, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let path = request.uri().path();
    let path = if path.len() > 1 {
        path.strip_suffix('/').unwrap_or(path)
    } else {
        path
    };
    let method = request.method().clone();
    let result = match path {
        "/publish" => match method {
            Method::POST => publish::handle(&app, request, peer).await,
            _ => Err(not_allowed(&method, "POST")),
        },
        "/listen" => match method {
            Method::GET => transport::listen(&app, request).await,
            _ => Err(not_allowed(&method, "GET")),
        },
        "/messages" => match method {
            Method::GET => transport::poll::handle(&app, &request).await,
            _ => Err(not_allowed(&method, "GET")),
        },
        "/health" => match method {
            Method::GET => Ok(health(&app)),
            _ => Err(not_allowed(&method, "GET")),
        },
        // Conformance builds only (`--features conformance`): see transport/websocket/echo.rs.
        #[cfg(feature = "conformance")]
        "/echo" => match method {
            Method::GET => transport::websocket::echo::upgrade(&app, request).await,
            _ => Err(not_allowed(&method, "GET")),
        },
        other => Err(ApiError::NotFound(other.chars().take(200).collect())),
    };
    result.unwrap_or_else(|e| {
        tracing::debug!(%peer, %method, status = %e.status(), error = %e, "request refused");
        e.into_response()
    })
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
