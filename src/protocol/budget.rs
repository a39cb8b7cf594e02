//! A bound on the self-describing values a decode may build, proportional to the bytes
//! of the params: [`FACTOR`] times as many bytes, or [`FLOOR`] bytes for short params.
//!
//! A handler's own types cost about what their wire form does, but a
//! `serde_json::Value` costs 32 bytes a value however small its encoding: one byte of
//! MessagePack `nil` (or two of JSON `0,`) becomes a 32-byte `Value::Null`, and four
//! bytes of a one-key map (`{"a":0}`) about 700 bytes of B-tree. Such values
//! are exactly those the type asks for with `deserialize_any` (a `Value`, serde's
//! buffering for untagged and internally tagged enums and `flatten`), so [`Counted`]
//! wraps a deserializer and counts those requests, and the keys of the maps read that
//! way, against a [`Budget`]. A `Vec<u8>` from an array of small numbers asks for each
//! element by its type and is never counted.

use std::cell::Cell;
use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

/// Decoded self-describing values may take this many times the bytes of the params.
/// A `Vec` of them holds up to half as much again while it grows, and the frame is
/// in memory too: about 4x the frame in all.
pub(crate) const FACTOR: usize = 2;

/// Bytes of such values always allowed, however short the params: 131,072 `Value`s,
/// or some 5,000 small records as `serde_json::Map`s. Enough for everyday calls, and
/// small enough that short calls decoding at once cannot add up to much.
pub(crate) const FLOOR: usize = 4 << 20;

/// What one value costs: a `serde_json::Value` is 32 bytes.
const VALUE_COST: usize = 32;

/// What a map key adds: its `String` and its share of the map.
const KEY_COST: usize = 64;

/// A `serde_json::Map` (a B-tree) takes a node of about 600 bytes for every 11 keys,
/// the first included: a one-key map costs 20 times a `Value`.
const MAP_NODE_COST: usize = 600;
const KEYS_PER_NODE: usize = 11;

/// The most the estimate charges a byte of params: a MessagePack `{"": nil}` is 3 bytes
/// charged 728 (a map, its first key and node, a value), 243 a byte; JSON's `{"":0}`
/// is 6 bytes for the same.
const MOST_PER_BYTE: usize = 256;

/// Params this short cannot exceed [`FLOOR`], so they are read without counting.
pub(crate) const UNCOUNTED: usize = FLOOR / MOST_PER_BYTE;

/// Deserialize `len` bytes of params with `seed`, counting against a [`Budget`] unless
/// they are too short to exceed one.
pub(crate) fn deserialize<'de, S, D>(seed: S, de: D, len: usize) -> Result<S::Value, D::Error>
where
    S: DeserializeSeed<'de>,
    D: Deserializer<'de>,
{
    if len <= UNCOUNTED {
        return seed.deserialize(de);
    }
    counted(seed, de, len)
}

/// Deserialize `len` bytes of params with `seed`, counting against a [`Budget`].
fn counted<'de, S, D>(seed: S, de: D, len: usize) -> Result<S::Value, D::Error>
where
    S: DeserializeSeed<'de>,
    D: Deserializer<'de>,
{
    let budget = Budget::for_params(len);
    seed.deserialize(Counted::new(de, &budget))
}

/// How many more bytes of self-describing values a decode may build (an estimate
/// from what it asked for: the heap of strings, at most the params' bytes, is left out).
pub(crate) struct Budget {
    left: Cell<usize>,
    limit: usize,
}

impl Budget {
    /// The budget of a decode of `bytes` bytes of params.
    pub(crate) fn for_params(bytes: usize) -> Self {
        let limit = bytes.saturating_mul(FACTOR).max(FLOOR);
        Budget {
            left: Cell::new(limit),
            limit,
        }
    }

    fn spend<E: de::Error>(&self, cost: usize) -> Result<(), E> {
        match self.left.get().checked_sub(cost) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => Err(E::custom(format_args!(
                "{}: more than {} MiB of memory",
                super::OVER_VALUE_BUDGET,
                self.limit >> 20
            ))),
        }
    }
}

/// A deserializer whose `deserialize_any` requests, at every depth, spend the budget.
pub(crate) struct Counted<'b, D> {
    inner: D,
    budget: &'b Budget,
}

impl<'b, D> Counted<'b, D> {
    pub(crate) fn new(inner: D, budget: &'b Budget) -> Self {
        Counted { inner, budget }
    }
}

/// A visitor whose nested values are read through [`Counted`]; `any` when the type
/// asked for whatever comes (then map keys count too).
struct Wrap<'b, V> {
    inner: V,
    budget: &'b Budget,
    any: bool,
}

impl<'b, V> Wrap<'b, V> {
    /// `inner`, reading what it nests through `budget`, for a type that asked for
    /// something in particular (not "anything").
    fn typed(budget: &'b Budget, inner: V) -> Self {
        Wrap {
            inner,
            budget,
            any: false,
        }
    }
}

macro_rules! forward_typed {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.inner.$method(Wrap::typed(self.budget, visitor))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Counted<'_, D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.budget.spend(VALUE_COST)?;
        self.inner.deserialize_any(Wrap {
            inner: visitor,
            budget: self.budget,
            any: true,
        })
    }

    forward_typed!(
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
        deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char deserialize_str
        deserialize_string deserialize_bytes deserialize_byte_buf deserialize_option
        deserialize_unit deserialize_seq deserialize_map deserialize_identifier
        deserialize_ignored_any
    );

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner
            .deserialize_unit_struct(name, Wrap::typed(self.budget, visitor))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner
            .deserialize_newtype_struct(name, Wrap::typed(self.budget, visitor))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner
            .deserialize_tuple(len, Wrap::typed(self.budget, visitor))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner
            .deserialize_tuple_struct(name, len, Wrap::typed(self.budget, visitor))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner
            .deserialize_struct(name, fields, Wrap::typed(self.budget, visitor))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner
            .deserialize_enum(name, variants, Wrap::typed(self.budget, visitor))
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident: $ty:ty)*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
            self.inner.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.inner.expecting(f)
    }

    forward_visit!(
        visit_bool: bool visit_i8: i8 visit_i16: i16 visit_i32: i32 visit_i64: i64
        visit_i128: i128 visit_u8: u8 visit_u16: u16 visit_u32: u32 visit_u64: u64
        visit_u128: u128 visit_f32: f32 visit_f64: f64 visit_char: char visit_str: &str
        visit_borrowed_str: &'de str visit_string: String visit_bytes: &[u8]
        visit_borrowed_bytes: &'de [u8] visit_byte_buf: Vec<u8>
    );

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.inner.visit_some(Counted::new(d, self.budget))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.inner
            .visit_newtype_struct(Counted::new(d, self.budget))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_seq(Access {
            inner: seq,
            budget: self.budget,
            any: self.any,
            keys: 0,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_map(Access {
            inner: map,
            budget: self.budget,
            any: self.any,
            keys: 0,
        })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_enum(Access {
            inner: data,
            budget: self.budget,
            any: false,
            keys: 0,
        })
    }
}

/// A seed whose deserializer is [`Counted`].
struct Seed<'b, S> {
    inner: S,
    budget: &'b Budget,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.inner.deserialize(Counted::new(d, self.budget))
    }
}

/// A sequence, map, enum or variant access whose values are read through [`Counted`].
struct Access<'b, A> {
    inner: A,
    budget: &'b Budget,
    any: bool,
    /// Keys read so far (of a map).
    keys: usize,
}

impl<'b, A> Access<'b, A> {
    fn seed<S>(&self, inner: S) -> Seed<'b, S> {
        Seed {
            inner,
            budget: self.budget,
        }
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Access<'_, A> {
    type Error = A::Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, A::Error> {
        let seed = self.seed(seed);
        self.inner.next_element_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Access<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let seed = self.seed(seed);
        let key = self.inner.next_key_seed(seed)?;
        // A key of a self-describing map is a `String` in a B-tree node.
        if key.is_some() && self.any {
            let node = if self.keys.is_multiple_of(KEYS_PER_NODE) {
                MAP_NODE_COST
            } else {
                0
            };
            self.keys += 1;
            self.budget.spend(KEY_COST + node)?;
        }
        Ok(key)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        let seed = self.seed(seed);
        self.inner.next_value_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, 'b, A: EnumAccess<'de>> EnumAccess<'de> for Access<'b, A> {
    type Error = A::Error;
    type Variant = Access<'b, A::Variant>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), A::Error> {
        let seed = self.seed(seed);
        let (value, variant) = self.inner.variant_seed(seed)?;
        let variant = Access {
            inner: variant,
            budget: self.budget,
            any: false,
            keys: 0,
        };
        Ok((value, variant))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Access<'_, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, A::Error> {
        let seed = self.seed(seed);
        self.inner.newtype_variant_seed(seed)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.inner
            .tuple_variant(len, Wrap::typed(self.budget, visitor))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.inner
            .struct_variant(fields, Wrap::typed(self.budget, visitor))
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde::de::DeserializeOwned;
    use serde_json::value::RawValue;
    use serde_json::{Value, json};

    use super::{Budget, FACTOR, FLOOR, VALUE_COST};
    use crate::protocol::Params;

    fn json<T: DeserializeOwned>(params: &Value) -> Result<T, String> {
        let raw = RawValue::from_string(params.to_string()).unwrap();
        Params::Json(&raw).parse().map_err(|e| e.to_string())
    }

    fn msgpack<T: DeserializeOwned>(params: &Value) -> Result<T, String> {
        let bytes = rmp_serde::to_vec_named(params).unwrap();
        Params::MsgPack {
            bytes: &bytes,
            raw: false,
        }
        .parse()
        .map_err(|e| e.to_string())
    }

    fn both<T: DeserializeOwned>(params: &Value) -> [Result<T, String>; 2] {
        [json(params), msgpack(params)]
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    #[allow(dead_code)]
    enum Loose {
        Numbers(Vec<u8>),
        Anything(Value),
    }

    /// Past FLOOR / 32 values: more than 131,072.
    const MANY: usize = 150_000;

    #[test]
    fn a_dense_array_into_value_is_refused_past_the_budget() {
        let zeros = Value::from(vec![0; MANY]);
        for result in both::<Value>(&zeros) {
            let error = result.unwrap_err();
            assert!(error.contains("params too large"), "{error}");
        }
        for result in both::<Vec<Value>>(&zeros) {
            assert!(result.is_err());
        }
        for result in both::<Loose>(&zeros) {
            assert!(result.is_err());
        }
        let nulls = Value::from(vec![Value::Null; MANY]);
        assert!(msgpack::<Value>(&nulls).is_err());
    }

    #[test]
    fn typed_decodes_are_never_counted() {
        let zeros = Value::from(vec![0; MANY]);
        for result in both::<Vec<u8>>(&zeros) {
            assert_eq!(result.unwrap().len(), MANY);
        }
        for result in both::<Vec<f64>>(&zeros) {
            assert_eq!(result.unwrap().len(), MANY);
        }
        let nulls = Value::from(vec![Value::Null; MANY]);
        for result in both::<Vec<Option<u8>>>(&nulls) {
            assert_eq!(result.unwrap().len(), MANY);
        }
    }

    #[test]
    fn ordinary_values_fit() {
        // Under FLOOR, anything fits: 131,071 zeros are 4 MB of `Value`s.
        let million = Value::from(vec![0; FLOOR / VALUE_COST - 1]);
        for result in both::<Value>(&million) {
            assert_eq!(result.unwrap(), million);
        }
        // Small records cost ~37x their JSON as `Value`s: 4,500 fit, 6,000 do not.
        let records = Value::from(vec![json!({"id": 12, "name": "x"}); 4_500]);
        for result in both::<Value>(&records) {
            assert_eq!(result.unwrap(), records);
        }
        let more = Value::from(vec![json!({"id": 12, "name": "x"}); 6_000]);
        for result in both::<Value>(&more) {
            assert!(result.unwrap_err().contains("params too large"));
        }
    }

    #[test]
    fn past_the_floor_the_budget_grows_with_the_params() {
        assert_eq!(Budget::for_params(1).limit, FLOOR);
        assert_eq!(Budget::for_params(FLOOR / FACTOR).limit, FLOOR);
        assert_eq!(Budget::for_params(FLOOR).limit, FACTOR * FLOOR);
        // So values of 32 / FACTOR = 16 bytes or more fit at any length.
        let budget = Budget::for_params(FLOOR);
        let values = FLOOR / 16;
        for _ in 0..values {
            budget.spend::<serde_json::Error>(VALUE_COST).unwrap();
        }
        assert!(budget.spend::<serde_json::Error>(1).is_err());
    }

    #[test]
    fn keys_of_a_value_map_count() {
        let map = |keys: usize| {
            let map: serde_json::Map<String, Value> =
                (0..keys).map(|i| (i.to_string(), Value::Null)).collect();
            Value::Object(map)
        };
        // About 150 bytes a key: 25,000 fit in FLOOR, 32,000 do not.
        for result in both::<Value>(&map(25_000)) {
            assert!(result.is_ok());
        }
        for result in both::<Value>(&map(32_000)) {
            assert!(result.unwrap_err().contains("params too large"));
        }
        for result in both::<std::collections::HashMap<String, ()>>(&map(250_000)) {
            assert_eq!(result.unwrap().len(), 250_000);
        }
    }

    #[test]
    fn params_too_short_to_count_cannot_exceed_the_floor() {
        use super::{UNCOUNTED, counted};
        use crate::protocol::msgpack_params::{Reader, json_compatible};
        use std::marker::PhantomData;
        // The most charged per byte: maps of one empty key, as many as fit.
        let mut bytes = vec![0xdd];
        let count = (UNCOUNTED - 5) / 3;
        bytes.extend_from_slice(&(count as u32).to_be_bytes());
        for _ in 0..count {
            bytes.extend_from_slice(&[0x81, 0xa0, 0xc0]);
        }
        assert!(json_compatible(&bytes).is_ok());
        let value = counted(PhantomData::<Value>, &mut Reader::new(&bytes), bytes.len());
        assert_eq!(value.unwrap().as_array().unwrap().len(), count);
        // One more map of it would not fit.
        let text = format!("[{}]", vec![r#"{"":0}"#; UNCOUNTED / 7].join(","));
        let mut de = serde_json::Deserializer::from_str(&text);
        assert!(counted(PhantomData::<Value>, &mut de, text.len()).is_ok());
        let mut over = bytes.clone();
        over[1..5].copy_from_slice(&((2 * count) as u32).to_be_bytes());
        over.extend(std::iter::repeat_n([0x81, 0xa0, 0xc0], count).flatten());
        let value = counted(PhantomData::<Value>, &mut Reader::new(&over), bytes.len());
        assert!(value.is_err());
    }
}
