//! Kafka wire framing, written once for the broker's replica fetcher and
//! request reader, the harness's final reads and the tests.
//!
//! A frame is a 4-byte big-endian size and that many bytes. A request
//! frame holds a request header and a body; a response frame holds a
//! response header and a body. Every frame read is checked against a size
//! cap before anything is allocated, so a garbled or hostile size cannot
//! make the reader allocate gigabytes.

use std::io::{Read, Write};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The default cap on a response frame (a fetch asks for at most 8 MiB).
pub const MAX_FRAME: usize = 64 << 20;

/// What went wrong on the wire.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The request could not be encoded (a version the message lacks).
    #[error("encode {key:?} v{version}: {reason}")]
    Encode {
        key: ApiKey,
        version: i16,
        reason: String,
    },
    /// A frame size below 0 or above the cap.
    #[error("a frame of {len} bytes is outside 0..={max}")]
    Size { len: i64, max: usize },
    /// The connection failed or closed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The answer is not what the request's key and version decode to.
    #[error("decode {what}: {reason}")]
    Decode { what: String, reason: String },
    /// The answer belongs to another request.
    #[error("the answer to request {sent} has correlation id {got}")]
    Correlation { sent: i32, got: i32 },
}

/// A request frame: size, header (with `client_id`) and body.
pub fn request<Req: Encodable>(
    key: ApiKey,
    version: i16,
    correlation: i32,
    client_id: &'static str,
    req: &Req,
) -> Result<Bytes, WireError> {
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation)
        .with_client_id(Some(StrBytes::from_static_str(client_id)));
    let encode = |reason: String| WireError::Encode {
        key,
        version,
        reason,
    };
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    header
        .encode(&mut buf, key.request_header_version(version))
        .map_err(|e| encode(e.to_string()))?;
    req.encode(&mut buf, version)
        .map_err(|e| encode(e.to_string()))?;
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

/// `body` with its size in front.
pub fn frame(body: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(body.len() + 4);
    buf.put_i32(body.len() as i32);
    buf.extend_from_slice(body);
    buf.freeze()
}

/// The frame size a 4-byte prefix announces, if within `0..=max`.
pub fn frame_len(prefix: i32, max: usize) -> Result<usize, WireError> {
    if prefix < 0 || prefix as usize > max {
        return Err(WireError::Size {
            len: i64::from(prefix),
            max,
        });
    }
    Ok(prefix as usize)
}

/// Reads one frame (blocking).
pub fn read_frame<R: Read>(r: &mut R, max: usize) -> Result<Bytes, WireError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = frame_len(i32::from_be_bytes(len), max)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Bytes::from(body))
}

/// Reads one frame (async).
pub async fn read_frame_async<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Bytes, WireError> {
    let len = frame_len(r.read_i32().await?, max)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Bytes::from(body))
}

/// Decodes a response frame's body: its header must carry `correlation`.
pub fn response<Resp: Decodable>(
    key: ApiKey,
    version: i16,
    correlation: i32,
    mut body: Bytes,
) -> Result<Resp, WireError> {
    let h =
        ResponseHeader::decode(&mut body, key.response_header_version(version)).map_err(|e| {
            WireError::Decode {
                what: format!("{key:?} response header"),
                reason: e.to_string(),
            }
        })?;
    if h.correlation_id != correlation {
        return Err(WireError::Correlation {
            sent: correlation,
            got: h.correlation_id,
        });
    }
    Resp::decode(&mut body, version).map_err(|e| WireError::Decode {
        what: format!("{key:?} v{version} response"),
        reason: e.to_string(),
    })
}

/// One request and its response over a blocking stream.
pub fn call<S: Read + Write, Req: Encodable, Resp: Decodable>(
    stream: &mut S,
    key: ApiKey,
    version: i16,
    correlation: i32,
    client_id: &'static str,
    req: &Req,
) -> Result<Resp, WireError> {
    stream.write_all(&request(key, version, correlation, client_id, req)?)?;
    let body = read_frame(stream, MAX_FRAME)?;
    response(key, version, correlation, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{MetadataRequest, MetadataResponse};

    #[test]
    fn a_request_frame_round_trips_and_sizes_are_capped() {
        let req = MetadataRequest::default();
        let f = request(ApiKey::Metadata, 9, 42, "t", &req).unwrap();
        let body = read_frame(&mut &f[..], 1 << 20).unwrap();
        assert_eq!(body.len() + 4, f.len());
        let mut b = body.clone();
        let h = RequestHeader::decode(&mut b, ApiKey::Metadata.request_header_version(9)).unwrap();
        assert_eq!((h.correlation_id, h.request_api_version), (42, 9));
        // A size above the cap is refused before anything is allocated.
        let huge = [0x7f, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_frame(&mut &huge[..], MAX_FRAME),
            Err(WireError::Size { .. })
        ));
        let negative = (-1i32).to_be_bytes();
        assert!(matches!(
            read_frame(&mut &negative[..], MAX_FRAME),
            Err(WireError::Size { len: -1, .. })
        ));
    }

    #[test]
    fn a_response_for_another_request_is_refused() {
        let mut buf = BytesMut::new();
        ResponseHeader::default()
            .with_correlation_id(7)
            .encode(&mut buf, ApiKey::Metadata.response_header_version(9))
            .unwrap();
        MetadataResponse::default().encode(&mut buf, 9).unwrap();
        let body = buf.freeze();
        assert!(response::<MetadataResponse>(ApiKey::Metadata, 9, 7, body.clone()).is_ok());
        assert!(matches!(
            response::<MetadataResponse>(ApiKey::Metadata, 9, 8, body),
            Err(WireError::Correlation { sent: 8, got: 7 })
        ));
    }
}
