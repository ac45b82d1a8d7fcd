//! Feeds arbitrary bytes to the frame decoder as a stream reader would:
//! decode, advance by the bytes consumed, stop at `None` or `Err`; once as
//! `ToAgent` and once as `FromAgent`. Decoding must never panic or allocate by
//! an unchecked length, every decoded message must re-encode to a frame
//! that decodes back equal, and a general MessagePack decoder (rmp-serde)
//! must read the same body as the same message: the frame decoder accepts
//! less than a general one (but for unknown fields nested deeper than
//! rmp-serde's limit), never something else.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};
use spindle_protocol::frame::{self, FrameError, HEADER_LEN};
use spindle_protocol::{FromAgent, ToAgent};
use std::fmt::Debug;

fn read_stream<T>(mut buf: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    while let Ok(Some((msg, used))) = frame::decode::<T>(buf) {
        assert!(
            (HEADER_LEN..=buf.len()).contains(&used),
            "consumed {used} of {} bytes",
            buf.len()
        );
        let body = &buf[HEADER_LEN..used];
        match rmp_serde::from_slice::<T>(body) {
            Ok(general) => assert_eq!(general, msg, "rmp-serde reads the body differently"),
            // rmp-serde stops at 1024 levels of nesting; the frame decoder
            // skips an unknown field however deep it nests.
            Err(rmp_serde::decode::Error::DepthLimitExceeded) => {}
            Err(e) => panic!("rmp-serde refuses a body the frame decoder reads as {msg:?}: {e}"),
        }
        buf = &buf[used..];

        let bytes = match frame::encode(&msg) {
            Ok(bytes) => bytes,
            // A body near MAX_FRAME can grow past it when re-encoded
            // (fields left to their defaults are written out); that
            // refusal is correct.
            Err(FrameError::TooLarge { .. }) => continue,
            Err(e) => panic!("cannot re-encode {msg:?}: {e}"),
        };
        match frame::decode::<T>(&bytes) {
            Ok(Some((back, n))) => {
                assert_eq!(n, bytes.len(), "re-encoded frame not fully consumed");
                assert_eq!(back, msg, "re-encoded frame decodes differently");
            }
            other => panic!("re-encoded {msg:?} does not decode: {other:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    read_stream::<ToAgent>(data);
    read_stream::<FromAgent>(data);
});
