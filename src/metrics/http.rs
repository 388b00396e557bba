//! `GET /metrics` over plain HTTP/1.1, for Prometheus to scrape
//! (`keyward serve --metrics-listen ADDR`).
//!
//! [`router`] is self-contained (its state is the [`Metrics`] it serves), so
//! another HTTP listener can mount it beside its own routes.

use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::net::TcpListener;

use super::{CONTENT_TYPE, Metrics};

/// The routes: `GET /metrics`.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics)
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> Response {
    match metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot encode metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Serves [`router`] on `listener` until the task running it is dropped or
/// aborted (the server aborts it once gRPC has stopped).
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    if let Err(error) = axum::serve(listener, router(metrics)).await {
        tracing::error!(%error, "metrics listener failed");
    }
}
