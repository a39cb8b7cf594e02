//! MessagePack params read straight into a handler's type, as if they were JSON.
//!
//! Converting params to a `serde_json::Value` first costs 32 bytes per value, however
//! small its encoding: a 16 MiB array of one-byte `nil`s became 512 MiB before the
//! handler's type could refuse it. A [`Reader`] instead walks the bytes once
//! ([`json_compatible`], no allocation) to refuse what JSON cannot carry, then serves
//! them to the handler's type through a [`serde::Deserializer`] that behaves like
//! `serde_json::Value`'s own: the same visits (integers as `u64` when not negative),
//! enums as a string or a one-key map, map keys that parse as numbers or booleans for
//! such key types, and the same error messages (errors are `serde_json::Error`).
//!
//! What still differs from going through a `Value`: map entries reach the type in wire
//! order and a repeated key is seen twice (a struct refuses it as a duplicate field, as
//! it does from JSON text), where a `Value` kept the last one, sorted.

use serde::de::{
    self, DeserializeSeed, EnumAccess, MapAccess, SeqAccess,
    Unexpected, VariantAccess, Visitor,
};
use serde_json::Error;

use super::msgpack::{Head, head};

/// Where `serde_json` marks a `RawValue`; such params are handed over as JSON text.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// Check that well-formed MessagePack `buf` holds only what JSON carries, naming the
/// first thing that it does not (in document order, as a conversion to JSON would
/// meet it); on success, the number of values it holds (map keys included).
pub(crate) fn json_compatible(buf: &[u8]) -> Result<usize, &'static str> {
    // Items left in each open container; in a map, an even count left means a key is next.
    let mut open: Vec<(usize, bool)> = Vec::new();
    let mut pos = 0;
    let mut count = 0usize;
    loop {
        let is_key = matches!(open.last(), Some(&(left, true)) if left % 2 == 0);
        let (value, next) = head(buf, pos).map_err(|_| "malformed MessagePack")?;
        pos = next;
        count += 1;
        let utf8 = |start: usize, end: usize| std::str::from_utf8(&buf[start..end]).is_ok();
        let children = match value {
            Head::Str { start, end } if !utf8(start, end) => {
                return Err(if is_key {
                    "a map key that is not UTF-8"
                } else {
                    "a string that is not UTF-8"
                });
            }
            Head::Str { .. } => None,
            _ if is_key => return Err("a map key that is not a string"),
            Head::Float(x) if !x.is_finite() => return Err("a NaN or infinite number"),
            Head::Bin { .. } => return Err("binary data"),
            Head::Ext { .. } => return Err("an extension type"),
            Head::Array { len, .. } if len > 0 => Some((len, false)),
            Head::Map { len, .. } if len > 0 => Some((len * 2, true)),
            _ => None,
        };
        if let Some(container) = children {
            open.push(container);
            continue;
        }
        loop {
            match open.last_mut() {
                None => return Ok(count),
                Some((left, _)) => {
                    *left -= 1;
                    if *left > 0 {
                        break;
                    }
                    open.pop();
                }
            }
        }
    }
}

/// A cursor over checked MessagePack: each `deserialize_*` reads the value at `pos`.
pub(crate) struct Reader<'de> {
    buf: &'de [u8],
    pos: usize,
}

impl<'de> Reader<'de> {
    /// A reader of params that [`json_compatible`] accepted.
    pub(crate) fn new(buf: &'de [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn peek(&self) -> Result<(Head, usize), Error> {
        head(self.buf, self.pos).map_err(|f| de::Error::custom(f))
    }

    fn next(&mut self) -> Result<Head, Error> {
        let (value, next) = self.peek()?;
        self.pos = next;
        Ok(value)
    }

    fn str(&self, start: usize, end: usize) -> Result<&'de str, Error> {
        std::str::from_utf8(&self.buf[start..end])
            .map_err(|_| de::Error::custom("a string that is not UTF-8"))
    }

    /// What `serde_json::Value` reports for the same value in an error.
    fn unexpected(&self, value: Head) -> Unexpected<'de> {
        match value {
            Head::Nil => Unexpected::Unit,
            Head::Bool(b) => Unexpected::Bool(b),
            Head::Uint(n) => Unexpected::Unsigned(n),
            Head::Int(n) if n >= 0 => Unexpected::Unsigned(n as u64),
            Head::Int(n) => Unexpected::Signed(n),
            Head::Float(x) => Unexpected::Float(x),
            Head::Str { start, end } => match self.str(start, end) {
                Ok(s) => Unexpected::Str(s),
                Err(_) => Unexpected::Bytes(&self.buf[start..end]),
            },
            Head::Bin { start, end } | Head::Ext { start, end } => {
                Unexpected::Bytes(&self.buf[start..end])
            }
            Head::Array { .. } => Unexpected::Seq,
            Head::Map { .. } => Unexpected::Map,
        }
    }

    /// Serve the items of an array to `visitor`, which must take them all.
    fn visit_array<V: Visitor<'de>>(&mut self, len: usize, visitor: V) -> Result<V::Value, Error> {
        let mut items = Items {
            reader: self,
            left: len,
        };
        let value = visitor.visit_seq(&mut items)?;
        if items.left == 0 {
            Ok(value)
        } else {
            Err(de::Error::invalid_length(len, &"fewer elements in array"))
        }
    }

    /// Serve the entries of a map to `visitor`, which must take them all.
    fn visit_map<V: Visitor<'de>>(&mut self, len: usize, visitor: V) -> Result<V::Value, Error> {
        let mut entries = Entries {
            reader: self,
            left: len,
        };
        let value = visitor.visit_map(&mut entries)?;
        if entries.left == 0 {
            Ok(value)
        } else {
            Err(de::Error::invalid_length(len, &"fewer elements in map"))
        }
    }

    /// The end of the value at `pos` (checked, so only a bug makes it fail).
    fn skip(&mut self) -> Result<(), Error> {
        self.pos = super::msgpack::value_end(self.buf, self.pos).map_err(de::Error::custom)?;
        Ok(())
    }
}

impl<'de> de::Deserializer<'de> for &mut Reader<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.next()? {
            Head::Nil => visitor.visit_unit(),
            Head::Bool(b) => visitor.visit_bool(b),
            Head::Uint(n) => visitor.visit_u64(n),
            Head::Int(n) if n >= 0 => visitor.visit_u64(n as u64),
            Head::Int(n) => visitor.visit_i64(n),
            Head::Float(x) => visitor.visit_f64(x),
            Head::Str { start, end } => visitor.visit_borrowed_str(self.str(start, end)?),
            Head::Array { len, .. } => self.visit_array(len, visitor),
            Head::Map { len, .. } => self.visit_map(len, visitor),
            // Refused by `json_compatible` before any deserialization.
            Head::Bin { .. } => Err(de::Error::custom("binary data")),
            Head::Ext { .. } => Err(de::Error::custom("an extension type")),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.peek()? {
            (Head::Nil, next) => {
                self.pos = next;
                visitor.visit_none()
            }
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.next()? {
            Head::Str { start, end } => {
                let variant = self.str(start, end)?;
                visitor.visit_enum(Variant {
                    reader: self,
                    variant,
                    has_value: false,
                })
            }
            Head::Map { len: 1, .. } => match self.next()? {
                Head::Str { start, end } => {
                    let variant = self.str(start, end)?;
                    visitor.visit_enum(Variant {
                        reader: self,
                        variant,
                        has_value: true,
                    })
                }
                _ => Err(de::Error::custom("a map key that is not a string")),
            },
            Head::Map { .. } => Err(de::Error::invalid_value(
                Unexpected::Map,
                &"map with a single key",
            )),
            other => Err(de::Error::invalid_type(
                self.unexpected(other),
                &"string or map",
            )),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        if name == RAW_VALUE_TOKEN {
            // A `RawValue` is JSON text: write it, then let serde_json hand it over.
            let start = self.pos;
            self.skip()?;
            let text = super::msgpack::to_json(&self.buf[start..self.pos], true)
                .map_err(de::Error::custom)?
                .to_string();
            let mut json = serde_json::Deserializer::from_reader(text.as_bytes());
            return de::Deserializer::deserialize_newtype_struct(&mut json, name, visitor);
        }
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.skip()?;
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier
    }
}

/// The items of an array.
struct Items<'r, 'de> {
    reader: &'r mut Reader<'de>,
    left: usize,
}

impl<'de> SeqAccess<'de> for Items<'_, 'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
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

/// The entries of a map (its keys are strings: `json_compatible` checked).
struct Entries<'r, 'de> {
    reader: &'r mut Reader<'de>,
    left: usize,
}

impl<'de> MapAccess<'de> for Entries<'_, 'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        match self.reader.next()? {
            Head::Str { start, end } => {
                let key = self.reader.str(start, end)?;
                seed.deserialize(MapKey(key)).map(Some)
            }
            _ => Err(de::Error::custom("a map key that is not a string")),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        seed.deserialize(&mut *self.reader)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

/// A map key, read as `serde_json::Value` reads one: a string, or a number or a
/// boolean for key types that want one (`HashMap<u32, _>`).
struct MapKey<'de>(&'de str);

macro_rules! numeric_key {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            // The whole key must be one JSON number, with no space around it.
            let bytes = self.0.as_bytes();
            let numeric = matches!(bytes.first(), Some(b'0'..=b'9' | b'-'))
                && !bytes.last().is_some_and(u8::is_ascii_whitespace);
            if !numeric {
                return Err(de::Error::custom(
                    "invalid value: expected key to be a number in quotes",
                ));
            }
            let mut json = serde_json::Deserializer::from_str(self.0);
            let value = de::Deserializer::$method(&mut json, visitor)?;
            json.end()
                .map_err(|_| de::Error::custom("invalid value: expected key to be a number in quotes"))?;
            Ok(value)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for MapKey<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_borrowed_str(self.0)
    }

    numeric_key!(
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
        deserialize_f32 deserialize_f64
    );

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            "true" => visitor.visit_bool(true),
            "false" => visitor.visit_bool(false),
            other => Err(de::Error::invalid_type(Unexpected::Str(other), &visitor)),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        // Map keys cannot be null.
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let key = de::value::BorrowedStrDeserializer::<Error>::new(self.0);
        key.deserialize_enum(name, variants, visitor)
    }

    serde::forward_to_deserialize_any! {
        char str string bytes byte_buf unit unit_struct seq tuple tuple_struct
        map struct identifier ignored_any
    }
}

/// An enum: its variant name, and whether a value follows it (`{"Variant": value}`).
struct Variant<'r, 'de> {
    reader: &'r mut Reader<'de>,
    variant: &'de str,
    has_value: bool,
}

impl<'r, 'de> EnumAccess<'de> for Variant<'r, 'de> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        let name = de::value::BorrowedStrDeserializer::<Error>::new(self.variant);
        let variant = seed.deserialize(name)?;
        Ok((variant, self))
    }
}

impl<'de> VariantAccess<'de> for Variant<'_, 'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        if self.has_value {
            de::Deserialize::deserialize(&mut *self.reader)
        } else {
            Ok(())
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        if self.has_value {
            seed.deserialize(&mut *self.reader)
        } else {
            Err(de::Error::invalid_type(
                Unexpected::UnitVariant,
                &"newtype variant",
            ))
        }
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        if !self.has_value {
            return Err(de::Error::invalid_type(
                Unexpected::UnitVariant,
                &"tuple variant",
            ));
        }
        match self.reader.next()? {
            Head::Array { len: 0, .. } => visitor.visit_unit(),
            Head::Array { len, .. } => self.reader.visit_array(len, visitor),
            other => Err(de::Error::invalid_type(
                self.reader.unexpected(other),
                &"tuple variant",
            )),
        }
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        if !self.has_value {
            return Err(de::Error::invalid_type(
                Unexpected::UnitVariant,
                &"struct variant",
            ));
        }
        match self.reader.next()? {
            Head::Map { len, .. } => self.reader.visit_map(len, visitor),
            other => Err(de::Error::invalid_type(
                self.reader.unexpected(other),
                &"struct variant",
            )),
        }
    }
}
