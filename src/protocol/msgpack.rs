//! The MessagePack dialect: the same messages as JSON, as maps with string keys in
//! binary frames (`{"result":8,"id":1}`, `{"notification":"feed","params":…}`).
//!
//! Every frame is first walked by [`value_end`], which checks that it is well formed
//! without allocating anything: lengths are checked against the bytes present (a
//! declared 4 GiB string in a 20-byte frame is just a truncated frame), and nesting
//! deeper than [`MAX_DEPTH`] is refused, so the recursive decoding that follows can
//! neither overflow a stack nor be told to reserve memory it will never fill.

use std::borrow::Cow;
use std::fmt;

use serde_json::{Map, Number, Value};

use super::{
    Encoded, Id, Incoming, Item, Member, Members, Params, Reply, batch_too_large, invalid_request,
    parse_error, validate,
};

/// Deepest nesting accepted, as serde_json's recursion limit for JSON.
pub(crate) const MAX_DEPTH: usize = 128;

/// Why bytes are not one well-formed MessagePack value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The bytes end inside a value.
    Truncated,
    /// The never-used type byte 0xc1.
    Reserved,
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// Bytes follow the value.
    Trailing,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::Truncated => "invalid MessagePack: the frame ends inside a value",
            Fault::Reserved => "invalid MessagePack: the reserved type byte 0xc1",
            Fault::TooDeep => "invalid MessagePack: nested deeper than 128 levels",
            Fault::Trailing => "invalid MessagePack: bytes after the message",
        })
    }
}

/// What one value's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Head {
    Nil,
    Bool(bool),
    Uint(u64),
    Int(i64),
    Float(f64),
    /// A string, binary or extension payload at `start..end` (`ext` is its type).
    Str {
        start: usize,
        end: usize,
    },
    Bin {
        start: usize,
        end: usize,
    },
    Ext {
        start: usize,
        end: usize,
    },
    /// A container whose `len` items (pairs for a map) start at `start`.
    Array {
        len: usize,
        start: usize,
    },
    Map {
        len: usize,
        start: usize,
    },
}

fn be(buf: &[u8], at: usize, n: usize) -> Result<u64, Fault> {
    let bytes = buf.get(at..at + n).ok_or(Fault::Truncated)?;
    Ok(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

/// A payload of `len` bytes at `start`, if the buffer holds it.
fn span(buf: &[u8], start: usize, len: u64) -> Result<(usize, usize), Fault> {
    let end = (start as u64).checked_add(len).ok_or(Fault::Truncated)?;
    if end > buf.len() as u64 {
        return Err(Fault::Truncated);
    }
    Ok((start, end as usize))
}

/// A container of `len` items at `start`: each item takes a byte at least, so a count
/// larger than what is left is a truncated frame, found before anything is reserved.
fn items(buf: &[u8], start: usize, len: u64, per_item: u64) -> Result<(usize, usize), Fault> {
    let needed = len.checked_mul(per_item).ok_or(Fault::Truncated)?;
    if needed > (buf.len().saturating_sub(start)) as u64 {
        return Err(Fault::Truncated);
    }
    Ok((len as usize, start))
}

/// Read the head of the value at `pos`; also returns where the head (for strings and
/// the like: the whole value) ends.
pub(crate) fn head(buf: &[u8], pos: usize) -> Result<(Head, usize), Fault> {
    let marker = *buf.get(pos).ok_or(Fault::Truncated)?;
    let p = pos + 1;
    let str_at = |start: usize, len: u64| {
        span(buf, start, len).map(|(start, end)| (Head::Str { start, end }, end))
    };
    let bin_at = |start: usize, len: u64| {
        span(buf, start, len).map(|(start, end)| (Head::Bin { start, end }, end))
    };
    // Extensions carry a type byte before the payload.
    let ext_at = |start: usize, len: u64| {
        span(buf, start + 1, len).map(|(start, end)| (Head::Ext { start, end }, end))
    };
    let array_at = |start: usize, len: u64| {
        items(buf, start, len, 1).map(|(len, start)| (Head::Array { len, start }, start))
    };
    let map_at = |start: usize, len: u64| {
        items(buf, start, len, 2).map(|(len, start)| (Head::Map { len, start }, start))
    };
    match marker {
        0x00..=0x7f => Ok((Head::Uint(u64::from(marker)), p)),
        0x80..=0x8f => map_at(p, u64::from(marker & 0x0f)),
        0x90..=0x9f => array_at(p, u64::from(marker & 0x0f)),
        0xa0..=0xbf => str_at(p, u64::from(marker & 0x1f)),
        0xc0 => Ok((Head::Nil, p)),
        0xc1 => Err(Fault::Reserved),
        0xc2 => Ok((Head::Bool(false), p)),
        0xc3 => Ok((Head::Bool(true), p)),
        0xc4 => bin_at(p + 1, be(buf, p, 1)?),
        0xc5 => bin_at(p + 2, be(buf, p, 2)?),
        0xc6 => bin_at(p + 4, be(buf, p, 4)?),
        0xc7 => ext_at(p + 1, be(buf, p, 1)?),
        0xc8 => ext_at(p + 2, be(buf, p, 2)?),
        0xc9 => ext_at(p + 4, be(buf, p, 4)?),
        0xca => Ok((
            Head::Float(f64::from(f32::from_bits(be(buf, p, 4)? as u32))),
            p + 4,
        )),
        0xcb => Ok((Head::Float(f64::from_bits(be(buf, p, 8)?)), p + 8)),
        0xcc => Ok((Head::Uint(be(buf, p, 1)?), p + 1)),
        0xcd => Ok((Head::Uint(be(buf, p, 2)?), p + 2)),
        0xce => Ok((Head::Uint(be(buf, p, 4)?), p + 4)),
        0xcf => Ok((Head::Uint(be(buf, p, 8)?), p + 8)),
        0xd0 => Ok((Head::Int(i64::from(be(buf, p, 1)? as u8 as i8)), p + 1)),
        0xd1 => Ok((Head::Int(i64::from(be(buf, p, 2)? as u16 as i16)), p + 2)),
        0xd2 => Ok((Head::Int(i64::from(be(buf, p, 4)? as u32 as i32)), p + 4)),
        0xd3 => Ok((Head::Int(be(buf, p, 8)? as i64), p + 8)),
        0xd4 => ext_at(p, 1),
        0xd5 => ext_at(p, 2),
        0xd6 => ext_at(p, 4),
        0xd7 => ext_at(p, 8),
        0xd8 => ext_at(p, 16),
        0xd9 => str_at(p + 1, be(buf, p, 1)?),
        0xda => str_at(p + 2, be(buf, p, 2)?),
        0xdb => str_at(p + 4, be(buf, p, 4)?),
        0xdc => array_at(p + 2, be(buf, p, 2)?),
        0xdd => array_at(p + 4, be(buf, p, 4)?),
        0xde => map_at(p + 2, be(buf, p, 2)?),
        0xdf => map_at(p + 4, be(buf, p, 4)?),
        0xe0..=0xff => Ok((Head::Int(i64::from(marker as i8)), p)),
    }
}

/// Where the value starting at `pos` ends, checking it is well formed. Iterative: a
/// stack of item counts, at most [`MAX_DEPTH`] deep.
pub(crate) fn value_end(buf: &[u8], pos: usize) -> Result<usize, Fault> {
    let mut open: Vec<usize> = Vec::new();
    let mut pos = pos;
    loop {
        let (value, next) = head(buf, pos)?;
        pos = next;
        let children = match value {
            Head::Array { len, .. } => len,
            Head::Map { len, .. } => len * 2,
            _ => 0,
        };
        if children > 0 {
            if open.len() == MAX_DEPTH {
                return Err(Fault::TooDeep);
            }
            open.push(children);
            continue;
        }
        // A value is complete: count it off its container, and those off theirs.
        loop {
            match open.last_mut() {
                None => return Ok(pos),
                Some(left) => {
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

/// Check that `frame` is exactly one well-formed value.
pub(crate) fn check_frame(frame: &[u8]) -> Result<(), Fault> {
    match value_end(frame, 0)? {
        end if end == frame.len() => Ok(()),
        _ => Err(Fault::Trailing),
    }
}

/// Convert a well-formed value to JSON. `strict`: refuse what JSON cannot carry,
/// naming it (binary, extensions, non-string keys, …); otherwise carry it over as best
/// JSON can (binary as an array of bytes, extensions as `{"type", "data"}`, keys as
/// their JSON text).
pub(crate) fn to_json(buf: &[u8], strict: bool) -> Result<Value, String> {
    check_frame(buf).map_err(|f| f.to_string())?;
    read(buf, 0, strict)
        .map(|(value, _)| value)
        .map_err(str::to_owned)
}

fn read(buf: &[u8], pos: usize, strict: bool) -> Result<(Value, usize), &'static str> {
    let fault = |f: Fault| match f {
        Fault::Truncated => "a truncated value",
        _ => "malformed MessagePack",
    };
    let (value, next) = head(buf, pos).map_err(fault)?;
    let bytes = |start: usize, end: usize| Value::from(buf[start..end].to_vec());
    let converted = match value {
        Head::Nil => Value::Null,
        Head::Bool(b) => Value::Bool(b),
        Head::Uint(n) => Value::from(n),
        Head::Int(n) => Value::from(n),
        Head::Float(x) => match Number::from_f64(x) {
            Some(n) => Value::Number(n),
            None if strict => return Err("a NaN or infinite number"),
            None => Value::Null,
        },
        Head::Str { start, end } => match std::str::from_utf8(&buf[start..end]) {
            Ok(s) => Value::from(s),
            Err(_) if strict => return Err("a string that is not UTF-8"),
            Err(_) => Value::from(String::from_utf8_lossy(&buf[start..end]).into_owned()),
        },
        Head::Bin { .. } if strict => return Err("binary data"),
        Head::Bin { start, end } => bytes(start, end),
        Head::Ext { .. } if strict => return Err("an extension type"),
        Head::Ext { start, end } => {
            let kind = buf[start - 1] as i8;
            serde_json::json!({"type": kind, "data": bytes(start, end)})
        }
        Head::Array { len, start } => {
            let mut out = Vec::with_capacity(len.min(1024));
            let mut at = start;
            for _ in 0..len {
                let (item, after) = read(buf, at, strict)?;
                out.push(item);
                at = after;
            }
            return Ok((Value::Array(out), at));
        }
        Head::Map { len, start } => {
            let mut out = Map::new();
            let mut at = start;
            for _ in 0..len {
                let key = match head(buf, at).map_err(fault)? {
                    (Head::Str { start, end }, after) => {
                        match std::str::from_utf8(&buf[start..end]) {
                            Ok(key) => {
                                at = after;
                                key.to_owned()
                            }
                            Err(_) if strict => return Err("a map key that is not UTF-8"),
                            Err(_) => {
                                at = after;
                                String::from_utf8_lossy(&buf[start..end]).into_owned()
                            }
                        }
                    }
                    _ if strict => return Err("a map key that is not a string"),
                    _ => {
                        let (key, after) = read(buf, at, strict)?;
                        at = after;
                        key.to_string()
                    }
                };
                let (value, after) = read(buf, at, strict)?;
                out.insert(key, value);
                at = after;
            }
            return Ok((Value::Object(out), at));
        }
    };
    Ok((converted, next))
}

/// One member of a request map: the bytes of a well-formed value.
#[derive(Debug, Clone, Copy)]
struct Slice<'a>(&'a [u8]);

impl<'a> Slice<'a> {
    fn head(self) -> Option<Head> {
        head(self.0, 0).ok().map(|(h, _)| h)
    }

    fn str_bytes(self) -> Option<&'a [u8]> {
        match self.head()? {
            Head::Str { start, end } => Some(&self.0[start..end]),
            _ => None,
        }
    }
}

impl<'a> Member<'a> for Slice<'a> {
    fn id(self) -> Option<Id> {
        match self.head()? {
            Head::Uint(n) => Some(Id::Number(n.into())),
            Head::Int(n) => Some(Id::Number(n.into())),
            Head::Float(x) => Number::from_f64(x).map(Id::Number),
            Head::Str { .. } => self.string().map(|s| Id::Str(s.into_owned())),
            _ => None,
        }
    }

    fn string(self) -> Option<Cow<'a, str>> {
        std::str::from_utf8(self.str_bytes()?)
            .ok()
            .map(Cow::Borrowed)
    }

    fn is_falsy(self) -> bool {
        match self.head() {
            Some(Head::Nil) | Some(Head::Bool(false)) => true,
            Some(Head::Uint(0)) | Some(Head::Int(0)) => true,
            Some(Head::Float(x)) => x == 0.0 || x.is_nan(),
            Some(Head::Str { start, end }) => start == end,
            _ => false,
        }
    }

    fn params(self) -> Option<Params<'a>> {
        matches!(self.head()?, Head::Array { .. } | Head::Map { .. }).then_some(Params::MsgPack {
            bytes: self.0,
            raw: false,
        })
    }
}

pub(crate) fn decode_requests(frame: &[u8], max_batch: usize) -> Incoming<'_> {
    if let Err(fault) = check_frame(frame) {
        return Incoming::Refused(parse_error(fault));
    }
    match head(frame, 0) {
        Ok((Head::Map { .. }, _)) => Incoming::Single(decode_item(frame)),
        Ok((Head::Array { len: 0, .. }, _)) => {
            Incoming::Refused(invalid_request(None, Some("Invalid array")))
        }
        Ok((Head::Array { len, .. }, _)) if len > max_batch => {
            Incoming::Refused(batch_too_large(max_batch))
        }
        Ok((Head::Array { len, start }, _)) => {
            let mut items = Vec::with_capacity(len.min(1024));
            let mut at = start;
            for _ in 0..len {
                let end = value_end(frame, at).unwrap_or(frame.len());
                items.push(decode_item(&frame[at..end]));
                at = end;
            }
            Incoming::Batch(items)
        }
        _ => Incoming::Refused(invalid_request(None, None)),
    }
}

/// One request map (a well-formed value): its members, then the shared checks.
fn decode_item(bytes: &[u8]) -> Item<'_> {
    let Ok((Head::Map { len, start }, _)) = head(bytes, 0) else {
        return Err(invalid_request(None, None));
    };
    let mut members = Members {
        jsonrpc: None,
        method: None,
        params: None,
        id: None,
    };
    let mut at = start;
    for _ in 0..len {
        let key = match head(bytes, at) {
            Ok((Head::Str { start, end }, after)) => {
                at = after;
                &bytes[start..end]
            }
            _ => return Err(invalid_request(None, Some("map keys must be strings"))),
        };
        let end = value_end(bytes, at).unwrap_or(bytes.len());
        let value = Slice(&bytes[at..end]);
        at = end;
        // nil is absent, as in JSON; a repeated key keeps its last value.
        let value = (value.head() != Some(Head::Nil)).then_some(value);
        match key {
            b"jsonrpc" => members.jsonrpc = value,
            b"method" => members.method = value,
            b"params" => members.params = value,
            b"id" => members.id = value,
            _ => {}
        }
    }
    validate(members, false)
}

fn write_len(out: &mut Vec<u8>, len: usize, fix: u8, fix_max: usize, wide: [u8; 3]) {
    match len {
        n if n <= fix_max => out.push(fix | n as u8),
        n if wide[0] != 0 && n <= u8::MAX as usize => out.extend_from_slice(&[wide[0], n as u8]),
        n if n <= u16::MAX as usize => {
            out.push(wide[1]);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(wide[2]);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    write_len(out, s.len(), 0xa0, 31, [0xd9, 0xda, 0xdb]);
    out.extend_from_slice(s.as_bytes());
}

fn write_map_len(out: &mut Vec<u8>, len: usize) {
    write_len(out, len, 0x80, 15, [0, 0xde, 0xdf]);
}

fn write_array_len(out: &mut Vec<u8>, len: usize) {
    write_len(out, len, 0x90, 15, [0, 0xdc, 0xdd]);
}

/// Plain data (ids, errors, JSON values) always encodes.
fn write_value<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let encoded = rmp_serde::to_vec_named(value).expect("plain data encodes");
    out.extend_from_slice(&encoded);
}

pub(crate) fn encode_replies(replies: &[Reply], batch: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    if batch {
        write_array_len(&mut out, replies.len());
        for reply in replies {
            write_reply(&mut out, reply);
        }
    } else if let Some(reply) = replies.first() {
        write_reply(&mut out, reply);
    }
    out
}

fn write_reply(out: &mut Vec<u8>, reply: &Reply) {
    write_map_len(out, 2);
    match &reply.outcome {
        Ok(Encoded(result)) => {
            write_str(out, "result");
            out.extend_from_slice(result);
        }
        Err(error) => {
            write_str(out, "error");
            write_value(out, error);
        }
    }
    write_str(out, "id");
    match &reply.id {
        Some(id) => write_value(out, id),
        None => out.push(0xc0),
    }
}

pub(crate) fn encode_event(name: &str, params: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + name.len());
    write_map_len(&mut out, 2);
    write_str(&mut out, "notification");
    write_str(&mut out, name);
    write_str(&mut out, "params");
    write_value(&mut out, params);
    out
}

/// A call as a client sends it; `jsonrpc` is included, since servers that speak
/// MessagePack through rpc-websockets still check it.
pub(crate) fn encode_call(id: Option<u64>, method: &str, params: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + method.len());
    let members = 2 + usize::from(!params.is_null()) + usize::from(id.is_some());
    write_map_len(&mut out, members);
    write_str(&mut out, "jsonrpc");
    write_str(&mut out, "2.0");
    write_str(&mut out, "method");
    write_str(&mut out, method);
    if !params.is_null() {
        write_str(&mut out, "params");
        write_value(&mut out, params);
    }
    if let Some(id) = id {
        write_str(&mut out, "id");
        write_value(&mut out, &id);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Call, Codec, ServerMessage};
    use serde_json::json;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn single(frame: &[u8]) -> Item<'_> {
        match decode_requests(frame, 1000) {
            Incoming::Single(item) => item,
            other => panic!("expected one message, got {other:?}"),
        }
    }

    fn refused(frame: &[u8]) -> (i64, Option<Value>) {
        match decode_requests(frame, 1000) {
            Incoming::Refused(reply) => {
                let error = reply.outcome.unwrap_err();
                (error.code, error.data)
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn call(frame: &[u8]) -> Call<'_> {
        single(frame).expect("a valid call")
    }

    fn error_code(item: Item<'_>) -> i64 {
        item.unwrap_err().outcome.unwrap_err().code
    }

    /// `{"method": m, "params": <params bytes>, "id": 1}`
    fn request_with_params(params: &[u8]) -> Vec<u8> {
        let mut out = vec![0x83];
        write_str(&mut out, "method");
        write_str(&mut out, "echo");
        write_str(&mut out, "params");
        out.extend_from_slice(params);
        write_str(&mut out, "id");
        out.push(0x01);
        out
    }

    #[test]
    fn contract_request_vector_decodes() {
        let frame = hex("83a66d6574686f64a373756da6706172616d73920503a2696401");
        let call = call(&frame);
        assert_eq!(call.method, "sum");
        assert_eq!(call.id, Some(Id::from(1)));
        assert_eq!(call.params.parse::<Vec<i32>>().unwrap(), vec![5, 3]);
    }

    #[test]
    fn contract_reply_vector_encodes_exactly() {
        let reply = Reply {
            id: Some(Id::from(1)),
            outcome: Ok(Codec::MsgPack.encode_value(&8).unwrap()),
        };
        assert_eq!(
            encode_replies(&[reply], false),
            hex("82a6726573756c7408a2696401")
        );
    }

    #[test]
    fn contract_event_vector_encodes_exactly() {
        let frame = encode_event("feed", &json!({"a": 1}));
        assert_eq!(
            frame,
            hex("82ac6e6f74696669636174696f6ea466656564a6706172616d7381a16101")
        );
    }

    #[test]
    fn errors_encode_as_maps_with_string_keys() {
        let reply = Reply::error(None, crate::RpcError::new(-32601, "Method not found"));
        let value = to_json(&encode_replies(&[reply], false), true).unwrap();
        assert_eq!(
            value,
            json!({"error": {"code": -32601, "message": "Method not found"}, "id": null})
        );
    }

    #[test]
    fn jsonrpc_is_optional_but_checked_when_present() {
        let mut frame = vec![0x83];
        write_str(&mut frame, "jsonrpc");
        write_str(&mut frame, "2.0");
        write_str(&mut frame, "method");
        write_str(&mut frame, "m");
        write_str(&mut frame, "id");
        frame.push(0x07);
        assert_eq!(call(&frame).method, "m");
        let mut bad = vec![0x82];
        write_str(&mut bad, "jsonrpc");
        write_str(&mut bad, "1.0");
        write_str(&mut bad, "method");
        write_str(&mut bad, "m");
        assert_eq!(error_code(single(&bad)), -32600);
    }

    #[test]
    fn nil_params_are_absent() {
        let frame = request_with_params(&[0xc0]);
        assert!(call(&frame).params.is_absent());
    }

    #[test]
    fn scalar_params_are_invalid_request() {
        for params in [&[0x05][..], &[0xc3], &[0xa1, b'x']] {
            assert_eq!(error_code(single(&request_with_params(params))), -32600);
        }
    }

    #[test]
    fn values_json_cannot_carry_are_invalid_params_naming_them() {
        let cases: [(&[u8], &str); 4] = [
            (&[0x91, 0xc4, 0x02, 0x01, 0x02], "binary data"),
            (&[0x91, 0xd4, 0x01, 0x00], "an extension type"),
            (&[0x81, 0x01, 0x02], "a map key that is not a string"),
            (
                &[0x91, 0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0],
                "a NaN or infinite number",
            ),
        ];
        for (params, problem) in cases {
            let frame = request_with_params(params);
            let error = call(&frame).params.parse::<Value>().unwrap_err();
            assert_eq!(error.code, -32602);
            let data = error.data.unwrap();
            assert!(
                data.as_str().unwrap().contains(problem),
                "{data} should name {problem}"
            );
        }
    }

    #[test]
    fn raw_params_deserialize_what_json_cannot_carry() {
        let frame = request_with_params(&[0x91, 0xc4, 0x02, 0x01, 0x02]);
        let params = call(&frame).params.allowing_raw();
        // serde's byte-buffer visitor accepts bin as a sequence of bytes.
        let (bytes,): (Vec<u8>,) = params.parse().unwrap();
        assert_eq!(bytes, [1, 2]);
    }

    #[test]
    fn truncated_frames_are_parse_errors() {
        let whole = hex("83a66d6574686f64a373756da6706172616d73920503a2696401");
        for len in 0..whole.len() {
            let (code, _) = refused(&whole[..len]);
            assert_eq!(code, -32700, "cut at {len}");
        }
    }

    #[test]
    fn huge_declared_lengths_are_truncated_not_allocated() {
        // str32, bin32, array32 and map32 claiming 4 GiB in a few bytes.
        for frame in [
            &[0xdb, 0xff, 0xff, 0xff, 0xff, b'a'][..],
            &[0xc6, 0xff, 0xff, 0xff, 0xff, 0],
            &[0xdd, 0xff, 0xff, 0xff, 0xff, 0],
            &[0xdf, 0xff, 0xff, 0xff, 0xff, 0],
        ] {
            assert_eq!(refused(frame).0, -32700);
        }
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        let mut deep = vec![0x91; 10_000];
        deep.push(0xc0);
        let (code, data) = refused(&deep);
        assert_eq!(code, -32700);
        assert!(data.unwrap().as_str().unwrap().contains("deeper than 128"));
        let mut ok = vec![0x91; 100];
        ok.push(0xc0);
        assert!(check_frame(&ok).is_ok());
    }

    #[test]
    fn reserved_bytes_and_trailing_bytes_are_parse_errors() {
        assert_eq!(refused(&[0xc1]).0, -32700);
        assert_eq!(refused(&[0x80, 0x80]).0, -32700);
    }

    #[test]
    fn non_map_messages_are_invalid_request() {
        assert_eq!(refused(&[0x05]).0, -32600);
        assert_eq!(refused(&[0x90]).1, Some(json!("Invalid array")));
    }

    #[test]
    fn wrong_member_types_get_the_contract_errors() {
        let frame = |method: &[u8], id: &[u8]| {
            let mut out = vec![0x82];
            write_str(&mut out, "method");
            out.extend_from_slice(method);
            write_str(&mut out, "id");
            out.extend_from_slice(id);
            out
        };
        assert_eq!(error_code(single(&frame(&[0x05], &[0x01]))), -32600);
        assert_eq!(error_code(single(&frame(&[0xa0], &[0x01]))), -32602);
        assert_eq!(
            error_code(single(&frame(&[0xa1, b'm'], &[0xc4, 0x00]))),
            -32600
        );
        let mut int_key = vec![0x81, 0x01];
        write_str(&mut int_key, "m");
        assert_eq!(error_code(single(&int_key)), -32600);
    }

    #[test]
    fn batches_hold_items_checked_one_by_one() {
        let good = hex("83a66d6574686f64a373756da6706172616d73920503a2696401");
        let mut frame = vec![0x92];
        frame.extend_from_slice(&good);
        frame.push(0x05);
        let Incoming::Batch(items) = decode_requests(&frame, 1000) else {
            panic!("expected a batch")
        };
        assert_eq!(items[0].as_ref().unwrap().method, "sum");
        assert!(items[1].is_err());
    }

    #[test]
    fn calls_and_server_messages_round_trip() {
        let frame = encode_call(Some(4), "sum", &json!([1, 2]));
        let decoded = to_json(&frame, true).unwrap();
        assert_eq!(
            decoded,
            json!({"jsonrpc": "2.0", "method": "sum", "params": [1, 2], "id": 4})
        );
        let reply = hex("82a6726573756c7408a2696401");
        assert_eq!(
            Codec::MsgPack.decode_server_message(&reply).unwrap(),
            vec![ServerMessage::Reply {
                id: Some(Id::from(1)),
                outcome: Ok(json!(8))
            }]
        );
    }

    #[test]
    fn lenient_conversion_keeps_what_json_cannot_carry() {
        let value = to_json(
            &[0x82, 0x01, 0xc4, 0x01, 0x07, 0xa1, b'e', 0xd4, 0x05, 0x09],
            false,
        );
        assert_eq!(
            value.unwrap(),
            json!({"1": [7], "e": {"type": 5, "data": [9]}})
        );
    }

    #[test]
    fn long_strings_and_containers_use_wide_headers() {
        let long = "x".repeat(300);
        let mut out = Vec::new();
        write_str(&mut out, &long);
        assert_eq!(&out[..3], &[0xda, 0x01, 0x2c]);
        let params = Value::Array(vec![Value::from(1); 20]);
        let frame = encode_event("e", &params);
        assert_eq!(to_json(&frame, true).unwrap()["params"], params);
    }

    #[test]
    fn a_batch_over_the_limit_is_refused_whole() {
        let call = hex("83a66d6574686f64a373756da6706172616d73920503a2696401");
        let mut frame = vec![0x93];
        for _ in 0..3 {
            frame.extend_from_slice(&call);
        }
        let Incoming::Refused(reply) = decode_requests(&frame, 2) else {
            panic!("expected a refusal")
        };
        assert_eq!(reply.outcome.unwrap_err().code, -32600);
        assert!(matches!(decode_requests(&frame, 3), Incoming::Batch(items) if items.len() == 3));
    }
}
