//! A decoder for LZMA streams in the `.lzma` ("alone") format, the form in
//! which module code crosses a link (see [`crate::Code::packed`]).
//!
//! The agent carries no compression library: this is all it needs to read
//! what the controller's liblzma writes. It is a plain LZMA1 decoder over
//! an output buffer that doubles as the dictionary, with the output size
//! bounded by the caller before anything is decoded.
//!
//! Format: one properties byte (`(pb * 5 + lp) * 9 + lc`), the dictionary
//! size (u32, little endian), the uncompressed size (u64, little endian,
//! all ones when unknown: then an end marker closes the stream), then the
//! range-coded data.

use std::fmt;

/// Why a stream could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LzmaError {
    /// The header is short or names impossible properties.
    Header,
    /// The stream decodes to more than the caller allows.
    TooLarge,
    /// The data ends early or does not decode.
    Corrupt,
}

impl fmt::Display for LzmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LzmaError::Header => "not an LZMA stream (bad header)",
            LzmaError::TooLarge => "LZMA stream decodes to more than allowed",
            LzmaError::Corrupt => "corrupt LZMA stream",
        })
    }
}

impl std::error::Error for LzmaError {}

const HEADER_LEN: usize = 13;
/// Probabilities are 11-bit; an adaptation step moves them by 1/32.
const PROB_BITS: u32 = 11;
const PROB_INIT: u16 = 1 << (PROB_BITS - 1);
const MOVE_BITS: u32 = 5;
const STATES: usize = 12;
const POS_STATES_MAX: usize = 1 << 4;
const MATCH_MIN_LEN: usize = 2;
/// Distance slots at or above this code their low bits directly.
const END_POS_MODEL: u32 = 14;
const FULL_DISTANCES: usize = 1 << (END_POS_MODEL >> 1);
const ALIGN_BITS: u32 = 4;

/// Decodes `input`, a whole `.lzma` stream, into at most `limit` bytes.
pub fn decode(input: &[u8], limit: usize) -> Result<Vec<u8>, LzmaError> {
    let header = input.get(..HEADER_LEN).ok_or(LzmaError::Header)?;
    let mut d = header[0] as u32;
    if d >= 9 * 5 * 5 {
        return Err(LzmaError::Header);
    }
    let lc = d % 9;
    d /= 9;
    let lp = d % 5;
    let pb = d / 5;
    let dict_size = u32::from_le_bytes([header[1], header[2], header[3], header[4]]);
    let mut size_bytes = [0; 8];
    size_bytes.copy_from_slice(&header[5..13]);
    let size = match u64::from_le_bytes(size_bytes) {
        u64::MAX => None,
        n if n > limit as u64 => return Err(LzmaError::TooLarge),
        n => Some(n as usize),
    };
    let mut dec = Decoder::new(lc, lp, pb, dict_size.max(1 << 12));
    let mut rc = RangeDecoder::new(&input[HEADER_LEN..])?;
    let mut out = Vec::with_capacity(size.unwrap_or(0));
    dec.run(&mut rc, &mut out, size, limit)?;
    Ok(out)
}

struct RangeDecoder<'a> {
    input: &'a [u8],
    at: usize,
    range: u32,
    code: u32,
}

impl<'a> RangeDecoder<'a> {
    fn new(input: &'a [u8]) -> Result<Self, LzmaError> {
        // The encoder's first byte is always zero.
        if input.len() < 5 || input[0] != 0 {
            return Err(LzmaError::Corrupt);
        }
        let code = u32::from_be_bytes([input[1], input[2], input[3], input[4]]);
        if code == u32::MAX {
            return Err(LzmaError::Corrupt);
        }
        Ok(RangeDecoder {
            input,
            at: 5,
            range: u32::MAX,
            code,
        })
    }

    fn normalize(&mut self) -> Result<(), LzmaError> {
        if self.range < 1 << 24 {
            let byte = *self.input.get(self.at).ok_or(LzmaError::Corrupt)?;
            self.at += 1;
            self.range <<= 8;
            self.code = (self.code << 8) | byte as u32;
        }
        Ok(())
    }

    fn bit(&mut self, prob: &mut u16) -> Result<u32, LzmaError> {
        let bound = (self.range >> PROB_BITS) * *prob as u32;
        let bit = if self.code < bound {
            self.range = bound;
            *prob += ((1 << PROB_BITS) - *prob) >> MOVE_BITS;
            0
        } else {
            self.range -= bound;
            self.code -= bound;
            *prob -= *prob >> MOVE_BITS;
            1
        };
        self.normalize()?;
        Ok(bit)
    }

    /// `count` bits at probability one half, most significant first.
    fn direct(&mut self, count: u32) -> Result<u32, LzmaError> {
        let mut value = 0;
        for _ in 0..count {
            self.range >>= 1;
            let bit = (self.code >= self.range) as u32;
            if bit == 1 {
                self.code -= self.range;
            }
            self.normalize()?;
            value = (value << 1) | bit;
        }
        Ok(value)
    }

    /// A `bits`-bit symbol coded most significant bit first on the binary
    /// tree `probs` (indexed from 1).
    fn tree(&mut self, probs: &mut [u16], bits: u32) -> Result<u32, LzmaError> {
        let mut m = 1;
        for _ in 0..bits {
            m = (m << 1) | self.bit(&mut probs[m as usize])?;
        }
        Ok(m - (1 << bits))
    }

    /// As [`RangeDecoder::tree`], least significant bit first.
    fn tree_reverse(&mut self, probs: &mut [u16], bits: u32) -> Result<u32, LzmaError> {
        let mut m = 1;
        let mut value = 0;
        for i in 0..bits {
            let bit = self.bit(&mut probs[m as usize])?;
            m = (m << 1) | bit;
            value |= bit << i;
        }
        Ok(value)
    }
}

/// Match and repeat lengths: 2-9, 10-17 per position state, then 18-273.
struct LenDecoder {
    choice: u16,
    choice2: u16,
    low: [[u16; 8]; POS_STATES_MAX],
    mid: [[u16; 8]; POS_STATES_MAX],
    high: [u16; 256],
}

impl LenDecoder {
    fn new() -> Self {
        LenDecoder {
            choice: PROB_INIT,
            choice2: PROB_INIT,
            low: [[PROB_INIT; 8]; POS_STATES_MAX],
            mid: [[PROB_INIT; 8]; POS_STATES_MAX],
            high: [PROB_INIT; 256],
        }
    }

    /// The length less [`MATCH_MIN_LEN`].
    fn decode(&mut self, rc: &mut RangeDecoder, pos_state: usize) -> Result<usize, LzmaError> {
        Ok(if rc.bit(&mut self.choice)? == 0 {
            rc.tree(&mut self.low[pos_state], 3)? as usize
        } else if rc.bit(&mut self.choice2)? == 0 {
            8 + rc.tree(&mut self.mid[pos_state], 3)? as usize
        } else {
            16 + rc.tree(&mut self.high, 8)? as usize
        })
    }
}

struct Decoder {
    lc: u32,
    lp: u32,
    pb: u32,
    dict_size: u32,
    literal: Vec<u16>,
    is_match: [u16; STATES * POS_STATES_MAX],
    is_rep: [u16; STATES],
    is_rep_g0: [u16; STATES],
    is_rep_g1: [u16; STATES],
    is_rep_g2: [u16; STATES],
    is_rep0_long: [u16; STATES * POS_STATES_MAX],
    pos_slot: [[u16; 64]; 4],
    pos_special: [u16; 1 + FULL_DISTANCES - END_POS_MODEL as usize],
    align: [u16; 1 << ALIGN_BITS],
    len: LenDecoder,
    rep_len: LenDecoder,
}

impl Decoder {
    fn new(lc: u32, lp: u32, pb: u32, dict_size: u32) -> Self {
        Decoder {
            lc,
            lp,
            pb,
            dict_size,
            literal: vec![PROB_INIT; 0x300 << (lc + lp)],
            is_match: [PROB_INIT; STATES * POS_STATES_MAX],
            is_rep: [PROB_INIT; STATES],
            is_rep_g0: [PROB_INIT; STATES],
            is_rep_g1: [PROB_INIT; STATES],
            is_rep_g2: [PROB_INIT; STATES],
            is_rep0_long: [PROB_INIT; STATES * POS_STATES_MAX],
            pos_slot: [[PROB_INIT; 64]; 4],
            pos_special: [PROB_INIT; 1 + FULL_DISTANCES - END_POS_MODEL as usize],
            align: [PROB_INIT; 1 << ALIGN_BITS],
            len: LenDecoder::new(),
            rep_len: LenDecoder::new(),
        }
    }

    /// Decodes into `out` until `size` bytes (when known) or the end
    /// marker, never past `limit`.
    fn run(
        &mut self,
        rc: &mut RangeDecoder,
        out: &mut Vec<u8>,
        size: Option<usize>,
        limit: usize,
    ) -> Result<(), LzmaError> {
        let limit = size.unwrap_or(limit);
        let mut state = 0usize;
        let mut reps = [0usize; 4];
        loop {
            // A stream of known size may still end in a marker; one that
            // does not must leave the coder flushed.
            if Some(out.len()) == size && rc.code == 0 {
                return Ok(());
            }
            let pos_state = out.len() & ((1 << self.pb) - 1);
            if rc.bit(&mut self.is_match[(state << 4) + pos_state])? == 0 {
                if out.len() >= limit {
                    return Err(self.past(size));
                }
                let byte = self.literal(rc, out, state, reps[0])?;
                out.push(byte);
                state = match state {
                    0..=3 => 0,
                    4..=9 => state - 3,
                    _ => state - 6,
                };
                continue;
            }
            let len;
            if rc.bit(&mut self.is_rep[state])? == 1 {
                if out.is_empty() {
                    return Err(LzmaError::Corrupt);
                }
                if rc.bit(&mut self.is_rep_g0[state])? == 0 {
                    if rc.bit(&mut self.is_rep0_long[(state << 4) + pos_state])? == 0 {
                        // One byte from the last distance.
                        if out.len() >= limit {
                            return Err(self.past(size));
                        }
                        state = if state < 7 { 9 } else { 11 };
                        out.push(out[out.len() - reps[0] - 1]);
                        continue;
                    }
                } else {
                    let dist;
                    if rc.bit(&mut self.is_rep_g1[state])? == 0 {
                        dist = reps[1];
                    } else {
                        if rc.bit(&mut self.is_rep_g2[state])? == 0 {
                            dist = reps[2];
                        } else {
                            dist = reps[3];
                            reps[3] = reps[2];
                        }
                        reps[2] = reps[1];
                    }
                    reps[1] = reps[0];
                    reps[0] = dist;
                }
                len = self.rep_len.decode(rc, pos_state)?;
                state = if state < 7 { 8 } else { 11 };
            } else {
                reps = [0, reps[0], reps[1], reps[2]];
                len = self.len.decode(rc, pos_state)?;
                state = if state < 7 { 7 } else { 10 };
                let dist = self.distance(rc, len)?;
                if dist == u32::MAX {
                    // The end marker: the coder must be flushed, and a
                    // known size reached.
                    return match rc.code == 0 && size.is_none_or(|s| s == out.len()) {
                        true => Ok(()),
                        false => Err(LzmaError::Corrupt),
                    };
                }
                reps[0] = dist as usize;
                if dist >= self.dict_size {
                    return Err(LzmaError::Corrupt);
                }
            }
            let len = len + MATCH_MIN_LEN;
            if reps[0] >= out.len() {
                return Err(LzmaError::Corrupt);
            }
            if out.len() + len > limit {
                return Err(self.past(size));
            }
            let from = out.len() - reps[0] - 1;
            // Byte by byte: a match may overlap what it produces.
            for i in 0..len {
                out.push(out[from + i]);
            }
        }
    }

    /// The error for output past the allowed end: the stream is corrupt
    /// when it declared its size, too large otherwise.
    fn past(&self, size: Option<usize>) -> LzmaError {
        match size {
            Some(_) => LzmaError::Corrupt,
            None => LzmaError::TooLarge,
        }
    }

    fn literal(
        &mut self,
        rc: &mut RangeDecoder,
        out: &[u8],
        state: usize,
        rep0: usize,
    ) -> Result<u8, LzmaError> {
        let prev = out.last().copied().unwrap_or(0) as usize;
        let lit_state = ((out.len() & ((1 << self.lp) - 1)) << self.lc) + (prev >> (8 - self.lc));
        let probs = &mut self.literal[0x300 * lit_state..][..0x300];
        let mut symbol = 1usize;
        if state >= 7 {
            // After a match: the byte at the last distance guides the
            // first bits, while they agree with it.
            let mut matched = *out
                .len()
                .checked_sub(rep0 + 1)
                .and_then(|at| out.get(at))
                .ok_or(LzmaError::Corrupt)? as usize;
            while symbol < 0x100 {
                let match_bit = (matched >> 7) & 1;
                matched <<= 1;
                let bit = rc.bit(&mut probs[((1 + match_bit) << 8) + symbol])? as usize;
                symbol = (symbol << 1) | bit;
                if match_bit != bit {
                    break;
                }
            }
        }
        while symbol < 0x100 {
            symbol = (symbol << 1) | rc.bit(&mut probs[symbol])? as usize;
        }
        Ok((symbol - 0x100) as u8)
    }

    /// The distance of a match of length `len` (less the minimum), less
    /// one; `u32::MAX` is the end marker.
    fn distance(&mut self, rc: &mut RangeDecoder, len: usize) -> Result<u32, LzmaError> {
        let slot = rc.tree(&mut self.pos_slot[len.min(3)], 6)?;
        if slot < 4 {
            return Ok(slot);
        }
        let direct = (slot >> 1) - 1;
        let mut dist = (2 | (slot & 1)) << direct;
        if slot < END_POS_MODEL {
            let base = (dist - slot) as usize;
            dist += rc.tree_reverse(&mut self.pos_special[base..], direct)?;
        } else {
            dist += rc.direct(direct - ALIGN_BITS)? << ALIGN_BITS;
            dist += rc.tree_reverse(&mut self.align, ALIGN_BITS)?;
        }
        Ok(dist)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `.lzma` of "hello, hello, hello!\n" by liblzma (Python's `lzma.compress(.., format=FORMAT_ALONE)`),
    /// size unknown, with an end marker.
    const HELLO: &str = "5d00008000ffffffffffffffff00341949ee8def8c873202210fa24fffffee0b0000";

    #[test]
    fn decodes_what_liblzma_wrote() {
        let input = hex::decode(HELLO).expect("hex");
        let out = decode(&input, 1 << 20).expect("decodes");
        assert_eq!(out, b"hello, hello, hello!\n");
    }

    #[test]
    fn refuses_what_is_not_a_stream() {
        let input = hex::decode(HELLO).expect("hex");
        assert_eq!(decode(&input[..12], 100), Err(LzmaError::Header));
        let mut bad = input.clone();
        bad[0] = 225;
        assert_eq!(decode(&bad, 100), Err(LzmaError::Header));
        // Cut short anywhere in the data: an error, never a panic.
        for n in 13..input.len() {
            assert!(decode(&input[..n], 100).is_err(), "cut at {n}");
        }
        // Past the caller's limit.
        assert_eq!(decode(&input, 5), Err(LzmaError::TooLarge));
        let mut sized = input.clone();
        sized[5..13].copy_from_slice(&1000u64.to_le_bytes());
        assert_eq!(decode(&sized, 999), Err(LzmaError::TooLarge));
        // A declared size the data does not reach.
        assert_eq!(decode(&sized, 2000), Err(LzmaError::Corrupt));
    }
}
