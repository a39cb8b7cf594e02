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
//! What still differs from going through a `Value`, as it does from JSON text: map
//! entries reach the type in wire order (so a refusal may name another bad entry), and
//! a repeated key is read each time: a struct refuses it as a duplicate field, and in a
//! map type every occurrence must fit the type, where a `Value` kept only the last.

use serde::de::{
    self, DeserializeSeed, EnumAccess, MapAccess, SeqAccess, Unexpected, VariantAccess, Visitor,
};
use serde_json::Error;

use super::msgpack::{Head, MAX_DEPTH, head};

/// Where `serde_json` marks a `RawValue`; such params are handed over as JSON text.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// Check that well-formed MessagePack `buf` holds only what JSON carries, naming the
/// first thing that it does not (in document order, as a conversion to JSON would
/// meet it); on success, the number of values it holds (map keys included).
pub(crate) fn json_compatible(buf: &[u8]) -> Result<usize, &'static str> {
    // Items left in each open container; in a map, an even count left means a key is next.
    // On the stack: this runs for every call (`check_frame` bounded the depth).
    let mut open = [(0usize, false); MAX_DEPTH];
    let mut depth = 0;
    let mut pos = 0;
    let mut count = 0usize;
    loop {
        let is_key = depth > 0 && open[depth - 1].1 && open[depth - 1].0 % 2 == 0;
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
            if depth == MAX_DEPTH {
                return Err("malformed MessagePack");
            }
            open[depth] = container;
            depth += 1;
            continue;
        }
        loop {
            if depth == 0 {
                return Ok(count);
            }
            let left = &mut open[depth - 1].0;
            *left -= 1;
            if *left > 0 {
                break;
            }
            depth -= 1;
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
        head(self.buf, self.pos).map_err(de::Error::custom)
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

    /// The value at `pos` if `kind` accepts it, else the error `serde_json::Value` gives.
    fn expect<V: Visitor<'de>>(&mut self, kind: Kind, visitor: V) -> Result<V::Value, Error> {
        match self.peek()? {
            (value, _) if kind.accepts(value) => de::Deserializer::deserialize_any(self, visitor),
            (value, _) => Err(de::Error::invalid_type(self.unexpected(value), &visitor)),
        }
    }

    /// Write the value at `pos` as JSON text, map entries in wire order (a `RawValue`
    /// keeps the text as it came, as it does from JSON). Depth was checked.
    fn write_json(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        use std::io::Write;
        let io = |e: std::io::Error| <Error as de::Error>::custom(e);
        match self.next()? {
            Head::Nil => out.extend_from_slice(b"null"),
            Head::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
            Head::Uint(n) => write!(out, "{n}").map_err(io)?,
            Head::Int(n) => write!(out, "{n}").map_err(io)?,
            Head::Float(x) => serde_json::to_writer(&mut *out, &x)?,
            Head::Str { start, end } => serde_json::to_writer(&mut *out, self.str(start, end)?)?,
            Head::Array { len, .. } => {
                out.push(b'[');
                for i in 0..len {
                    if i > 0 {
                        out.push(b',');
                    }
                    self.write_json(out)?;
                }
                out.push(b']');
            }
            Head::Map { len, .. } => {
                out.push(b'{');
                for i in 0..len {
                    if i > 0 {
                        out.push(b',');
                    }
                    match self.next()? {
                        Head::Str { start, end } => {
                            serde_json::to_writer(&mut *out, self.str(start, end)?)?
                        }
                        _ => return Err(de::Error::custom("a map key that is not a string")),
                    }
                    out.push(b':');
                    self.write_json(out)?;
                }
                out.push(b'}');
            }
            Head::Bin { .. } => return Err(de::Error::custom("binary data")),
            Head::Ext { .. } => return Err(de::Error::custom("an extension type")),
        }
        Ok(())
    }

    /// The end of the value at `pos` (checked, so only a bug makes it fail).
    fn skip(&mut self) -> Result<(), Error> {
        self.pos = super::msgpack::value_end(self.buf, self.pos).map_err(de::Error::custom)?;
        Ok(())
    }
}

/// What a `serde_json::Value` method accepts.
#[derive(Clone, Copy)]
enum Kind {
    Bool,
    Number,
    Str,
    StrOrArray,
    Nil,
    Array,
    Map,
    ArrayOrMap,
}

impl Kind {
    fn accepts(self, value: Head) -> bool {
        matches!(
            (self, value),
            (Kind::Bool, Head::Bool(_))
                | (Kind::Nil, Head::Nil)
                | (Kind::Number, Head::Uint(_) | Head::Int(_) | Head::Float(_))
                | (Kind::Str | Kind::StrOrArray, Head::Str { .. })
                | (
                    Kind::StrOrArray | Kind::Array | Kind::ArrayOrMap,
                    Head::Array { .. }
                )
                | (Kind::Map | Kind::ArrayOrMap, Head::Map { .. })
        )
    }
}

macro_rules! only {
    ($($method:ident)*: $kind:ident) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.expect(Kind::$kind, visitor)
        }
    )*};
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
            let mut text = Vec::new();
            self.write_json(&mut text)?;
            let mut json = serde_json::Deserializer::from_reader(text.as_slice());
            return de::Deserializer::deserialize_newtype_struct(&mut json, name, visitor);
        }
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.skip()?;
        visitor.visit_unit()
    }

    // The rest accept what `serde_json::Value`'s methods accept, and refuse the rest
    // with the same error, before the visitor sees it: an identifier is never a variant
    // index, a string is never bytes.
    only!(deserialize_bool: Bool);
    only!(deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128: Number);
    only!(deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128: Number);
    only!(deserialize_f32 deserialize_f64: Number);
    only!(deserialize_char deserialize_str deserialize_string deserialize_identifier: Str);
    only!(deserialize_bytes deserialize_byte_buf: StrOrArray);
    only!(deserialize_unit: Nil);
    only!(deserialize_seq: Array);
    only!(deserialize_map: Map);

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.expect(Kind::ArrayOrMap, visitor)
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

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
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

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};
    use std::fmt::Debug;

    use serde::Deserialize;
    use serde::de::DeserializeOwned;
    use serde_json::{Value, json};

    use crate::protocol::{Params, msgpack};

    #[derive(Debug, PartialEq, Deserialize)]
    struct Point {
        x: i32,
        label: Option<String>,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    enum Shape {
        Empty,
        Circle(f64),
        Line(i32, i32),
        Rect { w: u8, h: u8 },
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(untagged)]
    enum Loose {
        Num(f64),
        Text(String),
        List(Vec<Loose>),
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(tag = "kind")]
    enum Tagged {
        A { n: i64 },
        B,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct Outer {
        id: u32,
        #[serde(flatten)]
        rest: BTreeMap<String, Value>,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct Meters(f64);

    #[derive(Debug, PartialEq, Deserialize)]
    struct Marker;

    /// MessagePack params covering every kind of value, with the encodings other
    /// MessagePack libraries choose (float32, int8 for a positive number, …).
    fn inputs() -> Vec<Vec<u8>> {
        let values = [
            json!([]),
            json!({}),
            json!([1, 2]),
            json!([1, 2, 3]),
            json!([-1, 2.5, 0]),
            json!([1, "a"]),
            json!([null]),
            json!([1, null]),
            json!([true]),
            json!(["x"]),
            json!(["xy"]),
            json!([[]]),
            json!([[1, 2]]),
            json!([{}]),
            json!({"x": 1}),
            json!({"x": 1, "label": "a"}),
            json!({"x": 1, "label": null}),
            json!({"x": "1"}),
            json!({"x": 1, "other": [1, {"y": null}]}),
            json!({"id": 7, "a": 1, "b": [true]}),
            json!([1, "p"]),
            json!({"1": "a", "22": "b"}),
            json!({"-3": "a"}),
            json!({"1.5": "a"}),
            json!({"01": "a", "x": "b"}),
            json!({"true": 1, "false": 2}),
            json!({"kind": "A", "n": -4}),
            json!({"kind": "B"}),
            json!({"kind": "C"}),
            json!(["Empty"]),
            json!(["Circle"]),
            json!([{"Empty": null}]),
            json!([{"Empty": 1}]),
            json!([{"Circle": 2}]),
            json!([{"Circle": 2, "Empty": null}]),
            json!([{"Line": [1, 2]}]),
            json!([{"Line": []}]),
            json!([{"Line": [1]}]),
            json!([{"Line": 5}]),
            json!([{"Rect": {"w": 1, "h": 2}}]),
            json!([{"Rect": [1, 2]}]),
            json!([{"Rect": 1}]),
            json!({"Circle": 1.5}),
            json!({"Rect": {"w": 300, "h": 2}}),
            json!([1.5e300, -0.0]),
            json!([u64::MAX, i64::MIN]),
            json!([i64::MAX, u64::MAX]),
            json!([1, [2, [3, ["deep"]]]]),
            json!(["💖", "\u{0}"]),
        ];
        let mut out: Vec<Vec<u8>> = values
            .iter()
            .map(|v| rmp_serde::to_vec_named(v).unwrap())
            .collect();
        out.extend([
            // [1.5 as float32, 5 as int8, 300 as int16, -1 as int64, 7 as uint64]
            vec![
                0x95, 0xca, 0x3f, 0xc0, 0, 0, 0xd0, 0x05, 0xd1, 0x01, 0x2c, 0xd3, 0xff, 0xff, 0xff,
                0xff, 0xff, 0xff, 0xff, 0xff, 0xcf, 0, 0, 0, 0, 0, 0, 0, 7,
            ],
            // [0.1 as float32]: not exactly 0.1 either way
            vec![0x91, 0xca, 0x3d, 0xcc, 0xcc, 0xcd],
            // {"x": 1} with a str8 key, and an array16 of one item
            vec![0x81, 0xd9, 0x01, b'x', 0x01],
            vec![0xdc, 0x00, 0x01, 0x05],
        ]);
        out
    }

    thread_local! {
        /// Whether two refusals may name different problems: a map's entries now come
        /// in wire order, so the first bad entry found may be another one.
        static ERRORS_MAY_DIFFER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// The old path: the whole params as a `Value`, then the type from it.
    fn via_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
        msgpack::to_json(bytes, true)
            .map_err(|problem| format!("params hold {problem}, which JSON cannot carry"))
            .and_then(|value| T::deserialize(value).map_err(|e| e.to_string()))
    }

    /// The typed decoder alone: without `Params::parse`'s reading of empty params as
    /// none, which decoding through a `Value` never had.
    fn direct<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
        Params::MsgPack { bytes, raw: false }
            .parse_seed(std::marker::PhantomData::<T>)
            .map_err(|e| e.data.unwrap().as_str().unwrap().to_owned())
    }

    fn differences<T: DeserializeOwned + PartialEq + Debug>(inputs: &[Vec<u8>]) -> Vec<String> {
        let name = std::any::type_name::<T>();
        inputs
            .iter()
            .filter_map(|bytes| {
                let (old, new) = (via_value::<T>(bytes), direct::<T>(bytes));
                let both_refused = old.is_err() && new.is_err();
                (old != new && !(ERRORS_MAY_DIFFER.with(|c| c.get()) && both_refused)).then(|| {
                    let shown = msgpack::to_json(bytes, false).unwrap();
                    format!("{name} from {shown}: before {old:?}, now {new:?}")
                })
            })
            .collect()
    }

    #[test]
    fn typed_decoding_means_what_decoding_through_a_value_meant() {
        let inputs = inputs();
        let mut diffs = Vec::new();
        diffs.extend(differences::<Value>(&inputs));
        diffs.extend(differences::<Vec<Value>>(&inputs));
        diffs.extend(differences::<BTreeMap<String, Value>>(&inputs));
        diffs.extend(differences::<Vec<f64>>(&inputs));
        diffs.extend(differences::<Vec<f32>>(&inputs));
        diffs.extend(differences::<Vec<i64>>(&inputs));
        diffs.extend(differences::<Vec<u64>>(&inputs));
        diffs.extend(differences::<Vec<u128>>(&inputs));
        diffs.extend(differences::<Vec<i8>>(&inputs));
        diffs.extend(differences::<Vec<u8>>(&inputs));
        diffs.extend(differences::<Vec<String>>(&inputs));
        diffs.extend(differences::<Vec<char>>(&inputs));
        diffs.extend(differences::<Vec<bool>>(&inputs));
        diffs.extend(differences::<Vec<Option<i32>>>(&inputs));
        diffs.extend(differences::<Option<Vec<i32>>>(&inputs));
        diffs.extend(differences::<(i32, String)>(&inputs));
        diffs.extend(differences::<(i32, i32)>(&inputs));
        diffs.extend(differences::<(f32,)>(&inputs));
        diffs.extend(differences::<()>(&inputs));
        diffs.extend(differences::<((),)>(&inputs));
        diffs.extend(differences::<Point>(&inputs));
        diffs.extend(differences::<Vec<Shape>>(&inputs));
        diffs.extend(differences::<Shape>(&inputs));
        diffs.extend(differences::<Vec<Loose>>(&inputs));
        diffs.extend(differences::<Tagged>(&inputs));
        diffs.extend(differences::<Outer>(&inputs));
        diffs.extend(differences::<(Meters,)>(&inputs));
        diffs.extend(differences::<Marker>(&inputs));
        diffs.extend(differences::<(Marker,)>(&inputs));
        diffs.extend(differences::<HashMap<u32, String>>(&inputs));
        diffs.extend(differences::<HashMap<i8, String>>(&inputs));
        diffs.extend(differences::<BTreeMap<i128, String>>(&inputs));
        diffs.extend(differences::<BTreeMap<bool, i32>>(&inputs));
        diffs.extend(differences::<HashMap<String, Option<u8>>>(&inputs));
        assert!(
            diffs.is_empty(),
            "{} differences:\n{}",
            diffs.len(),
            diffs.join("\n")
        );
    }

    #[test]
    fn raw_json_params_are_the_same_json() {
        // The same text but for key order: the wire's now, sorted before.
        let read = |raw: Box<serde_json::value::RawValue>| {
            serde_json::from_str::<Value>(raw.get()).unwrap()
        };
        for bytes in inputs().iter().chain(&random_params(2_000)) {
            let old: Result<Box<serde_json::value::RawValue>, String> = via_value(bytes);
            let new: Result<Box<serde_json::value::RawValue>, String> = direct(bytes);
            assert_eq!(old.map(read), new.map(read));
        }
        let map = [
            0x82, 0xa1, b'b', 0x01, 0xa1, b'a', 0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0,
        ];
        let raw: (Box<serde_json::value::RawValue>,) =
            direct(&[&[0x91][..], &map].concat()).unwrap();
        assert_eq!(raw.0.get(), r#"{"b":1,"a":1.5}"#);
    }

    #[test]
    fn a_repeated_key_is_refused_by_a_struct_as_from_json_text() {
        // {"x": 1, "x": 2}: a Value kept the last; a struct now sees both.
        let bytes = [0x82, 0xa1, b'x', 0x01, 0xa1, b'x', 0x02];
        assert_eq!(direct::<Value>(&bytes).unwrap(), json!({"x": 2}));
        assert_eq!(direct::<HashMap<String, i32>>(&bytes).unwrap()["x"], 2);
        let error = direct::<Point>(&bytes).unwrap_err();
        assert_eq!(error, "duplicate field `x`");
        let text = serde_json::from_str::<Point>(r#"{"x":1,"x":2}"#).unwrap_err();
        assert!(text.to_string().starts_with("duplicate field `x`"));
        // {"x": "a", "x": 1} into a map of numbers: the first "x" is read too.
        let bytes = [0x82, 0xa1, b'x', 0xa1, b'a', 0xa1, b'x', 0x01];
        assert_eq!(via_value::<HashMap<String, u8>>(&bytes).unwrap()["x"], 1);
        assert!(direct::<HashMap<String, u8>>(&bytes).is_err());
        assert!(serde_json::from_str::<HashMap<String, u8>>(r#"{"x":"a","x":1}"#).is_err());
    }

    #[test]
    fn the_walk_names_the_first_value_json_cannot_carry() {
        let cases: [(&[u8], Result<usize, &str>); 9] = [
            (&[0x92, 0x01, 0xc0], Ok(3)),
            (&[0x81, 0xa1, b'a', 0x90], Ok(3)),
            (&[0x92, 0xc4, 0x00, 0xd4, 0x01, 0x00], Err("binary data")),
            (
                &[0x92, 0xd4, 0x01, 0x00, 0xc4, 0x00],
                Err("an extension type"),
            ),
            (
                &[0x81, 0x01, 0xc4, 0x00],
                Err("a map key that is not a string"),
            ),
            (
                &[0x81, 0xa1, 0xff, 0x01],
                Err("a map key that is not UTF-8"),
            ),
            (&[0x91, 0xa1, 0xff], Err("a string that is not UTF-8")),
            (
                &[0x91, 0xca, 0x7f, 0x80, 0, 0],
                Err("a NaN or infinite number"),
            ),
            // Only keys must be strings: a map value may be anything JSON has.
            (&[0x81, 0xa1, b'k', 0x81, 0xa0, 0x05], Ok(5)),
        ];
        for (bytes, expected) in cases {
            assert_eq!(super::json_compatible(bytes), expected, "{bytes:x?}");
            if let Err(problem) = expected {
                assert_eq!(msgpack::to_json(bytes, true).unwrap_err(), problem);
            }
        }
    }

    /// Random MessagePack, any encoding of anything (including what JSON cannot carry,
    /// NaNs, non-string keys, keys out of order), from a fixed seed. Keys are not
    /// repeated: see `a_repeated_key_is_refused_by_a_struct_as_from_json_text`.
    fn random_params(count: usize) -> Vec<Vec<u8>> {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |below: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % below
        };
        fn value(next: &mut dyn FnMut(u64) -> u64, depth: u32, out: &mut Vec<u8>) {
            let letters = [b'a', b'b', b'1', b'-', 0xff];
            let kinds = if depth < 4 { 18 } else { 16 };
            match next(kinds) {
                0 => out.push(0xc0),
                1 => out.push(0xc2 + next(2) as u8),
                2 => out.push(next(128) as u8),
                3 => out.push(0xe0 | next(32) as u8),
                4 => out.extend([0xcc, next(256) as u8]),
                5 => out.extend([0xd0, next(256) as u8]),
                6 => out.extend([0xd1, next(256) as u8, next(256) as u8]),
                7 => {
                    out.push(if next(2) == 0 { 0xcf } else { 0xd3 });
                    out.extend((0..8).map(|_| next(256) as u8));
                }
                8 => {
                    out.push(0xca);
                    out.extend((0..4).map(|_| next(256) as u8));
                }
                9 => {
                    out.push(0xcb);
                    out.extend((0..8).map(|_| next(256) as u8));
                }
                10..=12 => {
                    let len = next(4) as usize;
                    out.push(0xa0 | len as u8);
                    for _ in 0..len {
                        let choices = if next(20) == 0 { 5 } else { 4 };
                        out.push(letters[next(choices) as usize]);
                    }
                }
                13 => out.extend([0xc4, 1, next(256) as u8]),
                14 => out.extend([0xd4, next(256) as u8, 0]),
                15 => out.extend([0xa2, 0xc3, 0xa9]),
                16 => {
                    let len = next(5) as usize;
                    out.push(0x90 | len as u8);
                    for _ in 0..len {
                        value(next, depth + 1, out);
                    }
                }
                _ => {
                    let len = next(4) as usize;
                    out.push(0x80 | len as u8);
                    for i in 0..len {
                        if next(30) == 0 {
                            value(next, depth + 1, out);
                        } else {
                            out.extend([0xa1, letters_key(i as u64)]);
                        }
                        value(next, depth + 1, out);
                    }
                }
            }
        }
        (0..count)
            .map(|_| {
                let mut out = Vec::new();
                let len = next(4) as usize;
                if next(2) == 0 {
                    out.push(0x90 | len as u8);
                    for _ in 0..len {
                        value(&mut next, 1, &mut out);
                    }
                } else {
                    out.push(0x80 | len as u8);
                    for i in 0..len {
                        out.extend([0xa1, letters_key(i as u64)]);
                        value(&mut next, 1, &mut out);
                    }
                }
                out
            })
            .collect()
    }

    fn letters_key(n: u64) -> u8 {
        [b'a', b'b', b'1'][n as usize]
    }

    #[test]
    fn random_params_decode_as_they_did_through_a_value() {
        let inputs = random_params(20_000);
        ERRORS_MAY_DIFFER.with(|c| c.set(true));
        for bytes in &inputs {
            assert!(msgpack::check_frame(bytes).is_ok(), "{bytes:x?}");
        }
        let mut diffs = Vec::new();
        diffs.extend(differences::<Value>(&inputs));
        diffs.extend(differences::<Vec<Option<f64>>>(&inputs));
        diffs.extend(differences::<HashMap<String, Value>>(&inputs));
        diffs.extend(differences::<BTreeMap<u8, Vec<Value>>>(&inputs));
        diffs.extend(differences::<Vec<Loose>>(&inputs));
        diffs.extend(differences::<Vec<Shape>>(&inputs));
        assert!(
            diffs.is_empty(),
            "{} differences:\n{}",
            diffs.len(),
            diffs[..diffs.len().min(20)].join("\n")
        );
    }

    /// Small calls must not get slower: times the old and new ways to read `[5, 3]`
    /// (`cargo test --release --lib hot_path -- --ignored --nocapture`).
    #[test]
    #[ignore = "a timing, for release builds"]
    fn hot_path_timing() {
        use std::hint::black_box;
        use std::time::Instant;
        let bytes = [0x92, 0x05, 0x03];
        let raw = serde_json::value::RawValue::from_string("[5,3]".into()).unwrap();
        // HOT_ROUNDS and HOT_CASE (a part of a name) narrow it down, for callgrind.
        let env = |name: &str| std::env::var(name).ok();
        let rounds: u32 = env("HOT_ROUNDS").map_or(2_000_000, |r| r.parse().unwrap());
        let case = env("HOT_CASE").unwrap_or_default();
        let time = |name: &str, f: &dyn Fn() -> f64| {
            if !name.contains(&case) {
                return;
            }
            let start = Instant::now();
            let mut sum = 0.0;
            for _ in 0..rounds {
                sum += f();
            }
            let ns = start.elapsed().as_nanos() as f64 / f64::from(rounds);
            eprintln!("{name}: {ns:.1} ns ({sum})");
        };
        for _ in 0..2 {
            time("msgpack through a Value", &|| {
                via_value::<Vec<f64>>(black_box(&bytes))
                    .unwrap()
                    .iter()
                    .sum()
            });
            time("msgpack direct", &|| {
                direct::<Vec<f64>>(black_box(&bytes)).unwrap().iter().sum()
            });
            time("json from_str", &|| {
                serde_json::from_str::<Vec<f64>>(black_box(&raw).get())
                    .unwrap()
                    .iter()
                    .sum()
            });
            time("json parse", &|| {
                Params::Json(black_box(&raw))
                    .parse::<Vec<f64>>()
                    .unwrap()
                    .iter()
                    .sum()
            });
            time("Value json from_str", &|| {
                let v: Value = serde_json::from_str(black_box(&raw).get()).unwrap();
                v[0].as_f64().unwrap()
            });
            time("Value json parse", &|| {
                let v: Value = Params::Json(black_box(&raw)).parse().unwrap();
                v[0].as_f64().unwrap()
            });
        }
    }
}
