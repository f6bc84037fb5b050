//! HTTP: the page, its live event stream, the JSON API and the probes.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router, middleware};
use common::events::now_epoch_seconds;
use common::ops::ApiProbes;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::reader::Shared;
use crate::view::{OrderProgress, Snapshot, TotalsView, View};

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// Everything is served from here and nothing runs inline: no other origin, no inline
/// script or style, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Orders in each live snapshot (the table on the page).
const PAGE_ORDERS: usize = 50;
/// Most orders one `GET /api/orders` returns.
const MAX_LIMIT: usize = 1_000;
/// Least time between two snapshots on one stream: a burst of messages is one update.
const THROTTLE: Duration = Duration::from_millis(250);

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub shared: Arc<Shared>,
    /// The broker answers a metadata request (one of the view's consumers asks).
    pub broker_ready: common::ops::Readiness,
    /// Cancelled at shutdown: ends the live streams.
    pub stop: CancellationToken,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl AppState {
    fn read<T>(&self, f: impl FnOnce(&View) -> T) -> T {
        let view = self
            .shared
            .view
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&view)
    }
}

/// The dashboard's OpenAPI 3.1 document (its JSON API, the live stream and the probes),
/// generated from the handlers and types here and served at `GET /openapi.json`.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "flatpack dashboard API",
        description = "A read-only view of every order's progress through the pipeline and of \
            the analytics totals, rebuilt from the four topics. E-mail addresses are masked."
    ),
    paths(orders, order, totals, events, readyz),
    modifiers(&ApiProbes)
)]
pub struct ApiDoc;

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What is wrong.
    pub error: String,
}

/// What `/readyz` answers: ready when both are true.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// The message broker answers.
    pub broker: bool,
    /// The view has read every topic up to where it was at start-up.
    pub caught_up: bool,
}

/// The dashboard's routes, with the security headers on every response.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/app.css", get(app_css))
        .route("/api/events", get(events))
        .route("/api/orders", get(orders))
        .route("/api/orders/{id}", get(order))
        .route("/api/totals", get(totals))
        .merge(common::ops::api_routes(readyz, ApiDoc::openapi()))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such page") })
        .layer(middleware::map_response(security_headers))
        .with_state(state)
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}
async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}
async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = ErrorBody {
        error: message.to_owned(),
    };
    (status, Json(body)).into_response()
}

/// One order's progress.
#[utoipa::path(
    get,
    path = "/api/orders/{id}",
    params(("id" = String, Path, description = "The order id; `1001` finds the number or the string.")),
    responses(
        (status = 200, description = "The order.", body = OrderProgress),
        (status = 400, description = "The id is not valid UTF-8 once percent-decoded.", body = ErrorBody),
        (status = 404, description = "No such order in the view (yet).", body = ErrorBody),
    )
)]
async fn order(State(state): State<AppState>, id: Result<Path<String>, PathRejection>) -> Response {
    // axum's own rejection is plain text; this API answers JSON.
    let Ok(Path(id)) = id else {
        return error(StatusCode::BAD_REQUEST, "the order id is not valid UTF-8");
    };
    match state.read(|view| view.order(&id).cloned()) {
        Some(order) => Json(order).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such order (yet)"),
    }
}

/// The query of `GET /api/orders`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct OrdersQuery {
    /// How many orders (default 50).
    #[param(value_type = Option<u16>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
}

/// The latest orders by placement time, newest first.
#[utoipa::path(
    get,
    path = "/api/orders",
    params(OrdersQuery),
    responses(
        (status = 200, description = "The orders.", body = Vec<OrderProgress>),
        (status = 400, description = "`limit` is not a whole number from 1 to 1000.", body = ErrorBody),
    )
)]
async fn orders(
    State(state): State<AppState>,
    query: Result<Query<OrdersQuery>, QueryRejection>,
) -> Response {
    // A query axum cannot read (`limit` twice) gets the same JSON answer as a bad limit.
    let limit = query.map(|Query(query)| query.limit);
    let limit = match limit
        .as_ref()
        .map(|l| l.as_deref().map(str::parse::<usize>))
    {
        Ok(None) => PAGE_ORDERS,
        Ok(Some(Ok(n))) if (1..=MAX_LIMIT).contains(&n) => n,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("limit must be a whole number between 1 and {MAX_LIMIT}"),
            );
        }
    };
    Json(state.read(|view| view.latest_orders(limit))).into_response()
}

/// The analytics totals (all time, today, the latest days) and the pipeline's state.
#[utoipa::path(
    get,
    path = "/api/totals",
    responses((status = 200, description = "The totals.", body = TotalsView))
)]
async fn totals(State(state): State<AppState>) -> Response {
    Json(state.read(|view| view.totals(now_epoch_seconds()))).into_response()
}

/// A snapshot at once, then one after every change (at most one per [`THROTTLE`]), until
/// the client goes away or the service shuts down.
#[utoipa::path(
    get,
    path = "/api/events",
    responses((status = 200,
        description = "Server-Sent Events: `snapshot` events whose data is a `Snapshot` as JSON.",
        body = Snapshot, content_type = "text/event-stream"))
)]
async fn events(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let changes = state.shared.changed.subscribe();
    let stop = state.stop.clone();
    let stream = futures::stream::unfold(
        (changes, true, state),
        |(mut changes, first, state)| async move {
            if !first {
                changes.changed().await.ok()?;
                tokio::time::sleep(THROTTLE).await;
            }
            changes.borrow_and_update();
            let snapshot = state.read(|view| view.snapshot(now_epoch_seconds(), PAGE_ORDERS));
            let event = SseEvent::default()
                .event("snapshot")
                .json_data(snapshot)
                .unwrap_or_else(|_| SseEvent::default().event("error"));
            Some((Ok(event), (changes, false, state)))
        },
    )
    .take_until(stop.cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Readiness: the broker answers and the view has caught up with the topics.
#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, description = "Ready.", body = Readiness),
    (status = 503, description = "Not ready: the broker does not answer, or the view is still catching up.", body = Readiness),
))]
async fn readyz(State(state): State<AppState>) -> Response {
    let caught_up = state.shared.caught_up();
    let broker = common::ops::is_ready(&state.broker_ready).await;
    let body = Readiness { broker, caught_up };
    if broker && caught_up {
        Json(body).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}
