//! The message-size limit, enforced on the request body as it arrives.
//!
//! tonic refuses an oversized message with OUT_OF_RANGE ("decoded message
//! length too large"), a code that says nothing to a client about what to
//! do. gRPC's convention for "too big for this server" is
//! RESOURCE_EXHAUSTED, and the message should name the limit. This layer
//! reads the 5-byte gRPC frame headers of every request body as the bytes
//! pass through and fails the body with that status as soon as a header
//! announces a message over the limit, before tonic buffers any of it.
//! tonic hands a `Status` found in a body error to the handler (or to the
//! client, for a unary call) unchanged.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::Frame;
use tonic::Status;
use tonic::body::Body;

/// A tower layer that puts [`Limited`] around every request body.
#[derive(Debug, Clone, Copy)]
pub struct MessageLimit {
    /// Largest encoded request message, in bytes.
    pub max_bytes: usize,
    /// The alert size limit it derives from, named in the refusal.
    pub max_alert_bytes: usize,
}

impl<S> tower_layer::Layer<S> for MessageLimit {
    type Service = LimitService<S>;

    fn layer(&self, inner: S) -> LimitService<S> {
        LimitService {
            inner,
            limit: *self,
        }
    }
}

/// The one call whose messages may be larger: a bundle file.
const IMPORT_BUNDLE: &str = "/liaison.v1.Admin/ImportBundle";

#[derive(Debug, Clone)]
pub struct LimitService<S> {
    inner: S,
    limit: MessageLimit,
}

impl<S> tower_service::Service<http::Request<Body>> for LimitService<S>
where
    S: tower_service::Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let mut limit = self.limit;
        // An offline bundle is many alerts in one message (administrators
        // only; the file itself is bounded).
        if req.uri().path() == IMPORT_BUNDLE {
            limit.max_bytes = limit.max_bytes.max(crate::bundle::MAX_FILE_BYTES + 4096);
        }
        self.inner
            .call(req.map(|body| Body::new(Limited::new(body, limit))))
    }
}

/// A request body that fails with RESOURCE_EXHAUSTED when a gRPC message
/// in it announces more than the limit.
pub struct Limited {
    inner: Body,
    limit: MessageLimit,
    frames: FrameReader,
    /// The refusal, once the messages before the oversized one are handed on.
    refused: Option<Status>,
}

impl Limited {
    fn new(inner: Body, limit: MessageLimit) -> Limited {
        Limited {
            inner,
            limit,
            frames: FrameReader::default(),
            refused: None,
        }
    }
}

impl http_body::Body for Limited {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if let Some(refused) = this.refused.take() {
            return Poll::Ready(Some(Err(refused)));
        }
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        let Some(data) = frame.data_ref() else {
            return Poll::Ready(Some(Ok(frame)));
        };
        let Some(over) = this.frames.scan(data, this.limit.max_bytes) else {
            return Poll::Ready(Some(Ok(frame)));
        };
        let refused = Status::resource_exhausted(format!(
            "request message {} is {} bytes; this server accepts messages of at most {} bytes \
             (alerts of at most {} bytes, attachments included)",
            over.index, over.len, this.limit.max_bytes, this.limit.max_alert_bytes
        ));
        // The messages before it are answered as usual.
        if over.offset == 0 {
            return Poll::Ready(Some(Err(refused)));
        }
        this.refused = Some(refused);
        Poll::Ready(Some(Ok(Frame::data(data.slice(..over.offset)))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A message over the limit: its index in the stream, its announced
/// length, and where its header starts in the chunk being read (0 when it
/// started in an earlier chunk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Oversized {
    index: u64,
    len: u64,
    offset: usize,
}

/// Follows the gRPC framing (`[compressed u8][length u32 BE][message]`)
/// across arbitrarily split data chunks.
#[derive(Debug, Default)]
struct FrameReader {
    /// Header bytes seen of the current frame (when `body_left` is 0).
    header: [u8; 5],
    header_len: usize,
    /// Bytes of the current message still to come.
    body_left: u64,
    /// Zero-based index of the current message in the stream.
    index: u64,
}

impl FrameReader {
    /// Reads `data`; returns the first message whose header announces more
    /// than `max` bytes.
    fn scan(&mut self, data: &Bytes, max: usize) -> Option<Oversized> {
        let mut rest = data.clone();
        while rest.has_remaining() {
            let header_start = (data.len() - rest.remaining()).saturating_sub(self.header_len);
            if self.body_left > 0 {
                let skip = usize::try_from(self.body_left)
                    .unwrap_or(usize::MAX)
                    .min(rest.remaining());
                rest.advance(skip);
                self.body_left -= skip as u64;
                if self.body_left == 0 {
                    self.index += 1;
                }
                continue;
            }
            let take = (5 - self.header_len).min(rest.remaining());
            self.header[self.header_len..self.header_len + take]
                .copy_from_slice(&rest.chunk()[..take]);
            rest.advance(take);
            self.header_len += take;
            if self.header_len < 5 {
                continue;
            }
            self.header_len = 0;
            let [_, l0, l1, l2, l3] = self.header;
            let len = u64::from(u32::from_be_bytes([l0, l1, l2, l3]));
            if len > max as u64 {
                return Some(Oversized {
                    index: self.index,
                    len,
                    offset: header_start,
                });
            }
            self.body_left = len;
            if len == 0 {
                self.index += 1;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: u32) -> Vec<u8> {
        let mut f = vec![0];
        f.extend_from_slice(&len.to_be_bytes());
        f.extend(std::iter::repeat_n(7u8, len as usize));
        f
    }

    #[test]
    fn frames_are_followed_across_any_split_and_the_oversized_one_is_named() {
        let mut stream = Vec::new();
        for len in [3, 0, 10, 100, 11] {
            stream.extend(frame(len));
        }
        // Every way of cutting the stream into two and three chunks.
        for a in 0..stream.len() {
            for b in a..stream.len() {
                let mut r = FrameReader::default();
                let chunks = [&stream[..a], &stream[a..b], &stream[b..]];
                let mut passed = 0;
                let found = chunks.iter().find_map(|c| {
                    let over = r.scan(&Bytes::copy_from_slice(c), 50);
                    match over {
                        Some(o) => passed += o.offset,
                        None => passed += c.len(),
                    }
                    over
                });
                let over = found.expect("found");
                assert_eq!((over.index, over.len), (3, 100), "split at {a}/{b}");
                // Everything before its header was handed on (3 + 0 + 10
                // bytes of messages and their 3 headers), and at most the
                // part of its header that came in an earlier chunk.
                let expected = 13 + 3 * 5;
                assert!(
                    passed == expected || (over.offset == 0 && passed < expected + 5),
                    "split at {a}/{b}: {passed}"
                );
            }
        }
        let mut r = FrameReader::default();
        assert_eq!(r.scan(&Bytes::from(stream), 100), None);
        assert_eq!(r.index, 5);
    }
}
