//! One request: refuse it, or forward it to the app and relay the answer.

use super::app::{AppError, ListenerBody};
use super::body::{Payload, RequestLog, ResponseBody};
use super::conn::{Conn, DENIED_BODY};
use super::trailers::RequestBody;
use super::wait::turned_true;
use super::{headers, splice};
use crate::logging::millis;
use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use tls_sidecar_config::normalize_path;
use tokio::time::error::Elapsed;

/// Answers one request; never fails (problems become `4xx`/`5xx` answers and log lines).
pub(crate) async fn handle(conn: Arc<Conn>, req: Request<Incoming>) -> Response<ResponseBody> {
    let index = conn.requests.fetch_add(1, Relaxed);
    let mut log = RequestLog::start(conn.clone(), req.method(), req.uri());
    let response = if conn.h2 {
        // hyper runs each HTTP/2 stream in a task of its own, which dropping the connection
        // does not cancel: stop waiting for the app when the drain closes everything.
        let mut close_all = conn.close_all.clone();
        tokio::select! {
            response = respond(&conn, req, index, &mut log) => response,
            () = turned_true(&mut close_all) => {
                log.fail("closed at the end of the drain");
                local(StatusCode::SERVICE_UNAVAILABLE, "tls-sidecar: shutting down\n")
            }
        }
    } else {
        respond(&conn, req, index, &mut log).await
    };
    finish(response, log)
}

/// Answers one request the fast HTTP/1.1 server side took apart itself ([`super::h1`]): a
/// `GET` without a body, on a listener without denial or request rules, whose head for the app
/// is `head` (origin-form `uri`, headers already rewritten).
pub(crate) async fn handle_plain(
    conn: Arc<Conn>,
    uri: &Uri,
    head: Bytes,
) -> Response<ResponseBody> {
    conn.requests.fetch_add(1, Relaxed);
    let mut log = RequestLog::start(conn.clone(), &Method::GET, uri);
    let answer = within_idle(&conn, conn.shared.app.send_head(head, &Method::GET)).await;
    let response = relay(&conn, answer, None, &mut log);
    finish(response, log)
}

fn finish(response: Response<Payload>, mut log: RequestLog) -> Response<ResponseBody> {
    log.status = response.status().as_u16();
    response.map(|payload| ResponseBody::new(payload, log))
}

async fn respond(
    conn: &Arc<Conn>,
    mut req: Request<Incoming>,
    index: u64,
    log: &mut RequestLog,
) -> Response<Payload> {
    if let Some(denied) = &conn.denial {
        conn.shared.metrics.denials.fetch_add(1, Relaxed);
        log.denied = Some(denied.reason.clone());
        return local(StatusCode::FORBIDDEN, denied.body.clone());
    }
    if !conn.h2 && conn.is_ambiguous(index) {
        log.fail("the request head had both Content-Length and Transfer-Encoding");
        let mut response = local(
            StatusCode::BAD_REQUEST,
            "tls-sidecar: the request has both Content-Length and Transfer-Encoding\n",
        );
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    if req.method() == Method::CONNECT {
        log.fail("CONNECT is not forwarded");
        return local(
            StatusCode::METHOD_NOT_ALLOWED,
            "tls-sidecar: CONNECT is not supported\n",
        );
    }

    let normal_path = match authorize(conn, &req, log) {
        Ok(path) => path,
        Err((status, body)) => return local(status, body),
    };

    let upgrade =
        !conn.h2 && req.version() == Version::HTTP_11 && headers::wants_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    if let Some(conflict) = headers::host_conflict(&parts.headers, parts.uri.authority(), conn.h2) {
        log.fail(conflict);
        return local(
            StatusCode::BAD_REQUEST,
            format!("tls-sidecar: {conflict}\n"),
        );
    }
    let Some(uri) = app_uri(&parts.uri, normal_path) else {
        log.fail("the request target cannot be forwarded");
        return local(
            StatusCode::BAD_REQUEST,
            "tls-sidecar: the request target cannot be forwarded\n",
        );
    };
    headers::to_app(
        &mut parts.headers,
        parts.uri.authority(),
        &conn.to_app,
        conn.h2,
        upgrade,
    );
    parts.uri = uri;
    // A proxy sends its own HTTP version (RFC 9110 §6.2); the app speaks HTTP/1.1 to us.
    parts.version = Version::HTTP_11;
    let request = Request::from_parts(parts, RequestBody::new(body));
    let answer = within_idle(conn, conn.shared.app.send(request)).await;
    relay(conn, answer, client_upgrade, log)
}

/// The app's answer to the request `send` sends, or `Err` when its head has not started within
/// limits.idle_timeout: a hung app must not hold the client, a max_connections slot and an
/// app connection forever.
///
/// Apart from [`relay`], which is not async, so that the futures of a request (which the
/// connection's loop creates and moves for every request) carry only this wait.
async fn within_idle(
    conn: &Conn,
    send: impl Future<Output = Result<Response<ListenerBody>, AppError>>,
) -> Result<Result<Response<ListenerBody>, AppError>, Elapsed> {
    tokio::time::timeout(conn.shared.settings.idle_timeout, send).await
}

/// Makes the app's `answer` the client's (`client_upgrade`: the client's side of a requested
/// upgrade), or answers for the app when it gave none.
fn relay(
    conn: &Arc<Conn>,
    answer: Result<Result<Response<ListenerBody>, AppError>, Elapsed>,
    client_upgrade: Option<OnUpgrade>,
    log: &mut RequestLog,
) -> Response<Payload> {
    let idle = conn.shared.settings.idle_timeout;
    let mut response = match answer {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => {
            let (status, text) = app_error(conn, &e);
            log.fail(text.clone());
            return local(status, format!("tls-sidecar: {text}\n"));
        }
        Err(_) => {
            let text = format!(
                "the app on {} did not answer within {} ms (limits.idle_timeout)",
                conn.shared.settings.upstream,
                millis(idle)
            );
            log.fail(text.clone());
            return local(
                StatusCode::GATEWAY_TIMEOUT,
                format!("tls-sidecar: {text}\n"),
            );
        }
    };

    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        let Some(client_upgrade) = client_upgrade else {
            log.fail("the app switched protocols on a request that did not ask to");
            return local(
                StatusCode::BAD_GATEWAY,
                "tls-sidecar: the app answered 101 Switching Protocols to a request that did \
                 not ask to upgrade\n",
            );
        };
        // The app's side is its connection, as it stands after the 101.
        let Some(app_side) = response.body_mut().upgraded() else {
            log.fail("the app's upgraded connection was gone");
            return local(StatusCode::BAD_GATEWAY, "tls-sidecar: the upgrade failed\n");
        };
        let idle = conn.shared.settings.idle_timeout;
        conn.set_tunnel(splice::tunnel(client_upgrade, app_side, idle));
    }
    let (mut parts, body) = response.into_parts();
    headers::to_client(&mut parts.headers, switching);
    parts.version = Version::HTTP_11;
    // Nothing of the app-side connection (its address, hyper's bookkeeping) goes to the client.
    parts.extensions = http::Extensions::new();
    // An upgraded app connection is the tunnel's now, never returned to the pool.
    let payload = if switching {
        Payload::empty()
    } else {
        Payload::App(body)
    };
    Response::from_parts(parts, payload)
}

/// Applies the listener's request rules: the normalised path to forward (`None` without
/// rules), or the status and body of the answer to a refused request. The app gets the path
/// the rules matched, so a spelling that means another path to the app cannot slip past them.
fn authorize(
    conn: &Conn,
    req: &Request<Incoming>,
    log: &mut RequestLog,
) -> Result<Option<String>, (StatusCode, Bytes)> {
    let rules = &conn.shared.settings.rules;
    if rules.is_empty() {
        return Ok(None);
    }
    let path = normalize_path(req.uri().path()).map_err(|e| {
        log.fail(format!("the path has no normal form: {e}"));
        let body = Bytes::from(format!("tls-sidecar: {e}\n"));
        (StatusCode::BAD_REQUEST, body)
    })?;
    rules
        .check(req.method().as_str(), &path, conn.identity.as_ref())
        .map_err(|denial| {
            conn.shared.metrics.request_denied(denial.rule);
            log.denied = Some(denial.reason.0.into());
            (StatusCode::FORBIDDEN, Bytes::from_static(DENIED_BODY))
        })?;
    Ok(Some(path))
}

/// The origin-form target (`/path?query`) for the request target `uri`, with `normal_path`
/// (the request rules' normal form) in place of its path when there is one.
fn app_uri(uri: &Uri, normal_path: Option<String>) -> Option<Uri> {
    let path = match (normal_path, uri.path_and_query()) {
        (Some(path), pq) => match pq.and_then(PathAndQuery::query) {
            Some(query) => PathAndQuery::try_from(format!("{path}?{query}")).ok()?,
            None => PathAndQuery::try_from(path).ok()?,
        },
        (None, Some(pq)) if pq.as_str().starts_with('/') => pq.clone(),
        (None, None) => PathAndQuery::from_static("/"),
        // `OPTIONS *` and other non-origin targets.
        (None, Some(_)) => return None,
    };
    Some(Uri::from(path))
}

/// Status and one-line text for a failure to get an answer from the app.
fn app_error(conn: &Conn, e: &AppError) -> (StatusCode, Cow<'static, str>) {
    let upstream = &conn.shared.settings.upstream;
    let text = match e {
        AppError::Connect(io) => {
            let cause = match io {
                Some(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                    "connection refused".to_owned()
                }
                Some(io) if io.kind() != std::io::ErrorKind::TimedOut => io.to_string(),
                // Our connect_timeout, or the kernel's.
                _ => format!(
                    "no connection within {} ms",
                    millis(conn.shared.settings.connect_timeout)
                ),
            };
            format!("the app is not reachable on {upstream} ({cause})")
        }
        AppError::Exchange(e) => format!("the app on {upstream} did not answer ({e})"),
    };
    (StatusCode::BAD_GATEWAY, text.into())
}

/// A short plain-text answer of ours.
fn local(status: StatusCode, text: impl Into<Bytes>) -> Response<Payload> {
    let mut response = Response::new(Payload::text(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
