//! The frame codec: `u32` big-endian body length, then a MessagePack body with
//! named fields.
//!
//! Readers work in two steps so that no buffer is sized by an unchecked peer:
//! [`body_len`] validates the 4-byte prefix against [`MAX_FRAME`], then the
//! caller reads exactly that many bytes and calls [`decode_body`]. Buffered
//! readers can use [`decode`], which treats "not enough bytes yet" as the
//! normal `Ok(None)`.

use crate::{Blob, FromAgent, RequestId, StreamKind, MAX_FRAME};
use serde::{de::DeserializeOwned, Serialize};

/// Bytes in the length prefix.
pub const HEADER_LEN: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the {max} byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("cannot encode message: {0}")]
    Encode(String),
}

/// Validates a length prefix and returns the body length it announces.
pub fn body_len(header: [u8; HEADER_LEN]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    Ok(len)
}

/// Decodes one frame body (without its length prefix).
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    crate::de::from_slice(body).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Decodes the first frame in `buf`. Returns the message and the number of
/// bytes it occupied, or `None` when `buf` does not hold a whole frame yet.
pub fn decode<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>, FrameError> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let len = body_len(*header)?;
    let Some(body) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    Ok(Some((decode_body(body)?, HEADER_LEN + len)))
}

/// Appends one encoded frame (prefix and body) to `out`. On error `out` is
/// left as it was.
pub fn encode_into<T: Serialize>(msg: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    if let Err(e) = rmp_serde::encode::write_named(out, msg) {
        out.truncate(start);
        return Err(FrameError::Encode(e.to_string()));
    }
    let len = out.len() - start - HEADER_LEN;
    if len > MAX_FRAME {
        out.truncate(start);
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    // Cannot truncate: len <= MAX_FRAME < u32::MAX.
    out[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// The start of the frame for [`FromAgent::Stream`] `{ id, kind, data }`
/// with `len` bytes of data: writing it and then the data gives exactly the
/// bytes of [`encode`], so a sender can write a large chunk from its own
/// buffer instead of copying it into a frame first. (The data is the last
/// field, so nothing follows it.)
pub fn stream_prefix(id: RequestId, kind: StreamKind, len: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(48);
    let empty = FromAgent::Stream {
        id,
        kind,
        data: Blob::default(),
    };
    encode_into(&empty, &mut out)?;
    // Empty bytes end the encoding as a `bin 8` of length zero.
    if !out.ends_with(&[0xc4, 0]) {
        return Err(FrameError::Encode("unexpected stream encoding".into()));
    }
    out.truncate(out.len() - 2);
    match u8::try_from(len) {
        Ok(n) => out.extend_from_slice(&[0xc4, n]),
        Err(_) => match u16::try_from(len) {
            Ok(n) => {
                out.push(0xc5);
                out.extend_from_slice(&n.to_be_bytes());
            }
            Err(_) => {
                out.push(0xc6);
                out.extend_from_slice(&(len as u32).to_be_bytes());
            }
        },
    }
    let body = out.len() - HEADER_LEN + len;
    if body > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len: body,
            max: MAX_FRAME,
        });
    }
    out[..HEADER_LEN].copy_from_slice(&(body as u32).to_be_bytes());
    Ok(out)
}

/// Encodes one frame into a new buffer.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    encode_into(msg, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FromAgent, LogLevel, Ping, Request, ToAgent};

    #[test]
    fn round_trip_and_partial_input() {
        let msg = ToAgent::Call {
            id: 7,
            req: Request::Ping(Ping {}),
            after: None,
        };
        let bytes = encode(&msg).unwrap();
        for cut in 0..bytes.len() {
            assert!(
                decode::<ToAgent>(&bytes[..cut]).unwrap().is_none(),
                "cut {cut}"
            );
        }
        let (back, used) = decode::<ToAgent>(&bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(back, msg);
    }

    /// A hello from an agent that predates `Hello::shell` still decodes.
    #[test]
    fn hello_without_newer_fields_decodes() {
        #[derive(serde::Serialize)]
        enum Old {
            Hello {
                version: u32,
                build_id: String,
                arch: String,
                pid: u32,
                uid: u32,
                gid: u32,
                user: String,
                home: String,
                pythons: Vec<String>,
            },
        }
        let old = Old::Hello {
            version: 1,
            build_id: "b".into(),
            arch: "x86_64".into(),
            pid: 2,
            uid: 3,
            gid: 4,
            user: "u".into(),
            home: "/h".into(),
            pythons: vec![],
        };
        let bytes = encode(&old).unwrap();
        match decode::<FromAgent>(&bytes).unwrap().unwrap().0 {
            FromAgent::Hello(h) => assert_eq!((h.pid, h.shell.as_str()), (2, "")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stream_prefix_plus_data_is_the_frame() {
        for len in [0, 1, 255, 256, 65535, 65536, crate::CHUNK] {
            for id in [0, 200, 70_000, u64::MAX] {
                let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let mut split = stream_prefix(id, StreamKind::File, len).unwrap();
                split.extend_from_slice(&data);
                let whole = encode(&FromAgent::Stream {
                    id,
                    kind: StreamKind::File,
                    data: data.into(),
                })
                .unwrap();
                assert!(split == whole, "len {len} id {id}");
            }
        }
        assert!(stream_prefix(1, StreamKind::Stdout, MAX_FRAME).is_err());
    }

    #[test]
    fn oversized_prefix_rejected_before_body_arrives() {
        let header = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert!(matches!(
            decode::<FromAgent>(&header),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(body_len(u32::MAX.to_be_bytes()).is_err());
        assert_eq!(
            body_len((MAX_FRAME as u32).to_be_bytes()).unwrap(),
            MAX_FRAME
        );
    }

    #[test]
    fn garbage_body_is_malformed_not_panic() {
        let cases: &[&[u8]] = &[
            &[0, 0, 0, 1, 0xc1],
            &[0, 0, 0, 3, 0x81, 0xa1, b'x'],
            &[0, 0, 0, 5, 0xdb, 0xff, 0xff, 0xff, 0xff],
            &[0, 0, 0, 0],
        ];
        for case in cases {
            assert!(matches!(
                decode::<ToAgent>(case),
                Err(FrameError::Malformed(_))
            ));
        }
    }

    #[test]
    fn encode_refuses_oversized_message_and_keeps_buffer() {
        let msg = FromAgent::Log {
            level: LogLevel::Info,
            message: "x".repeat(MAX_FRAME + 1),
        };
        let mut out = vec![1, 2, 3];
        assert!(matches!(
            encode_into(&msg, &mut out),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(out, [1, 2, 3]);
    }
}
