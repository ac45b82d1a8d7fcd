//! The LZMA decoder against what liblzma writes: every stream it makes, of
//! every kind of input and with every property mix, decodes back.

use liblzma::stream::{Action, LzmaOptions, Status, Stream};
use spindle_protocol::lzma::{decode, LzmaError};

/// `.lzma` of `data` by liblzma at `preset`, with these `lc`, `lp`, `pb`.
fn compress(data: &[u8], preset: u32, (lc, lp, pb): (u32, u32, u32)) -> Vec<u8> {
    let mut options = LzmaOptions::new_preset(preset).expect("preset");
    options
        .literal_context_bits(lc)
        .literal_position_bits(lp)
        .position_bits(pb);
    let mut stream = Stream::new_lzma_encoder(&options).expect("encoder");
    let mut out = Vec::with_capacity(data.len() + 1024);
    loop {
        let rest = &data[stream.total_in() as usize..];
        let status = stream
            .process_vec(rest, &mut out, Action::Finish)
            .unwrap_or_else(|e| panic!("{e:?} at preset {preset}, {:?}", (lc, lp, pb)));
        if status == Status::StreamEnd {
            return out;
        }
        out.reserve(out.capacity().max(4096));
    }
}

/// A small deterministic generator: the tests need no dependency for it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Inputs that exercise literals, short and long matches, repeats at all
/// four remembered distances and distances past every slot class.
fn inputs() -> Vec<Vec<u8>> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let random: Vec<u8> = (0..300_000).map(|_| rng.next() as u8).collect();
    let text: Vec<u8> = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/src/msg.rs"))
        .expect("a source file to compress");
    let mut mixed = Vec::new();
    for i in 0..2000 {
        let pick = rng.next() as usize;
        match pick % 4 {
            0 => mixed.extend_from_slice(&text[pick % (text.len() - 300)..][..pick % 300]),
            1 => mixed.extend((0..pick % 50).map(|_| rng.next() as u8)),
            2 => mixed.extend(std::iter::repeat_n(i as u8, pick % 400)),
            _ => {
                let back = pick % (mixed.len() + 1);
                let from = mixed.len() - back;
                let piece = mixed[from..][..back.min(64)].to_vec();
                mixed.extend(piece);
            }
        }
    }
    vec![
        Vec::new(),
        b"a".to_vec(),
        vec![0; 1 << 20],
        random,
        text.repeat(3),
        mixed,
    ]
}

#[test]
fn decodes_every_stream_liblzma_writes() {
    for (i, data) in inputs().iter().enumerate() {
        for preset in [0, 6, 9] {
            for props in [(3, 0, 2), (0, 0, 0), (4, 0, 0), (0, 4, 4), (1, 3, 1)] {
                let packed = compress(data, preset, props);
                let out = decode(&packed, data.len())
                    .unwrap_or_else(|e| panic!("input {i}, preset {preset}, {props:?}: {e}"));
                assert!(
                    out == *data,
                    "input {i}, preset {preset}, {props:?}: differs"
                );
            }
        }
    }
}

#[test]
fn stops_at_the_limit_and_at_damage() {
    let data = inputs().swap_remove(5);
    let packed = compress(&data, 6, (3, 0, 2));
    assert_eq!(decode(&packed, data.len() - 1), Err(LzmaError::TooLarge));
    // Damage anywhere: an error or different bytes, never a panic or more
    // than the limit.
    let mut rng = Rng(7);
    for _ in 0..300 {
        let mut bad = packed.clone();
        let at = 13 + rng.next() as usize % (bad.len() - 13);
        bad[at] ^= 1 << (rng.next() % 8);
        if let Ok(out) = decode(&bad, data.len()) {
            assert!(out.len() <= data.len());
        }
        let cut = rng.next() as usize % packed.len();
        assert!(decode(&packed[..cut], data.len()).is_err(), "cut at {cut}");
    }
}
