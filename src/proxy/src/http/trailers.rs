//! The request body on its way to the app, without reserved trailer fields.
//!
//! A chunked HTTP/1.1 or an HTTP/2 request can end with trailers, and some app servers merge
//! trailers into the request's headers: a trailer named `X-Forwarded-Client-Cert` (any
//! spelling, see [`super::headers::is_reserved`]) would then stand beside, or replace, the one
//! the sidecar set. Those fields are dropped here; the rest pass unchanged.

use super::headers::strip_reserved;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

/// The client's request body, trailers sanitized. hyper's client already sends only the
/// trailers `Trailer` announces, and [`super::headers::to_app`] takes reserved names out of
/// `Trailer`; this is the layer that does not depend on either.
pub(crate) struct RequestBody<B = Incoming>(B);

impl<B> RequestBody<B> {
    pub(crate) fn new(body: B) -> Self {
        RequestBody(body)
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for RequestBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match Pin::new(&mut self.get_mut().0).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(match frame.into_trailers() {
                Ok(mut trailers) => {
                    strip_reserved(&mut trailers);
                    Frame::trailers(trailers)
                }
                Err(frame) => frame,
            }))),
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use http::HeaderMap;
    use std::convert::Infallible;

    /// A body of these frames, last first, with no size hint (so a POST to the app goes
    /// chunked).
    pub(in crate::http) struct Frames(pub(in crate::http) Vec<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.get_mut().0.pop().map(Ok))
        }
    }

    #[tokio::test]
    async fn reserved_trailers_are_dropped_and_data_and_other_trailers_pass() {
        use http_body_util::BodyExt;
        let mut trailers = HeaderMap::new();
        for (name, value) in [
            ("x-forwarded-client-cert", "Hash=00"),
            ("x-forwarded_client_cert", "Hash=01"),
            ("x_forwarded_for", "10.0.0.1"),
            ("x-real-ip", "10.0.0.2"),
            ("x-checksum", "5d41402a"),
        ] {
            trailers.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let body = RequestBody::new(Frames(vec![
            Frame::trailers(trailers),
            Frame::data(Bytes::from_static(b"hello")),
        ]));
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(
            trailers.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["x-checksum"]
        );
        assert_eq!(collected.to_bytes(), "hello");
    }
}
