//! The frame body decoder: a MessagePack reader for serde that accepts what
//! [`crate::frame`] encodes, and nothing looser.
//!
//! Structs are maps with named fields and enums are their variant's name
//! (unit variants) or a one-entry map from that name to the payload. A
//! general MessagePack deserializer also accepts structs as arrays and
//! fields by index, which makes every derived decoder carry a second,
//! unused path: in the agent, whose size is paid on every connection, that
//! path was most of its decoding code. Here each kind of value has exactly
//! one reader, and the readers do not depend on the type being decoded.
//!
//! Lengths are checked against the bytes left before anything is sized by
//! them, unknown fields are skipped without recursion, and a body must be
//! used up exactly.

use serde::de::{self, DeserializeSeed, Visitor};
use serde::Deserialize;
use std::fmt;

/// A body that does not decode as the expected message.
#[derive(Debug)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }

    // Serde's own wording of these shows a float value, which would link
    // float formatting into the agent for no message it sends.
    fn invalid_type(unexpected: de::Unexpected, expected: &dyn de::Expected) -> Self {
        Error(format!(
            "invalid type: {}, expected {expected}",
            Found(unexpected)
        ))
    }

    fn invalid_value(unexpected: de::Unexpected, expected: &dyn de::Expected) -> Self {
        Error(format!(
            "invalid value: {}, expected {expected}",
            Found(unexpected)
        ))
    }
}

/// What a value turned out to be, as an error message says it.
struct Found<'a>(de::Unexpected<'a>);

impl fmt::Display for Found<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use de::Unexpected as U;
        match self.0 {
            U::Bool(b) => write!(f, "boolean `{b}`"),
            U::Unsigned(n) => write!(f, "integer `{n}`"),
            U::Signed(n) => write!(f, "integer `{n}`"),
            U::Float(_) => f.write_str("a floating point number"),
            U::Char(c) => write!(f, "character `{c}`"),
            U::Str(s) => write!(f, "string {s:?}"),
            U::Bytes(_) => f.write_str("byte array"),
            U::Unit => f.write_str("unit value"),
            U::Option => f.write_str("Option value"),
            U::NewtypeStruct => f.write_str("newtype struct"),
            U::Seq => f.write_str("sequence"),
            U::Map => f.write_str("map"),
            U::Enum => f.write_str("enum"),
            U::UnitVariant => f.write_str("unit variant"),
            U::NewtypeVariant => f.write_str("newtype variant"),
            U::TupleVariant => f.write_str("tuple variant"),
            U::StructVariant => f.write_str("struct variant"),
            U::Other(other) => f.write_str(other),
        }
    }
}

type Result<T, E = Error> = std::result::Result<T, E>;

/// Decodes one whole MessagePack body.
pub fn from_slice<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<T> {
    let mut reader = Reader { input: body };
    let value = T::deserialize(&mut reader).and_then(|v| match reader.input.len() {
        0 => Ok(v),
        n => Err(Error(format!("{n} bytes after the message"))),
    });
    value.map_err(|Error(e)| Error(format!("{e} (at byte {})", body.len() - reader.input.len())))
}

/// A MessagePack integer, either sign.
enum Int {
    Unsigned(u64),
    Signed(i64),
}

struct Reader<'de> {
    input: &'de [u8],
}

impl<'de> Reader<'de> {
    fn peek(&self) -> Result<u8> {
        self.input
            .first()
            .copied()
            .ok_or_else(|| Error("body ends early".into()))
    }

    fn take(&mut self, n: usize) -> Result<&'de [u8]> {
        if n > self.input.len() {
            return Err(Error(format!(
                "a length of {n} bytes runs past the body's end"
            )));
        }
        let (head, rest) = self.input.split_at(n);
        self.input = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8> {
        let b = self.peek()?;
        self.input = &self.input[1..];
        Ok(b)
    }

    /// A big-endian unsigned number of `n` (at most 8) bytes.
    fn number(&mut self, n: usize) -> Result<u64> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0, |acc, &b| (acc << 8) | u64::from(b)))
    }

    fn unexpected(marker: u8, expected: &str) -> Error {
        Error(format!("expected {expected}, found marker 0x{marker:02x}"))
    }

    fn integer(&mut self) -> Result<Int> {
        let marker = self.byte()?;
        Ok(match marker {
            0x00..=0x7f => Int::Unsigned(marker.into()),
            0xe0..=0xff => Int::Signed((marker as i8).into()),
            0xcc => Int::Unsigned(self.number(1)?),
            0xcd => Int::Unsigned(self.number(2)?),
            0xce => Int::Unsigned(self.number(4)?),
            0xcf => Int::Unsigned(self.number(8)?),
            0xd0 => Int::Signed((self.number(1)? as u8 as i8).into()),
            0xd1 => Int::Signed((self.number(2)? as u16 as i16).into()),
            0xd2 => Int::Signed((self.number(4)? as u32 as i32).into()),
            0xd3 => Int::Signed(self.number(8)? as i64),
            _ => return Err(Self::unexpected(marker, "an integer")),
        })
    }

    fn str(&mut self) -> Result<&'de str> {
        let marker = self.byte()?;
        let len = match marker {
            0xa0..=0xbf => usize::from(marker & 0x1f),
            0xd9 => self.number(1)? as usize,
            0xda => self.number(2)? as usize,
            0xdb => self.number(4)? as usize,
            _ => return Err(Self::unexpected(marker, "a string")),
        };
        std::str::from_utf8(self.take(len)?).map_err(|_| Error("a string is not UTF-8".into()))
    }

    fn bin(&mut self) -> Result<&'de [u8]> {
        let len = match self.byte()? {
            0xc4 => self.number(1)?,
            0xc5 => self.number(2)?,
            0xc6 => self.number(4)?,
            marker => return Err(Self::unexpected(marker, "bytes")),
        };
        self.take(len as usize)
    }

    fn nil(&mut self) -> Result<bool> {
        let is_nil = self.peek()? == 0xc0;
        if is_nil {
            self.byte()?;
        }
        Ok(is_nil)
    }

    fn bool(&mut self) -> Result<bool> {
        match self.byte()? {
            0xc2 => Ok(false),
            0xc3 => Ok(true),
            marker => Err(Self::unexpected(marker, "a boolean")),
        }
    }

    fn float(&mut self) -> Result<f64> {
        match self.peek()? {
            0xca => {
                self.byte()?;
                Ok(f32::from_bits(self.number(4)? as u32).into())
            }
            0xcb => {
                self.byte()?;
                Ok(f64::from_bits(self.number(8)?))
            }
            _ => Ok(match self.integer()? {
                Int::Unsigned(n) => n as f64,
                Int::Signed(n) => n as f64,
            }),
        }
    }

    /// The entry count of a map (`Some`) or the length of an array (`None`
    /// for the map flag); each entry needs at least one byte per value, so
    /// a count the body cannot hold is refused here.
    fn container(&mut self) -> Result<(usize, bool)> {
        let marker = self.byte()?;
        let (len, map) = match marker {
            0x80..=0x8f => (u64::from(marker & 0x0f), true),
            0x90..=0x9f => (u64::from(marker & 0x0f), false),
            0xde => (self.number(2)?, true),
            0xdf => (self.number(4)?, true),
            0xdc => (self.number(2)?, false),
            0xdd => (self.number(4)?, false),
            _ => return Err(Self::unexpected(marker, "a map or an array")),
        };
        let values = if map { len.saturating_mul(2) } else { len };
        if values > self.input.len() as u64 {
            return Err(Error(format!(
                "{len} entries cannot fit in the {} bytes left",
                self.input.len()
            )));
        }
        Ok((len as usize, map))
    }

    fn map(&mut self) -> Result<usize> {
        match self.container()? {
            (len, true) => Ok(len),
            (_, false) => Err(Error("expected a map, found an array".into())),
        }
    }

    fn array(&mut self) -> Result<usize> {
        match self.container()? {
            (len, false) => Ok(len),
            (_, true) => Err(Error("expected an array, found a map".into())),
        }
    }

    /// Skips values (an unknown field's, for a newer peer), however nested,
    /// by counting those still to skip rather than recursing.
    fn skip(&mut self) -> Result<()> {
        let mut pending: u64 = 1;
        while pending > 0 {
            pending -= 1;
            let marker = self.peek()?;
            let body = match marker {
                0x80..=0x8f | 0x90..=0x9f | 0xdc..=0xdf => {
                    let (len, map) = self.container()?;
                    pending += if map { 2 * len as u64 } else { len as u64 };
                    continue;
                }
                0xa0..=0xbf | 0xd9..=0xdb => {
                    self.str()?;
                    continue;
                }
                0xc4..=0xc6 => {
                    self.bin()?;
                    continue;
                }
                0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => 0,
                0xcc | 0xd0 => 1,
                0xcd | 0xd1 => 2,
                0xce | 0xd2 | 0xca => 4,
                0xcf | 0xd3 | 0xcb => 8,
                0xd4 => 2,
                0xd5 => 3,
                0xd6 => 5,
                0xd7 => 9,
                0xd8 => 17,
                0xc7..=0xc9 => {
                    self.byte()?;
                    let len = self.number(1 << (marker - 0xc7))?;
                    // The extension's type byte, then its data.
                    self.take(1)?;
                    self.take(len as usize)?;
                    continue;
                }
                _ => return Err(Self::unexpected(marker, "a value")),
            };
            self.byte()?;
            self.take(body)?;
        }
        Ok(())
    }
}

/// Gives a visitor the elements of an array or the entries of a map, and
/// checks afterwards that it took them all.
struct Items<'a, 'de> {
    reader: &'a mut Reader<'de>,
    left: usize,
}

impl Items<'_, '_> {
    fn finish<T>(self, value: T) -> Result<T> {
        match self.left {
            0 => Ok(value),
            n => Err(Error(format!("{n} entries left unread"))),
        }
    }
}

impl<'de> de::SeqAccess<'de> for Items<'_, 'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.reader).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> de::MapAccess<'de> for Items<'_, 'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.reader).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        seed.deserialize(&mut *self.reader)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

/// An enum: its variant's name, then (for a one-entry map) its payload.
struct Variant<'a, 'de> {
    reader: &'a mut Reader<'de>,
    /// The name was a map's key, so a payload follows.
    payload: bool,
}

impl<'a, 'de> de::EnumAccess<'de> for Variant<'a, 'de> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self)> {
        let value = seed.deserialize(&mut *self.reader)?;
        Ok((value, self))
    }
}

impl<'de> de::VariantAccess<'de> for Variant<'_, 'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<()> {
        if self.payload && !self.reader.nil()? {
            return Err(Error("a unit variant with a payload".into()));
        }
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value> {
        if !self.payload {
            return Err(Error("a variant without its payload".into()));
        }
        seed.deserialize(self.reader)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value> {
        if !self.payload {
            return Err(Error("a variant without its payload".into()));
        }
        de::Deserializer::deserialize_seq(self.reader, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        if !self.payload {
            return Err(Error("a variant without its payload".into()));
        }
        de::Deserializer::deserialize_map(self.reader, visitor)
    }
}

impl<'de> de::Deserializer<'de> for &mut Reader<'de> {
    type Error = Error;

    /// As the encoder says: types with a compact form use it.
    fn is_human_readable(&self) -> bool {
        false
    }

    /// Only for types that decide by what they find (none of the
    /// protocol's own): every kind of value, as its natural serde value.
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.peek()? {
            0xc0 => self.deserialize_unit(visitor),
            0xc2 | 0xc3 => self.deserialize_bool(visitor),
            0xca | 0xcb => self.deserialize_f64(visitor),
            0xa0..=0xbf | 0xd9..=0xdb => self.deserialize_str(visitor),
            0xc4..=0xc6 => self.deserialize_bytes(visitor),
            0x80..=0x8f | 0xde | 0xdf => self.deserialize_map(visitor),
            0x90..=0x9f | 0xdc | 0xdd => self.deserialize_seq(visitor),
            _ => self.deserialize_i64(visitor),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_bool(self.bool()?)
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.integer()? {
            Int::Unsigned(n) => visitor.visit_u64(n),
            Int::Signed(n) => visitor.visit_i64(n),
        }
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_i64(visitor)
    }

    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_i64(visitor)
    }

    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_i64(visitor)
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_i64(visitor)
    }

    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_i64(visitor)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_i64(visitor)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_i64(visitor)
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_f64(self.float()?)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_borrowed_str(self.str()?)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_borrowed_bytes(self.bin()?)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        if self.nil()? {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        if !self.nil()? {
            return Err(Reader::unexpected(self.peek()?, "nil"));
        }
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let left = self.array()?;
        let mut items = Items { reader: self, left };
        let value = visitor.visit_seq(&mut items)?;
        items.finish(value)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let left = self.map()?;
        let mut items = Items { reader: self, left };
        let value = visitor.visit_map(&mut items)?;
        items.finish(value)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        let payload = match self.peek()? {
            0xa0..=0xbf | 0xd9..=0xdb => false,
            _ => match self.map()? {
                1 => true,
                n => return Err(Error(format!("an enum as a map of {n} entries"))),
            },
        };
        visitor.visit_enum(Variant {
            reader: self,
            payload,
        })
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.skip()?;
        visitor.visit_unit()
    }
}

#[cfg(test)]
mod tests {
    use super::from_slice;
    use crate::{Blob, ErrorKind, FromAgent, Ping, Request, StreamKind, ToAgent, WireError};
    use serde::Serialize;

    fn named<T: Serialize>(v: &T) -> Vec<u8> {
        rmp_serde::to_vec_named(v).unwrap()
    }

    #[test]
    fn decodes_what_the_encoder_writes() {
        let msgs = [
            FromAgent::Stream {
                id: u64::MAX,
                kind: StreamKind::Stderr,
                data: Blob(vec![7; 70_000]),
            },
            FromAgent::Reply {
                id: 0,
                result: Err(WireError::new(ErrorKind::Busy, "é".repeat(40))),
            },
            FromAgent::Ack {
                id: 300,
                frames: 65_536,
            },
        ];
        for msg in msgs {
            assert_eq!(from_slice::<FromAgent>(&named(&msg)).unwrap(), msg);
        }
    }

    #[test]
    fn skips_unknown_fields_however_nested() {
        #[derive(Serialize)]
        struct Newer {
            id: u64,
            extra: (Vec<Vec<Option<i64>>>, String, f64, Blob),
            frames: u32,
        }
        #[derive(Serialize)]
        enum NewerFromAgent {
            Ack(Newer),
        }
        let newer = NewerFromAgent::Ack(Newer {
            id: 9,
            extra: (
                vec![vec![Some(-5), None]],
                "x".into(),
                1.5,
                Blob(vec![1; 300]),
            ),
            frames: 2,
        });
        let msg: FromAgent = from_slice(&named(&newer)).unwrap();
        assert_eq!(msg, FromAgent::Ack { id: 9, frames: 2 });

        // An unknown field nested a million arrays deep: skipped without
        // recursing (a recursive skip would overflow the stack).
        let mut body = vec![0x81, 0xa3, b'A', b'c', b'k', 0x83];
        body.extend_from_slice(&[0xa2, b'i', b'd', 0x09, 0xa1, b'z']);
        body.extend(std::iter::repeat_n(0x91, 1 << 20));
        body.push(0xc0);
        body.extend_from_slice(&[0xa6, b'f', b'r', b'a', b'm', b'e', b's', 0x02]);
        let msg: FromAgent = from_slice(&body).unwrap();
        assert_eq!(msg, FromAgent::Ack { id: 9, frames: 2 });
    }

    #[test]
    fn refuses_what_the_encoder_never_writes() {
        let call = ToAgent::Call {
            id: 1,
            req: Request::Ping(Ping {}),
            after: None,
        };
        let good = named(&call);
        assert_eq!(from_slice::<ToAgent>(&good).unwrap(), call);

        // Structs as arrays (a compact encoding).
        let compact = rmp_serde::to_vec(&call).unwrap();
        let err = from_slice::<ToAgent>(&compact).unwrap_err().to_string();
        assert!(err.contains("expected a map"), "{err}");

        // Bytes after the message.
        let mut long = good.clone();
        long.push(0xc0);
        let err = from_slice::<ToAgent>(&long).unwrap_err().to_string();
        assert!(err.contains("1 bytes after the message"), "{err}");

        // Every truncation fails cleanly.
        for cut in 0..good.len() {
            assert!(from_slice::<ToAgent>(&good[..cut]).is_err(), "cut at {cut}");
        }

        // A unit variant carrying a value, an enum map of two entries.
        let kind = |k: &[u8]| {
            let mut b = vec![0x83, 0xa2, b'i', b'd', 0x01, 0xa4, b'k', b'i', b'n', b'd'];
            b.extend_from_slice(k);
            b.extend_from_slice(&[0xa4, b'd', b'a', b't', b'a', 0xc4, 0x00]);
            let mut frame = vec![0x81, 0xa6, b'S', b't', b'r', b'e', b'a', b'm'];
            frame.extend(b);
            from_slice::<FromAgent>(&frame)
        };
        assert!(kind(&[0xa6, b's', b't', b'd', b'o', b'u', b't']).is_ok());
        assert!(kind(&[0x81, 0xa6, b's', b't', b'd', b'o', b'u', b't', 0xc0]).is_ok());
        assert!(kind(&[0x81, 0xa6, b's', b't', b'd', b'o', b'u', b't', 0x01]).is_err());
        assert!(
            kind(&[0x82, 0xa6, b's', b't', b'd', b'o', b'u', b't', 0xc0, 0xa1, b'x', 0xc0])
                .is_err()
        );
    }

    #[test]
    fn lengths_are_checked_before_allocating() {
        // A `Data` frame announcing 4 GiB of bytes, and one announcing an
        // array of 4 billion strings, in a few bytes each.
        let mut bin = vec![0x81, 0xa4, b'D', b'a', b't', b'a', 0x83];
        bin.extend_from_slice(&[0xa2, b'i', b'd', 0x01, 0xa4, b'd', b'a', b't', b'a']);
        bin.extend_from_slice(&[0xc6, 0xff, 0xff, 0xff, 0xff]);
        let err = from_slice::<ToAgent>(&bin).unwrap_err().to_string();
        assert!(err.contains("runs past the body's end"), "{err}");

        let mut arr = vec![0x81, 0xa4, b'E', b'x', b'e', b'c', 0x81];
        arr.extend_from_slice(&[0xa7, b'c', b'o', b'm', b'm', b'a', b'n', b'd']);
        arr.extend_from_slice(&[
            0x81, 0xa4, b'A', b'r', b'g', b'v', 0xdd, 0xff, 0xff, 0xff, 0xff,
        ]);
        let err = from_slice::<Request>(&arr).unwrap_err().to_string();
        assert!(err.contains("cannot fit"), "{err}");
    }
}
