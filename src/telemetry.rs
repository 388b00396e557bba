//! Logging through `tracing`, to stderr, and a span around every RPC.
//!
//! `RUST_LOG` sets the filter (default `info`). Nothing logged anywhere in
//! keyward holds a secret: keys are identified by their public id.
//!
//! Every RPC runs in a span `rpc` with its `method` (the gRPC path), a
//! `request_id`, and the `caller`'s key id once authenticated, so each line a
//! request logs carries them and one request can be followed through the
//! log. The request id is the client's `x-request-id` when it sends a usable
//! one (a proxy's or a tracing system's), else a new random one; either way
//! it is answered in the `x-request-id` response metadata, so a client can
//! quote it when reporting a problem.

use std::{
    future::Future,
    io::IsTerminal,
    pin::Pin,
    sync::{
        LazyLock,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use tracing::Instrument;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event, coloured on a terminal.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines: `timestamp`, `level`,
    /// `target`, `fields` (the event's, with its `message`), and `spans`
    /// (the enclosing spans' fields, so each request's `request_id`,
    /// `method` and `caller` are on every line it logs).
    Json,
}

/// Installs the global subscriber, writing to stderr in `format`. Call once,
/// from `main`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .init(),
    }
}

/// A budget of log lines per second for events a client can cause at will
/// (a refused credential): past it, lines are counted instead of written,
/// and the next line written says how many were held back. A flood of bad
/// credentials then costs a few lines a second instead of one per request,
/// and cannot bury the lines that matter; the metrics count every one.
#[derive(Debug)]
pub struct LogBudget {
    per_second: u64,
    /// The second (since the Unix epoch) `used` counts for.
    second: AtomicU64,
    used: AtomicU64,
    held_back: AtomicU64,
}

impl LogBudget {
    /// A budget of `per_second` lines a second.
    #[must_use]
    pub const fn new(per_second: u64) -> Self {
        Self {
            per_second,
            second: AtomicU64::new(0),
            used: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(held back since the last line written)` when a line may be
    /// written now, `None` when it is over budget (and counted).
    pub fn admit(&self) -> Option<u64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        self.admit_at(now)
    }

    fn admit_at(&self, second: u64) -> Option<u64> {
        if self.second.swap(second, Ordering::Relaxed) != second {
            self.used.store(0, Ordering::Relaxed);
        }
        if self.used.fetch_add(1, Ordering::Relaxed) < self.per_second {
            Some(self.held_back.swap(0, Ordering::Relaxed))
        } else {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// The metadata key a request id comes in and goes out under.
pub const REQUEST_ID: &str = "x-request-id";

/// Longest request id taken from a client; longer ones are replaced.
const MAX_REQUEST_ID: usize = 64;

/// Records the authenticated caller on the current RPC's span.
pub fn record_caller(caller: impl std::fmt::Display) {
    tracing::Span::current().record("caller", tracing::field::display(caller));
}

/// The request id for `headers`: the client's, if it is short and made of
/// characters safe to log and echo (letters, digits, `-_.:`), else a new
/// one.
fn request_id(headers: &http::HeaderMap) -> http::HeaderValue {
    let usable = headers.get(REQUEST_ID).filter(|value| {
        let bytes = value.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= MAX_REQUEST_ID
            && bytes
                .iter()
                .all(|byte| byte.is_ascii_alphanumeric() || b"-_.:".contains(byte))
    });
    if let Some(value) = usable {
        value.clone()
    } else {
        let number = new_request_number();
        let mut hex = [0_u8; 16];
        for (digit, nibble) in hex.iter_mut().zip((0..16).rev()) {
            let value = (number >> (nibble * 4)) & 0xf;
            *digit = b"0123456789abcdef"[usize::try_from(value).unwrap_or(0)];
        }
        http::HeaderValue::from_bytes(&hex).expect("hex is a valid header value")
    }
}

/// A number for a new request id: unique within the process (a counter run
/// through a bijection) and unlike other processes' (a random start), with
/// no system call per request: ids are for finding a request's log lines,
/// not secrets.
fn new_request_number() -> u64 {
    static START: LazyLock<u64> = LazyLock::new(|| {
        let mut random = [0_u8; 8];
        getrandom::fill(&mut random).expect("the operating system's random source");
        u64::from_le_bytes(random)
    });
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // splitmix64's finaliser: a bijection, so distinct counters give
    // distinct ids, and neighbours look unrelated.
    let mut z = START.wrapping_add(
        NEXT.fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Wraps each RPC of a tonic server in its span (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcSpanLayer;

impl<S> tower_layer::Layer<S> for RpcSpanLayer {
    type Service = RpcSpan<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcSpan { inner }
    }
}

/// The service [`RpcSpanLayer`] makes.
#[derive(Debug, Clone)]
pub struct RpcSpan<S> {
    inner: S,
}

impl<S, RequestBody, ResponseBody> tower_service::Service<http::Request<RequestBody>> for RpcSpan<S>
where
    S: tower_service::Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let id = request_id(request.headers());
        let span = tracing::info_span!(
            "rpc",
            method = request.uri().path(),
            request_id = id.to_str().unwrap_or_default(),
            caller = tracing::field::Empty,
        );
        let answer = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let mut response = answer.await?;
                response.headers_mut().insert(REQUEST_ID, id);
                Ok(response)
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_log_budget_lets_a_few_lines_a_second_through_and_counts_the_rest() {
        let budget = super::LogBudget::new(2);
        assert_eq!(budget.admit_at(100), Some(0));
        assert_eq!(budget.admit_at(100), Some(0));
        assert_eq!(budget.admit_at(100), None);
        assert_eq!(budget.admit_at(100), None);
        // The next second's first line says how many were held back.
        assert_eq!(budget.admit_at(101), Some(2));
        assert_eq!(budget.admit_at(101), Some(0));
        assert_eq!(budget.admit_at(101), None);
    }

    use super::*;

    fn id_for(value: Option<&str>) -> String {
        let mut headers = http::HeaderMap::new();
        if let Some(value) = value {
            headers.insert(REQUEST_ID, value.parse().unwrap());
        }
        request_id(&headers).to_str().unwrap().to_owned()
    }

    #[test]
    fn a_usable_request_id_is_kept_and_any_other_replaced() {
        assert_eq!(id_for(Some("req-42_a.b:c")), "req-42_a.b:c");
        let fresh = id_for(None);
        assert_eq!(fresh.len(), 16);
        assert!(
            fresh.bytes().all(|byte| byte.is_ascii_hexdigit()),
            "{fresh}"
        );
        assert_ne!(fresh, id_for(None));
        for unusable in ["", "has space", "quote\"", &"a".repeat(65), "new\tline"] {
            let replaced = id_for(Some(unusable));
            assert_ne!(replaced, unusable);
            assert_eq!(replaced.len(), 16, "{unusable:?}");
        }
    }
}
