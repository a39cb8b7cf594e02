//! A bound on the self-describing values a decode may build, proportional to the bytes
//! of the params.
//!
//! A handler's own types cost about what their wire form does, but a
//! `serde_json::Value` costs 32 bytes a value however small its encoding: one byte of
//! MessagePack `nil` (or two of JSON `0,`) becomes a 32-byte `Value::Null`. Such values
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

/// Bytes of params per self-describing value allowed: with about 32 bytes a value
/// (a `Value`; a map entry counts its key too), decoded values stay near 4x the params.
pub(crate) const BYTES_PER_VALUE: usize = 8;

/// Values always allowed, however short the params (about half a MiB as `Value`s).
pub(crate) const MIN_VALUES: usize = 1 << 14;

/// How many more self-describing values a decode may build.
pub(crate) struct Budget {
    left: Cell<usize>,
    limit: usize,
}

impl Budget {
    /// The budget of a decode of `bytes` bytes of params.
    pub(crate) fn for_params(bytes: usize) -> Self {
        let limit = (bytes / BYTES_PER_VALUE).max(MIN_VALUES);
        Budget {
            left: Cell::new(limit),
            limit,
        }
    }

    fn spend<E: de::Error>(&self) -> Result<(), E> {
        match self.left.get() {
            0 => Err(E::custom(format_args!(
                "params too large for this method: more than {} values for {} bytes",
                self.limit,
                self.limit.saturating_mul(BYTES_PER_VALUE)
            ))),
            n => {
                self.left.set(n - 1);
                Ok(())
            }
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

macro_rules! forward_typed {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.inner.$method(Wrap { inner: visitor, budget: self.budget, any: false })
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Counted<'_, D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.budget.spend()?;
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
        let wrap = Wrap {
            inner: visitor,
            budget: self.budget,
            any: false,
        };
        self.inner.deserialize_unit_struct(name, wrap)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let wrap = Wrap {
            inner: visitor,
            budget: self.budget,
            any: false,
        };
        self.inner.deserialize_newtype_struct(name, wrap)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let wrap = Wrap {
            inner: visitor,
            budget: self.budget,
            any: false,
        };
        self.inner.deserialize_tuple(len, wrap)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let wrap = Wrap {
            inner: visitor,
            budget: self.budget,
            any: false,
        };
        self.inner.deserialize_tuple_struct(name, len, wrap)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let wrap = Wrap {
            inner: visitor,
            budget: self.budget,
            any: false,
        };
        self.inner.deserialize_struct(name, fields, wrap)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let wrap = Wrap {
            inner: visitor,
            budget: self.budget,
            any: false,
        };
        self.inner.deserialize_enum(name, variants, wrap)
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
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_map(Access {
            inner: map,
            budget: self.budget,
            any: self.any,
        })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_enum(Access {
            inner: data,
            budget: self.budget,
            any: false,
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
}

impl<'b, A> Access<'b, A> {
    fn seed<S>(&self, inner: S) -> Seed<'b, S> {
        Seed {
            inner,
            budget: self.budget,
        }
    }

    fn wrap<V>(&self, inner: V) -> Wrap<'b, V> {
        Wrap {
            inner,
            budget: self.budget,
            any: false,
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
        // A key of a self-describing map is a value of its own (a map entry's `String`).
        if key.is_some() && self.any {
            self.budget.spend()?;
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
        let wrap = self.wrap(visitor);
        self.inner.tuple_variant(len, wrap)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        let wrap = self.wrap(visitor);
        self.inner.struct_variant(fields, wrap)
    }
}
