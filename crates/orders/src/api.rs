//! HTTP handlers and the errors they answer with.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Extension, MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use common::events::{
    Email, Id, Order, OrderDetails, SCHEMA_VERSION, decode_json, now_epoch_seconds,
};
use common::kafka;
use common::ops::ApiProbes;
use common::traces::{self, Traced};
use metrics::{Counter, Histogram, counter, histogram};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use serde::{Deserialize, Serialize};
use tracing::{Instrument, debug, error, warn};
use utoipa::{OpenApi, ToSchema};

use crate::AppState;
use crate::accepted::Known;

/// The request body of `POST /order`: the seed's fields. Unknown fields are ignored, as the
/// seed ignores them; `time` is set by the server.
#[derive(Debug, Deserialize, ToSchema)]
struct OrderRequest {
    user_id: Id,
    order_id: Id,
    user_email: Email,
    order_details: OrderDetails,
}

/// The body of every error answer: what is wrong, and for a field that is invalid, which one.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What is wrong, in words meant for the client's developer.
    pub error: String,
    /// The field at fault, as a path (`order_details.price`); only on `422`, and `order_id`
    /// on `409`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ErrorBody {
    fn new(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            field: None,
        }
    }
}

/// What `/readyz` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Probe {
    /// `ready` or `not ready`.
    pub status: &'static str,
    /// Why the service is not ready; only on `503`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
}

/// Why a request was not accepted. Each variant answers with its own status and an
/// [`ErrorBody`]; internals never leak into it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("request body could not be read")]
    BadBody,
    #[error("request body is not valid JSON: {0}")]
    Syntax(String),
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
    #[error(
        "the order could not be confirmed: the message broker did not acknowledge it in time; send the same order again (the same order_id is never decided twice)"
    )]
    Unavailable,
    #[error(
        "the order could not be taken yet: the orders accepted before are still being read after a start; send the same order again"
    )]
    Restoring,
    #[error(
        "the order could not be taken: the orders accepted before could not be looked up; send the same order again"
    )]
    Index,
    #[error(
        "order_id {0} was already used for a different order; a new order needs a new order_id (a declined order too: send it again with a new order_id)"
    )]
    OrderIdUsed(String),
}

impl ApiError {
    /// The `reason` label of `flatpack_orders_total{outcome="rejected"}`.
    fn reason(&self) -> &'static str {
        match self {
            ApiError::UnsupportedMediaType => "content_type",
            ApiError::TooLarge(_) => "too_large",
            ApiError::BadBody | ApiError::Syntax(_) => "not_json",
            ApiError::Invalid { .. } => "invalid",
            ApiError::Unavailable => "broker_unavailable",
            ApiError::Restoring => "restoring",
            ApiError::Index => "index",
            ApiError::OrderIdUsed(_) => "order_id_used",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        counter!("flatpack_orders_total", "outcome" => "rejected", "reason" => self.reason())
            .increment(1);
        let status = match self {
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BadBody | ApiError::Syntax(_) => StatusCode::BAD_REQUEST,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable | ApiError::Restoring | ApiError::Index => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::OrderIdUsed(_) => StatusCode::CONFLICT,
        };
        let mut body = ErrorBody::new(self.to_string());
        match self {
            ApiError::Invalid { field, .. } => body.field = Some(field),
            ApiError::OrderIdUsed(_) => body.field = Some("order_id".into()),
            _ => {}
        }
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // The body was left unread, so the connection cannot carry another request: say
            // so, or a client reuses it and its next request meets a closed socket.
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

/// The API's OpenAPI 3.1 document, generated from the handlers and types below and served
/// at `GET /openapi.json`.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "flatpack orders API",
        description = "Places furniture orders. An order is answered `200` only after the \
            message broker acknowledged it on the `order_details` topic."
    ),
    paths(post_order, readyz),
    modifiers(&ApiProbes)
)]
pub struct ApiDoc;

/// The API's routes, with the body limit and request tracing applied.
pub fn router(state: AppState) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/order", post(post_order))
        .merge(common::ops::api_routes(readyz, ApiDoc::openapi()))
        .fallback(|| async { (StatusCode::NOT_FOUND, Json(ErrorBody::new("no such route"))) })
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(count_request))
        .layer(middleware::from_fn(trace_request))
        .with_state(state)
}

/// Handles every request in its trace ([`traces::http`]: a span only when the trace is
/// sampled), which the handler finds as an `Extension<Traced>`.
async fn trace_request(mut request: Request, next: Next) -> Response {
    let trace = traces::http(&request);
    let span = trace.span().clone();
    request.extensions_mut().insert(trace);
    next.run(request).instrument(span).await
}

/// Counts every request by route and status (`flatpack_http_requests_total`) and times it
/// (`flatpack_http_request_seconds`).
async fn count_request(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |path| path.as_str())
        .to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let (requests, seconds) = http_metrics(&route, response.status());
    seconds.record(started.elapsed());
    requests.increment(1);
    response
}

/// The handles of `flatpack_http_requests_total{route, status}` and
/// `flatpack_http_request_seconds{route}`, registered once per route and status rather than
/// looked up by their labels on every request.
fn http_metrics(route: &str, status: StatusCode) -> (Counter, Histogram) {
    use std::collections::HashMap;
    use std::sync::{LazyLock, RwLock};
    type Handles = HashMap<(String, u16), (Counter, Histogram)>;
    static HANDLES: LazyLock<RwLock<Handles>> = LazyLock::new(RwLock::default);
    let key = (route.to_owned(), status.as_u16());
    if let Some(handles) = HANDLES.read().ok().and_then(|map| map.get(&key).cloned()) {
        return handles;
    }
    let handles = (
        counter!("flatpack_http_requests_total", "route" => key.0.clone(), "status" => status.as_u16().to_string()),
        histogram!("flatpack_http_request_seconds", "route" => key.0.clone()),
    );
    if let Ok(mut map) = HANDLES.write() {
        map.insert(key, handles.clone());
    }
    handles
}

/// Places an order.
///
/// Validates the body, writes the order to `order_details` keyed by `order_id`, and answers
/// the accepted order (with the server's `time`) once the broker acknowledged the write.
/// Unknown fields are ignored; `order_details` keeps every field besides `price`.
#[utoipa::path(
    post,
    path = "/order",
    request_body(content = OrderRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Accepted: the order is on `order_details`. The same order sent again (same `order_id`, same content) is answered with the order as first accepted, `time` included, and is not written again.", body = Order),
        (status = 400, description = "The body is not JSON.", body = ErrorBody),
        (status = 413, description = "The body is larger than `ORDERS_MAX_BODY_BYTES`.", body = ErrorBody),
        (status = 415, description = "The Content-Type is not `application/json`.", body = ErrorBody),
        (status = 409, description = "The `order_id` was accepted before for a different order (another price, item, card, ...): a new order needs a new `order_id`; `field` is `order_id`.", body = ErrorBody),
        (status = 422, description = "A field is missing or invalid; `field` names it.", body = ErrorBody),
        (status = 503, description = "The broker did not acknowledge the order in time, or the orders accepted before are still being read after a start; send the same order again.",
            body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before sending the order again."))),
    )
)]
async fn post_order(
    State(state): State<AppState>,
    Extension(trace): Extension<Traced>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Order>, ApiError> {
    if !is_json(&headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let body = body.map_err(|rejection| match rejection {
        BytesRejection::FailedToBufferBody(_)
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
        {
            ApiError::TooLarge(state.max_body_bytes)
        }
        _ => ApiError::BadBody,
    })?;
    let decoded = decode_json::<OrderRequest>(&body);
    // serde's derive also reads a struct from a JSON array of its fields in order; the API
    // takes only the object it documents (valid JSON of another shape is a 422 like others).
    if !is_object(&body) && decoded.as_ref().err().is_none_or(|err| !err.syntax) {
        return Err(ApiError::Invalid {
            field: "body".into(),
            problem: "invalid type: must be a JSON object".into(),
        });
    }
    let request: OrderRequest = decoded.map_err(|err| match err.field {
        Some(field) if !err.syntax => ApiError::Invalid {
            field,
            problem: err.problem,
        },
        _ if err.syntax => ApiError::Syntax(err.problem),
        _ => ApiError::Invalid {
            field: "body".into(),
            problem: err.problem,
        },
    })?;
    if !state.accepted.caught_up() {
        return Err(ApiError::Restoring);
    }
    let order = Order {
        user_id: request.user_id,
        order_id: request.order_id,
        user_email: request.user_email,
        order_details: request.order_details,
        time: now_epoch_seconds(),
        schema: SCHEMA_VERSION,
    };
    // Copies of this order sent at once take turns: the first is written, the others are
    // answered as it was.
    let _turn = state.accepted.turn(&order).await;
    let known = state.accepted.check(&order).map_err(|err| {
        error!(order_id = %order.order_id, cause = format!("{err:#}"), "looking up the accepted orders failed");
        ApiError::Index
    })?;
    match known {
        Known::New => {}
        Known::Same { time } => {
            debug!(order_id = %order.order_id, "the same order again; answering it as first accepted");
            counter!("flatpack_orders_total", "outcome" => "repeated").increment(1);
            return Ok(Json(Order { time, ..order }));
        }
        Known::Different => return Err(ApiError::OrderIdUsed(order.order_id.to_string())),
    }
    publish(&state, &order, &trace).await?;
    state.accepted.written(&order);
    Ok(Json(order))
}

/// The body is a JSON object (or not JSON at all): its first non-blank byte is `{`.
fn is_object(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// `application/json`, with or without parameters (`; charset=utf-8`).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// Writes of one order at most, when acknowledgements come without an offset.
const PUBLISH_ATTEMPTS: u32 = 3;

/// Writes the order and waits for the broker's acknowledgement, within the publish timeout.
async fn publish(state: &AppState, order: &Order, trace: &Traced) -> Result<(), ApiError> {
    let key = order.order_id.to_string();
    let payload = serde_json::to_vec(order).map_err(|err| {
        warn!(order_id = %key, cause = %err, "order could not be serialised");
        ApiError::Unavailable
    })?;
    // A delivery without an offset may be of a record never written (see
    // `kafka::acknowledged`): it is written again, as a client would after a `503`. Should
    // the first copy have been written after all, transactions skips the second, and this
    // API's index keeps the first.
    let deadline = Instant::now() + state.publish_timeout;
    let mut attempt = 1;
    let acknowledged = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let record = FutureRecord::to(&state.topic)
            .key(&key)
            .payload(&payload)
            .headers(trace.headers());
        // The producer gives up after the time left; the outer bound only guards the
        // guarantee that no request waits much longer than the publish timeout.
        let send = state.producer.send(record, Timeout::After(left));
        let sent = tokio::time::timeout(left + Duration::from_secs(1), send)
            .await
            .map(|sent| sent.map_err(|(err, _)| err));
        match sent {
            Ok(Ok(delivery)) if delivery.offset < 0 && attempt < PUBLISH_ATTEMPTS => {
                attempt += 1;
                warn!(order_id = %key, attempt, "the broker's acknowledgement came without an offset; writing the order again");
            }
            other => break other.map(|sent| sent.and_then(kafka::acknowledged)),
        }
    };
    match acknowledged {
        Ok(Ok(delivery)) => {
            // Per-order facts are metrics and traces; this line is for debugging.
            debug!(order_id = %key, partition = delivery.partition, offset = delivery.offset, trace_id = %trace.trace_id(), "order accepted");
            counter!("flatpack_orders_total", "outcome" => "accepted").increment(1);
            Ok(())
        }
        Ok(Err(err)) => {
            warn!(order_id = %key, cause = %err, "order not acknowledged by the broker");
            Err(ApiError::Unavailable)
        }
        Err(_) => {
            warn!(order_id = %key, "order acknowledgement timed out");
            Err(ApiError::Unavailable)
        }
    }
}

/// Readiness: the orders accepted before are read, and the message broker answers.
#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, description = "Ready to take orders.", body = Probe),
    (status = 503, description = "The orders accepted before are still being read, or the broker does not answer: orders would get `503`.", body = Probe),
))]
async fn readyz(State(state): State<AppState>) -> Response {
    let error = if !state.accepted.caught_up() {
        Some("the orders accepted before are still being read from order_details")
    } else if !common::ops::is_ready(&state.ready).await {
        Some("the message broker does not answer")
    } else {
        None
    };
    let status = match error {
        None => StatusCode::OK,
        Some(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = Probe {
        status: if error.is_none() {
            "ready"
        } else {
            "not ready"
        },
        error,
    };
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_is_3_1_and_lists_every_route() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        if let Ok(path) = std::env::var("FLATPACK_DUMP_OPENAPI") {
            std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
        }
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1"),
            "{}",
            doc["openapi"]
        );
        let paths: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for route in ["/order", "/healthz", "/readyz", "/metrics", "/openapi.json"] {
            assert!(paths.contains(&route), "{route} missing from {paths:?}");
        }
        let statuses: Vec<&str> = doc["paths"]["/order"]["post"]["responses"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(statuses, ["200", "400", "409", "413", "415", "422", "503"]);
    }

    #[test]
    fn only_an_object_body_is_an_object() {
        assert!(is_object(b" \n{\"a\": 1}"));
        assert!(!is_object(br#"[7, 1, "anna@example.com", {"price": 1}]"#));
        assert!(!is_object(b"\"x\""));
        assert!(!is_object(b""));
    }

    #[test]
    fn json_content_types_are_recognised() {
        let mut headers = HeaderMap::new();
        assert!(!is_json(&headers));
        for (value, expected) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("Application/JSON", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
        ] {
            headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            assert_eq!(is_json(&headers), expected, "{value}");
        }
    }
}
