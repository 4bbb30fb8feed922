//! The fake API without a socket: a tower `Service` that hands each request to the router the
//! HTTPS server serves, after adding what the network path would have carried.
//!
//! The network path carries the cluster's path prefix and its bearer token. Routing,
//! authentication, authorization, faults and watches run the same code as over HTTPS; only TLS
//! and the TCP connection are skipped, so a client built on it holds no file descriptor (the
//! loadtest runs 10,000 agents in one process this way).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::HttpBody;
use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Uri, header};
use tower::Service;

/// One cluster's API served in memory: give it to `kube::Client::new(service, "default")`.
/// Cheap to clone; it keeps serving as long as it lives (even after the [`super::FakeKube`] that
/// made it is dropped).
#[derive(Clone)]
pub struct InMemoryApi {
    router: axum::Router,
    /// `/clusters/<name>`, or empty for the root cluster `default`.
    prefix: Arc<str>,
    /// `Bearer <token>`, marked sensitive.
    authorization: HeaderValue,
}

impl std::fmt::Debug for InMemoryApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryApi")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl InMemoryApi {
    pub(super) fn new(router: axum::Router, prefix: String, authorization: HeaderValue) -> Self {
        Self {
            router,
            prefix: prefix.into(),
            authorization,
        }
    }

    /// The request as the HTTPS server would have received it: the cluster's prefix before the
    /// client's path (a client built on this service sends paths only, without scheme or host),
    /// and the cluster's bearer token (replacing any the client set).
    fn address<B>(&self, request: Request<B>) -> Request<B> {
        let (mut parts, body) = request.into_parts();
        let path = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
        parts.uri = Uri::builder()
            .path_and_query(format!("{}{path}", self.prefix))
            .build()
            .expect("a valid cluster-name prefix before a valid path is a valid path");
        parts
            .headers
            .insert(header::AUTHORIZATION, self.authorization.clone());
        Request::from_parts(parts, body)
    }
}

impl<B> Service<Request<B>> for InMemoryApi
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = <axum::Router as Service<Request<B>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        <axum::Router as Service<Request<B>>>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let request = self.address(request);
        self.router.call(request)
    }
}
