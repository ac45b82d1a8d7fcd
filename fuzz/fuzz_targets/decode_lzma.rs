//! Feeds arbitrary bytes to the LZMA decoder the agent unpacks module code
//! with. It must never panic nor produce more than its limit, and whatever
//! it decodes, liblzma must decode to the same bytes when it accepts the
//! stream too.

#![no_main]

use libfuzzer_sys::fuzz_target;
use liblzma::stream::{Action, Status, Stream};
use spindle_protocol::lzma::decode;

const LIMIT: usize = 1 << 20;

/// liblzma's reading of `data`, if it decodes to at most `LIMIT` bytes.
fn reference(data: &[u8]) -> Option<Vec<u8>> {
    let mut stream = Stream::new_lzma_decoder(256 << 20).ok()?;
    let mut out = Vec::with_capacity(LIMIT + 1);
    let status = stream.process_vec(data, &mut out, Action::Finish).ok()?;
    (status == Status::StreamEnd && out.len() <= LIMIT).then_some(out)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(out) = decode(data, LIMIT) {
        assert!(out.len() <= LIMIT);
        if let Some(theirs) = reference(data) {
            assert!(out == theirs, "liblzma decodes the stream differently");
        }
    }
});
