//! A small HTTP/1.1 server (hyper) over the daemon's listeners: keep-alive connections, one
//! [`Service`] (a handler for one method on every path), request bodies read whole under a size
//! cap, graceful shutdown. The Dovecot auth policy endpoint and the Prometheus `/metrics` route
//! ([`crate::metrics`]) are its users. Handlers see a complete [`HttpRequest`], never hyper's
//! streaming types.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::endpoint::{accept_loop, ConnectionCaps, Listener, Stream};

/// The largest request body accepted (Dovecot's requests are a few hundred bytes).
pub const MAX_BODY: usize = 64 * 1024;
/// How long a client may take to send a request's headers (also bounds an idle keep-alive
/// connection that started a request and stalled).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client may take to send a request's body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection may stay open without a request (Dovecot's own idle limit is 10 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long shutdown lets a connection finish the request it is working on.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The response type every handler returns.
pub type HttpResponse = http::Response<Full<Bytes>>;

/// A complete request: headers and the whole body.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: Method,
    pub path: String,
    /// The query string without `?`, if any.
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The peer, for log lines and audit events (`127.0.0.1:40000`, `unix:/path`).
    pub peer: String,
}

impl HttpRequest {
    /// The value of `name` in the query string (`a=1&command=allow`), undecoded: the values
    /// this server looks at are plain words.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .as_deref()?
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// The peer's IP address without the port (empty for a unix socket).
    pub fn peer_ip(&self) -> Option<String> {
        self.peer
            .parse::<std::net::SocketAddr>()
            .ok()
            .map(|a| a.ip().to_string())
    }
}

/// A handler: an async function from a request to a response.
pub type Handler =
    Arc<dyn Fn(HttpRequest) -> Pin<Box<dyn Future<Output = HttpResponse> + Send>> + Send + Sync>;

/// What a listener serves: one handler for every path (Dovecot posts to whatever URL it is
/// given), for one method; other methods get 405 with `Allow`.
#[derive(Clone)]
pub struct Service {
    method: Method,
    handler: Handler,
}

impl Service {
    /// `handler` for requests with `method`, on any path.
    pub fn new<F, Fut>(method: Method, handler: F) -> Self
    where
        F: Fn(HttpRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HttpResponse> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
        Service { method, handler }
    }

    /// Reads the body (at most [`MAX_BODY`] bytes) and calls the handler.
    /// Reads the body (at most [`MAX_BODY`] bytes) and calls the matching handler.
    async fn dispatch(&self, req: http::Request<Incoming>, peer: &str) -> HttpResponse {
        let path = req.uri().path().to_string();
        if req.method() != self.method {
            let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            if let Ok(v) = HeaderValue::from_str(self.method.as_str()) {
                resp.headers_mut().insert(ALLOW, v);
            }
            return resp;
        }
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            tracing::debug!(peer, "HTTP request body over {MAX_BODY} bytes refused");
            return too_large();
        }
        let (parts, body) = req.into_parts();
        let body = match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect())
            .await
        {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                tracing::debug!(peer, "HTTP request body over {MAX_BODY} bytes refused");
                return too_large();
            }
            Ok(Err(e)) => {
                tracing::debug!(peer, "HTTP request body unreadable: {e}");
                return text(StatusCode::BAD_REQUEST, "unreadable request body");
            }
            Err(_) => return text(StatusCode::REQUEST_TIMEOUT, "request body timed out"),
        };
        (self.handler)(HttpRequest {
            method: parts.method,
            path,
            query: parts.uri.query().map(str::to_string),
            headers: parts.headers,
            body,
            peer: peer.to_string(),
        })
        .await
    }
}

/// An oversized body is a bad request (Dovecot treats every non-2xx answer alike).
fn too_large() -> HttpResponse {
    text(StatusCode::BAD_REQUEST, "request body larger than 64 KiB")
}

/// A response with a JSON body.
pub fn json(status: StatusCode, value: &serde_json::Value) -> HttpResponse {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    response(status, "application/json", body)
}

/// A response with a short plain-text body (errors).
pub fn text(status: StatusCode, message: &str) -> HttpResponse {
    let mut body = message.as_bytes().to_vec();
    body.push(b'\n');
    response(status, "text/plain; charset=utf-8", body)
}

/// A response with `body` of the given content type (the metrics exposition).
pub fn with_content_type(
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
) -> HttpResponse {
    response(status, content_type, body)
}

fn response(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> HttpResponse {
    let mut resp = http::Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Accepts connections until `shutdown`; each is served in its own task on `tracker`, with
/// keep-alive, while it holds a slot of `caps`. `name` labels log lines.
pub async fn serve(
    name: &'static str,
    listener: Listener,
    service: Arc<Service>,
    caps: ConnectionCaps,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let stop = shutdown.clone();
    accept_loop(name, listener, caps, stop, tracker, move |stream, peer| {
        let (service, shutdown) = (service.clone(), shutdown.clone());
        async move { serve_connection(name, stream, peer, service, shutdown).await }
    })
    .await
}

async fn serve_connection(
    name: &'static str,
    stream: Stream,
    peer: String,
    service: Arc<Service>,
    shutdown: CancellationToken,
) {
    tracing::debug!(peer, "{name} connection opened");
    let last_request = Arc::new(std::sync::Mutex::new(tokio::time::Instant::now()));
    let service = {
        let peer = peer.clone();
        let last_request = last_request.clone();
        service_fn(move |req: http::Request<Incoming>| {
            let service = service.clone();
            let peer = peer.clone();
            if let Ok(mut t) = last_request.lock() {
                *t = tokio::time::Instant::now();
            }
            async move { Ok::<_, Infallible>(service.dispatch(req, &peer).await) }
        })
    };
    let conn = http1::Builder::new()
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let idle = async {
        loop {
            let since = last_request
                .lock()
                .map(|t| *t)
                .unwrap_or_else(|_| tokio::time::Instant::now());
            let deadline = since + IDLE_TIMEOUT;
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => Ok(()),
            }
        }
        _ = idle => {
            // Idle between requests: closing is what keep-alive clients expect.
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        // Malformed HTTP, a client that went away mid-request: one connection's problem.
        tracing::debug!(peer, "{name} connection ended: {e}");
    }
    tracing::debug!(peer, "{name} connection closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(query: Option<&str>) -> HttpRequest {
        HttpRequest {
            method: Method::POST,
            path: "/".into(),
            query: query.map(str::to_string),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            peer: "127.0.0.1:4000".into(),
        }
    }

    #[test]
    fn query_params() {
        assert_eq!(
            req(Some("command=allow")).query_param("command"),
            Some("allow")
        );
        assert_eq!(
            req(Some("x=1&command=report")).query_param("command"),
            Some("report")
        );
        assert_eq!(req(Some("command")).query_param("command"), Some(""));
        assert_eq!(req(Some("commands=allow")).query_param("command"), None);
        assert_eq!(req(None).query_param("command"), None);
        assert_eq!(req(None).peer_ip().as_deref(), Some("127.0.0.1"));
    }
}
