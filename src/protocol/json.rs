//! The JSON dialect: requests in, replies and events out, exactly as PROTOCOL.md shows.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use super::{
    Id, Incoming, Item, Member, Members, Params, Reply, batch_too_large, invalid_request,
    parse_error, validate,
};

/// The members of a request object, each kept as raw JSON so it is checked once and
/// params are parsed straight into the handler's type later. A repeated member keeps
/// its last value, as JavaScript's `JSON.parse` (and the MessagePack dialect) do.
#[derive(Default)]
struct Envelope<'a> {
    jsonrpc: Option<&'a RawValue>,
    method: Option<&'a RawValue>,
    params: Option<&'a RawValue>,
    id: Option<&'a RawValue>,
}

/// A member name of a request object.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Field {
    Jsonrpc,
    Method,
    Params,
    Id,
    #[serde(other)]
    Other,
}

impl<'de> Deserialize<'de> for Envelope<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(EnvelopeVisitor)
    }
}

struct EnvelopeVisitor;

impl<'de> Visitor<'de> for EnvelopeVisitor {
    type Value = Envelope<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a request object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut envelope = Envelope::default();
        while let Some(field) = map.next_key::<Field>()? {
            let slot = match field {
                Field::Jsonrpc => &mut envelope.jsonrpc,
                Field::Method => &mut envelope.method,
                Field::Params => &mut envelope.params,
                Field::Id => &mut envelope.id,
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            // `null` reads as absent, as before a member was repeated.
            *slot = map.next_value::<Option<&RawValue>>()?;
        }
        Ok(envelope)
    }
}

fn first_byte(bytes: &[u8]) -> Option<u8> {
    bytes.iter().copied().find(|b| !b.is_ascii_whitespace())
}

/// Whether a binary frame holds JSON rather than MessagePack.
pub(crate) fn looks_like_json(bytes: &[u8]) -> bool {
    matches!(first_byte(bytes), Some(b'{') | Some(b'['))
}

/// A batch's items as raw JSON, or `None` past `max` items (the rest is only
/// checked for syntax, not kept).
struct Batch(usize);

impl<'de> DeserializeSeed<'de> for Batch {
    type Value = Option<Vec<&'de RawValue>>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Batch {
    type Value = Option<Vec<&'de RawValue>>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of requests")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<&RawValue>()? {
            if items.len() == self.0 {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                return Ok(None);
            }
            items.push(item);
        }
        Ok(Some(items))
    }
}

fn batch(frame: &[u8], max: usize) -> Result<Option<Vec<&RawValue>>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(frame);
    let items = Batch(max).deserialize(&mut de)?;
    de.end()?;
    Ok(items)
}

pub(crate) fn decode_requests(frame: &[u8], max_batch: usize) -> Incoming<'_> {
    match first_byte(frame) {
        Some(b'{') => match serde_json::from_slice::<Envelope>(frame) {
            Ok(envelope) => Incoming::Single(validate_envelope(envelope)),
            Err(e) if e.is_data() => Incoming::Refused(invalid_request(None, Some(&e.to_string()))),
            Err(e) => Incoming::Refused(parse_error(e)),
        },
        Some(b'[') => match batch(frame, max_batch) {
            Ok(Some(items)) if items.is_empty() => {
                Incoming::Refused(invalid_request(None, Some("Invalid array")))
            }
            Ok(Some(items)) => Incoming::Batch(items.into_iter().map(decode_item).collect()),
            Ok(None) => Incoming::Refused(batch_too_large(max_batch)),
            Err(e) => Incoming::Refused(parse_error(e)),
        },
        _ => match serde_json::from_slice::<IgnoredAny>(frame) {
            Ok(_) => Incoming::Refused(invalid_request(None, None)),
            Err(e) => Incoming::Refused(parse_error(e)),
        },
    }
}

/// One member of a batch: it must be an object like any single request.
fn decode_item(raw: &RawValue) -> Item<'_> {
    if first_byte(raw.get().as_bytes()) != Some(b'{') {
        return Err(invalid_request(None, None));
    }
    match serde_json::from_str::<Envelope>(raw.get()) {
        Ok(envelope) => validate_envelope(envelope),
        Err(e) => Err(invalid_request(None, Some(&e.to_string()))),
    }
}

impl<'a> Member<'a> for &'a RawValue {
    fn id(self) -> Option<Id> {
        // Read off the raw text: serde's untagged-enum path buffers every id first.
        match self.get().as_bytes().first()? {
            b'"' => self.string().map(|s| Id::Str(s.into_owned())),
            b'-' | b'0'..=b'9' => serde_json::from_str(self.get()).ok().map(Id::Number),
            _ => None,
        }
    }

    fn string(self) -> Option<Cow<'a, str>> {
        serde_json::from_str::<&str>(self.get())
            .map(Cow::Borrowed)
            .or_else(|_| serde_json::from_str::<String>(self.get()).map(Cow::Owned))
            .ok()
    }

    fn is_falsy(self) -> bool {
        // Read off the raw text: this runs for every call's method name.
        match self.get() {
            "false" | "\"\"" => true,
            number
                if number.starts_with(['-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9']) =>
            {
                number.parse::<f64>().is_ok_and(|x| x == 0.0)
            }
            _ => false,
        }
    }

    fn params(self) -> Option<Params<'a>> {
        matches!(first_byte(self.get().as_bytes()), Some(b'[') | Some(b'{'))
            .then_some(Params::Json(self))
    }
}

fn validate_envelope(envelope: Envelope<'_>) -> Item<'_> {
    let members = Members {
        jsonrpc: envelope.jsonrpc,
        method: envelope.method,
        params: envelope.params,
        id: envelope.id,
    };
    validate(members, true)
}

pub(crate) fn encode_replies(replies: &[Reply], batch: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    if batch {
        out.push(b'[');
        for (i, reply) in replies.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_reply(&mut out, reply);
        }
        out.push(b']');
    } else if let Some(reply) = replies.first() {
        write_reply(&mut out, reply);
    }
    out
}

fn write_reply(out: &mut Vec<u8>, reply: &Reply) {
    out.extend_from_slice(br#"{"jsonrpc":"2.0","#);
    match &reply.outcome {
        Ok(result) => {
            out.extend_from_slice(br#""result":"#);
            out.extend_from_slice(&result.0);
        }
        Err(error) => {
            out.extend_from_slice(br#""error":"#);
            write_json(out, error);
        }
    }
    out.extend_from_slice(br#","id":"#);
    match &reply.id {
        Some(id) => write_json(out, id),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
}

/// Serializing these types to a Vec cannot fail: they are plain data with string keys.
fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(out, value).expect("plain data serializes");
}

pub(crate) fn encode_event(name: &str, params: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + name.len());
    out.extend_from_slice(br#"{"notification":"#);
    write_json(&mut out, name);
    out.extend_from_slice(br#","params":"#);
    write_json(&mut out, params);
    out.push(b'}');
    out
}

/// A call or notification as a client sends it; `null` params are left out.
pub(crate) fn encode_call(id: Option<u64>, method: &str, params: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + method.len());
    out.extend_from_slice(br#"{"jsonrpc":"2.0","method":"#);
    write_json(&mut out, method);
    if !params.is_null() {
        out.extend_from_slice(br#","params":"#);
        write_json(&mut out, params);
    }
    if let Some(id) = id {
        out.extend_from_slice(br#","id":"#);
        out.extend_from_slice(id.to_string().as_bytes());
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{RpcError, codes};
    use crate::protocol::{Codec, Encoded, ServerMessage};
    use serde_json::json;

    fn single(frame: &str) -> Item<'_> {
        match decode_requests(frame.as_bytes(), 1000) {
            Incoming::Single(item) => item,
            other => panic!("expected a single message, got {other:?}"),
        }
    }

    fn refused(frame: &str) -> Reply {
        match decode_requests(frame.as_bytes(), 1000) {
            Incoming::Refused(reply) => reply,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn error_of(item: Item<'_>) -> (Option<Id>, i64, Option<Value>) {
        let reply = item.expect_err("expected an error reply");
        let error = reply.outcome.expect_err("expected an error");
        (reply.id, error.code, error.data)
    }

    fn encoded(reply: &Reply) -> Value {
        serde_json::from_slice(&encode_replies(std::slice::from_ref(reply), false)).unwrap()
    }

    #[test]
    fn contract_call_frame_decodes() {
        let call = single(r#"{"jsonrpc":"2.0","method":"sum","params":[5,3],"id":1}"#).unwrap();
        assert_eq!(call.id, Some(Id::from(1)));
        assert_eq!(call.method, "sum");
        assert_eq!(call.params.parse::<Vec<i32>>().unwrap(), vec![5, 3]);
    }

    #[test]
    fn ids_zero_and_empty_string_are_ids_not_notifications() {
        let call = single(r#"{"jsonrpc":"2.0","method":"m","id":0}"#).unwrap();
        assert_eq!(call.id, Some(Id::from(0)));
        let call = single(r#"{"jsonrpc":"2.0","method":"m","id":""}"#).unwrap();
        assert_eq!(call.id, Some(Id::Str(String::new())));
        let call = single(r#"{"jsonrpc":"2.0","method":"m","id":null}"#).unwrap();
        assert_eq!(call.id, None);
    }

    #[test]
    fn object_and_absent_and_null_params() {
        let call = single(r#"{"jsonrpc":"2.0","method":"m","params":{"a":1},"id":1}"#).unwrap();
        assert_eq!(call.params.parse::<Value>().unwrap(), json!({"a": 1}));
        let call = single(r#"{"jsonrpc":"2.0","method":"m","params":null,"id":1}"#).unwrap();
        assert!(call.params.is_absent());
        let call = single(r#"{"jsonrpc":"2.0","method":"m","id":1}"#).unwrap();
        assert!(call.params.is_absent());
    }

    #[test]
    fn a_repeated_member_keeps_its_last_value_as_in_javascript() {
        let call = single(
            r#"{"jsonrpc":"2.0","method":"a","params":[1],"method":"sum","params":[2,3],"id":1,"id":7}"#,
        )
        .unwrap();
        assert_eq!((call.method.as_ref(), call.id), ("sum", Some(Id::from(7))));
        assert_eq!(call.params.parse::<Vec<i32>>().unwrap(), vec![2, 3]);
        // A member name written with escapes is the same member; unknown ones are skipped.
        let call =
            single(r#"{"jsonrpc":"2.0","method":"a","m\u0065thod":"b","x":{"y":[]},"id":1}"#)
                .unwrap();
        assert_eq!(call.method, "b");
        // A later null makes it absent again: a notification.
        let call = single(r#"{"jsonrpc":"2.0","method":"m","id":1,"id":null}"#).unwrap();
        assert_eq!(call.id, None);
    }

    #[test]
    fn escaped_method_names_are_read() {
        let call = single(r#"{"jsonrpc":"2.0","method":"s\u0075m","id":1}"#).unwrap();
        assert_eq!(call.method, "sum");
    }

    #[test]
    fn parse_error_has_null_id_and_parser_message() {
        let reply = refused(r#"{"jsonrpc":"2.0","method":"#);
        let v = encoded(&reply);
        assert_eq!(v["error"]["code"], -32700);
        assert_eq!(v["error"]["message"], "Parse error");
        assert!(v["error"]["data"].is_string());
        assert_eq!(v["id"], Value::Null);
        assert_eq!(refused("nope").outcome.unwrap_err().code, -32700);
    }

    #[test]
    fn non_object_is_invalid_request() {
        for frame in ["42", "\"x\"", "true", "null"] {
            let error = refused(frame).outcome.unwrap_err();
            assert_eq!((error.code, error.data), (-32600, None), "{frame}");
        }
    }

    #[test]
    fn empty_batch_is_invalid_array() {
        let error = refused("[]").outcome.unwrap_err();
        assert_eq!(error.code, -32600);
        assert_eq!(error.data, Some(json!("Invalid array")));
    }

    #[test]
    fn wrong_version_is_invalid_request_keeping_the_id() {
        let (id, code, data) = error_of(single(r#"{"jsonrpc":"1.0","method":"m","id":7}"#));
        assert_eq!((id, code), (Some(Id::from(7)), -32600));
        assert_eq!(data, Some(json!("Invalid JSON RPC version")));
        let (_, code, _) = error_of(single(r#"{"method":"m","id":7}"#));
        assert_eq!(code, -32600);
    }

    #[test]
    fn missing_or_empty_method_is_method_not_specified() {
        for frame in [
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#"{"jsonrpc":"2.0","method":"","id":1}"#,
            r#"{"jsonrpc":"2.0","method":null,"id":1}"#,
            r#"{"jsonrpc":"2.0","method":false,"id":1}"#,
            r#"{"jsonrpc":"2.0","method":0,"id":1}"#,
            r#"{"jsonrpc":"2.0","method":-0.0,"id":1}"#,
        ] {
            let (_, code, data) = error_of(single(frame));
            assert_eq!(code, -32602, "{frame}");
            assert_eq!(data, Some(json!("Method not specified")));
        }
    }

    #[test]
    fn non_string_method_is_invalid_method_name() {
        for method in ["5", "true", "[]", "{}", "0.5"] {
            let frame = format!(r#"{{"jsonrpc":"2.0","method":{method},"id":1}}"#);
            let (_, code, data) = error_of(single(&frame));
            assert_eq!(code, -32600, "{method}");
            assert_eq!(data, Some(json!("Invalid method name")));
        }
    }

    #[test]
    fn scalar_params_are_invalid_request() {
        for params in ["\"s\"", "5", "true"] {
            let frame = format!(r#"{{"jsonrpc":"2.0","method":"m","params":{params},"id":1}}"#);
            let (id, code, data) = error_of(single(&frame));
            assert_eq!((id, code, data), (Some(Id::from(1)), -32600, None));
        }
    }

    #[test]
    fn invalid_id_type_is_invalid_request_with_null_id() {
        let (id, code, _) = error_of(single(r#"{"jsonrpc":"2.0","method":"m","id":[1]}"#));
        assert_eq!((id, code), (None, -32600));
    }

    #[test]
    fn batch_items_are_checked_one_by_one() {
        let frame = r#"[{"jsonrpc":"2.0","method":"a","id":1}, 5, {"jsonrpc":"2.0","method":"b"}]"#;
        let Incoming::Batch(items) = decode_requests(frame.as_bytes(), 1000) else {
            panic!("expected a batch")
        };
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].as_ref().unwrap().method, "a");
        assert_eq!(
            items[1]
                .as_ref()
                .unwrap_err()
                .outcome
                .as_ref()
                .unwrap_err()
                .code,
            -32600
        );
        assert_eq!(items[2].as_ref().unwrap().id, None);
    }

    #[test]
    fn contract_result_and_error_frames_encode_exactly() {
        let ok = Reply {
            id: Some(Id::from(1)),
            outcome: Ok(Codec::Json.encode_value(&8).unwrap()),
        };
        let out = encode_replies(std::slice::from_ref(&ok), false);
        assert_eq!(out, br#"{"jsonrpc":"2.0","result":8,"id":1}"#);
        let err = Reply::error(
            Some(Id::from(1)),
            RpcError::standard(codes::METHOD_NOT_FOUND),
        );
        let out = encode_replies(std::slice::from_ref(&err), false);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},"id":1}"#
        );
        let none = Reply {
            id: Some(Id::Str("a".into())),
            outcome: Ok(Encoded(b"null".to_vec())),
        };
        let out = encode_replies(&[ok, none], true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"[{"jsonrpc":"2.0","result":8,"id":1},{"jsonrpc":"2.0","result":null,"id":"a"}]"#
        );
    }

    #[test]
    fn contract_event_frame_encodes_exactly() {
        let out = encode_event("feed", &json!({"price": 42}));
        assert_eq!(out, br#"{"notification":"feed","params":{"price":42}}"#);
    }

    #[test]
    fn calls_encode_without_null_params() {
        assert_eq!(
            encode_call(Some(3), "sum", &json!([5, 3])),
            br#"{"jsonrpc":"2.0","method":"sum","params":[5,3],"id":3}"#
        );
        assert_eq!(
            encode_call(None, "ping", &Value::Null),
            br#"{"jsonrpc":"2.0","method":"ping"}"#
        );
    }

    #[test]
    fn server_messages_decode() {
        let msgs = Codec::Json
            .decode_server_message(br#"{"jsonrpc":"2.0","result":8,"id":1}"#)
            .unwrap();
        assert_eq!(
            msgs,
            vec![ServerMessage::Reply {
                id: Some(Id::from(1)),
                outcome: Ok(json!(8))
            }]
        );
        let msgs = Codec::Json.decode_server_message(
            br#"{"jsonrpc":"2.0","error":{"code":-32050,"message":"Server error","data":"d"},"id":2}"#,
        )
        .unwrap();
        let ServerMessage::Reply {
            outcome: Err(e), ..
        } = &msgs[0]
        else {
            panic!("expected an error reply")
        };
        assert_eq!((e.code, e.data.clone()), (-32050, Some(json!("d"))));
        let msgs = Codec::Json
            .decode_server_message(br#"{"notification":"feed","params":[1]}"#)
            .unwrap();
        assert_eq!(
            msgs,
            vec![ServerMessage::Event {
                name: "feed".into(),
                params: json!([1])
            }]
        );
        assert!(Codec::Json.decode_server_message(b"{").is_err());
    }

    #[test]
    fn a_batch_over_the_limit_is_refused_whole() {
        let call = r#"{"jsonrpc":"2.0","method":"m","id":1}"#;
        let frame = format!("[{call},{call},{call}]");
        let Incoming::Refused(reply) = decode_requests(frame.as_bytes(), 2) else {
            panic!("expected a refusal")
        };
        let error = reply.outcome.unwrap_err();
        assert_eq!(error.code, -32600);
        assert_eq!(
            error.data,
            Some(json!("Batch too large: at most 2 requests"))
        );
        assert!(
            matches!(decode_requests(frame.as_bytes(), 3), Incoming::Batch(items) if items.len() == 3)
        );
        // Past the limit the rest is still checked for syntax.
        let broken = format!("[{call},{call},{call},");
        let Incoming::Refused(reply) = decode_requests(broken.as_bytes(), 2) else {
            panic!("expected a refusal")
        };
        assert_eq!(reply.outcome.unwrap_err().code, -32700);
    }
}
