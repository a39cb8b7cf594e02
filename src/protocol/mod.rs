//! The message model of the wire contract, free of I/O.
//!
//! A connection's bytes go in through [`Codec::decode_requests`] and come out as
//! [`Incoming`] calls; replies and events are encoded by the same [`Codec`]. Which
//! reply a call gets is decided in `server::calls`; this module only knows shapes.

mod budget;
pub(crate) mod json;
pub(crate) mod msgpack;
mod msgpack_params;

use std::borrow::Cow;

use std::marker::PhantomData;

use serde::de::{DeserializeOwned, DeserializeSeed};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::error::{RpcError, codes};

/// How the messages of a connection are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Codec {
    /// JSON in text frames.
    Json,
    /// MessagePack maps with string keys, in binary frames.
    MsgPack,
}

/// A request id: a number or a string, echoed back as it came.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum Id {
    /// A numeric id (integers and floats alike; `0` is a valid id).
    Number(serde_json::Number),
    /// A string id (`""` is a valid id).
    Str(String),
}

impl From<u64> for Id {
    fn from(n: u64) -> Self {
        Id::Number(n.into())
    }
}

/// A call's params as they arrived, not yet typed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Params<'a> {
    /// No params (absent or `null`).
    Absent,
    /// JSON text of an array or an object.
    Json(&'a RawValue),
    /// A MessagePack array or map (already checked to be well formed). Unless `raw`,
    /// values JSON cannot carry are refused.
    MsgPack { bytes: &'a [u8], raw: bool },
}

impl<'a> Params<'a> {
    pub(crate) fn is_absent(&self) -> bool {
        matches!(self, Params::Absent)
    }

    /// The same params for a handler that accepts any MessagePack value.
    pub(crate) fn allowing_raw(self) -> Self {
        match self {
            Params::MsgPack { bytes, .. } => Params::MsgPack { bytes, raw: true },
            other => other,
        }
    }

    /// Deserialize into the handler's type; absent params read as `null`, so `()`,
    /// `Option<T>` and `serde_json::Value` accept them. An empty array or object
    /// (what JavaScript callers send for "no arguments") reads as itself when the type
    /// takes it (an empty `Vec`, a struct of optional fields), and as absent params
    /// otherwise: `()` and `Option<T>` accept `[]`, `{}`, `null` and no params alike.
    pub(crate) fn parse<T: DeserializeOwned>(&self) -> Result<T, RpcError> {
        match self.parse_seed(PhantomData::<T>) {
            Err(refused) if self.is_empty() => Params::Absent
                .parse_seed(PhantomData::<T>)
                .map_err(|_| refused),
            parsed => parsed,
        }
    }

    /// Whether the params are an empty array or an empty object.
    fn is_empty(&self) -> bool {
        match *self {
            Params::Absent => false,
            Params::Json(raw) => {
                let text = raw.get().trim();
                let inside = text
                    .strip_prefix('[')
                    .and_then(|t| t.strip_suffix(']'))
                    .or_else(|| text.strip_prefix('{').and_then(|t| t.strip_suffix('}')));
                inside.is_some_and(|inside| inside.trim().is_empty())
            }
            // fixarray or fixmap of length 0, or array/map 16 or 32 of length 0.
            Params::MsgPack { bytes, .. } => matches!(
                bytes,
                [0x90]
                    | [0x80]
                    | [0xdc, 0, 0]
                    | [0xde, 0, 0]
                    | [0xdd, 0, 0, 0, 0]
                    | [0xdf, 0, 0, 0, 0]
            ),
        }
    }

    /// [`Params::parse`] with a seed. Self-describing values (`serde_json::Value` and
    /// the like) are bounded by a [`budget::Budget`] proportional to the params' bytes.
    pub(crate) fn parse_seed<S: DeserializeSeed<'a>>(&self, seed: S) -> Result<S::Value, RpcError> {
        let parsed = match *self {
            Params::Absent => seed.deserialize(Value::Null).map_err(|e| e.to_string()),
            Params::Json(raw) => {
                let mut de = serde_json::Deserializer::from_str(raw.get());
                budget::deserialize(seed, &mut de, raw.get().len())
                    .and_then(|value| de.end().map(|()| value))
                    .map_err(|e| e.to_string())
            }
            Params::MsgPack { bytes, raw: true } => {
                let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
                de.set_max_depth(msgpack::MAX_DEPTH);
                budget::deserialize(seed, &mut de, bytes.len()).map_err(|e| e.to_string())
            }
            Params::MsgPack { bytes, raw: false } => msgpack_params::json_compatible(bytes)
                .map_err(cannot_carry)
                .and_then(|_| {
                    let mut de = msgpack_params::Reader::new(bytes);
                    budget::deserialize(seed, &mut de, bytes.len()).map_err(|e| e.to_string())
                }),
        };
        parsed.map_err(|msg| RpcError::standard(codes::INVALID_PARAMS).with_data(msg))
    }
}

/// Most event names one `rpc.on` or `rpc.off` may carry.
pub(crate) const MAX_EVENT_NAMES: usize = 1000;

/// How the refusal of more than [`MAX_EVENT_NAMES`] names begins.
pub(crate) const TOO_MANY_EVENT_NAMES: &str = "too many event names";
/// How the refusal of params past their budget of JSON values begins.
pub(crate) const OVER_VALUE_BUDGET: &str = "params too large to read as JSON values";

/// Whether `error` refused params for going past a decoding bound (too many event
/// names, or JSON values past their budget), for the server's counters.
pub(crate) fn past_a_decoding_bound(error: &RpcError) -> bool {
    error.code == codes::INVALID_PARAMS
        && error
            .data
            .as_ref()
            .and_then(Value::as_str)
            .is_some_and(|data| {
                data.starts_with(TOO_MANY_EVENT_NAMES) || data.starts_with(OVER_VALUE_BUDGET)
            })
}

/// The event names of an `rpc.on` or `rpc.off`: an array of strings, read one at a
/// time and refused as soon as there are more than [`MAX_EVENT_NAMES`], so a frame of
/// millions of short names is never held as millions of `String`s.
pub(crate) struct EventNames;

impl<'de> DeserializeSeed<'de> for EventNames {
    type Value = Vec<String>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Vec<String>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for EventNames {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        // As `Vec<String>` says it, so refusals read as they always did.
        f.write_str("a sequence")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut names = Vec::new();
        while let Some(name) = seq.next_element::<String>()? {
            if names.len() == MAX_EVENT_NAMES {
                return Err(serde::de::Error::custom(format_args!(
                    "{TOO_MANY_EVENT_NAMES}: at most {MAX_EVENT_NAMES} in one request"
                )));
            }
            names.push(name);
        }
        Ok(names)
    }
}

/// The refusal of MessagePack params holding `problem`.
fn cannot_carry(problem: &str) -> String {
    format!("params hold {problem}, which JSON cannot carry")
}

/// For the fuzz targets: MessagePack params read into a `Value` give what converting
/// them to JSON gave, or the budget's refusal.
#[cfg(fuzzing)]
pub(crate) fn check_typed_decoding(params: Params<'_>) {
    let direct = params.parse::<Value>();
    let Params::MsgPack { bytes, raw: false } = params else {
        return;
    };
    match (
        msgpack::to_json(bytes, true).map_err(|p| cannot_carry(&p)),
        direct,
    ) {
        (Ok(converted), Ok(direct)) => assert_eq!(converted, direct),
        (Err(converted), Err(direct)) => assert_eq!(Some(Value::from(converted)), direct.data),
        (Ok(_), Err(direct)) => assert!(format!("{direct:?}").contains("params too large")),
        (Err(converted), Ok(direct)) => panic!("{converted}, yet read as {direct}"),
    }
}

/// One member of a request object as its codec holds it, not yet interpreted.
pub(crate) trait Member<'a>: Copy {
    /// The value as an id: `None` unless it is a number or a string.
    fn id(self) -> Option<Id>;
    /// The value of a string, `None` for anything else.
    fn string(self) -> Option<Cow<'a, str>>;
    /// JavaScript's `!value` (`false`, `0`, `""`).
    fn is_falsy(self) -> bool;
    /// The value as params: `None` unless it is an array or an object.
    fn params(self) -> Option<Params<'a>>;
}

/// The members of a request object a codec found (`null` counts as absent).
pub(crate) struct Members<M> {
    pub jsonrpc: Option<M>,
    pub method: Option<M>,
    pub params: Option<M>,
    pub id: Option<M>,
}

/// The checks of rpc-websockets' `_runMethod`, in its order, with the contract's
/// fixes; the same for every codec. MessagePack may leave out `jsonrpc`.
pub(crate) fn validate<'a, M: Member<'a>>(members: Members<M>, version_required: bool) -> Item<'a> {
    let id = match members.id {
        None => None,
        Some(value) => match value.id() {
            Some(id) => Some(id),
            None => return Err(invalid_request(None, Some("Invalid id"))),
        },
    };
    match members.jsonrpc.map(Member::string) {
        Some(Some(version)) if version == "2.0" => {}
        None if !version_required => {}
        _ => return Err(invalid_request(id, Some("Invalid JSON RPC version"))),
    }
    let method = match members.method {
        Some(value) if !value.is_falsy() => match value.string() {
            Some(method) => method,
            None => return Err(invalid_request(id, Some("Invalid method name"))),
        },
        _ => {
            let error = RpcError::standard(codes::INVALID_PARAMS).with_data("Method not specified");
            return Err(Reply::error(id, error));
        }
    };
    let params = match members.params {
        None => Params::Absent,
        Some(value) => match value.params() {
            Some(params) => params,
            None => return Err(invalid_request(id, None)),
        },
    };
    Ok(Call { id, method, params })
}

/// `-32600 Invalid Request`, with `data` when given.
pub(crate) fn invalid_request(id: Option<Id>, data: Option<&str>) -> Reply {
    let mut error = RpcError::standard(codes::INVALID_REQUEST);
    if let Some(data) = data {
        error = error.with_data(data);
    }
    Reply::error(id, error)
}

/// The refusal of a batch larger than `max`.
pub(crate) fn batch_too_large(max: usize) -> Reply {
    crate::log_limit::warn_limited!("refused a batch of more than max_batch_size ({max}) requests");
    invalid_request(
        None,
        Some(&format!("Batch too large: at most {max} requests")),
    )
}

/// `-32700 Parse error` with the decoder's message.
pub(crate) fn parse_error(message: impl std::fmt::Display) -> Reply {
    let error = RpcError::standard(codes::PARSE_ERROR).with_data(message.to_string());
    Reply::error(None, error)
}

/// One well-formed call from a client.
#[derive(Debug)]
pub(crate) struct Call<'a> {
    /// `None` for a notification: the handler runs, nothing is sent back.
    pub id: Option<Id>,
    pub method: Cow<'a, str>,
    pub params: Params<'a>,
}

/// One message of a frame: a call, or the error reply it earned before dispatch.
pub(crate) type Item<'a> = Result<Call<'a>, Reply>;

/// What one incoming frame holds.
#[derive(Debug)]
pub(crate) enum Incoming<'a> {
    /// A single message.
    Single(Item<'a>),
    /// A batch: items run in order, the replies go back in one array.
    Batch(Vec<Item<'a>>),
    /// The frame as a whole is refused (parse error, empty batch, not an object).
    Refused(Reply),
}

/// A reply to one call.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reply {
    /// `None` is sent as `null`.
    pub id: Option<Id>,
    pub outcome: Result<Encoded, RpcError>,
}

/// A value already encoded by the connection's codec, to be spliced into a frame.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Encoded(pub Vec<u8>);

impl Reply {
    pub(crate) fn error(id: Option<Id>, error: RpcError) -> Self {
        Reply {
            id,
            outcome: Err(error),
        }
    }
}

impl Codec {
    /// The codec of a frame: text is JSON; binary is MessagePack unless its first
    /// non-space byte is `{` or `[` (JSON in a binary frame, as the Node server allows).
    pub(crate) fn of_frame(binary: bool, payload: &[u8]) -> Codec {
        if binary && !json::looks_like_json(payload) {
            Codec::MsgPack
        } else {
            Codec::Json
        }
    }

    /// A small index, for tables with one entry per codec.
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(crate) const ALL: [Codec; 2] = [Codec::Json, Codec::MsgPack];

    /// The codec a client asked for by name (`encoding=` or a subprotocol).
    pub(crate) fn named(name: &str) -> Option<Codec> {
        match name.trim() {
            "json" => Some(Codec::Json),
            "msgpack" => Some(Codec::MsgPack),
            _ => None,
        }
    }

    /// Whether this codec's frames are binary.
    pub(crate) fn is_binary(self) -> bool {
        self == Codec::MsgPack
    }

    /// Split a frame into calls, validating each per the contract. A batch of more
    /// than `max_batch` requests is refused as a whole, before its items are listed.
    pub(crate) fn decode_requests(self, frame: &[u8], max_batch: usize) -> Incoming<'_> {
        match self {
            Codec::Json => json::decode_requests(frame, max_batch),
            Codec::MsgPack => msgpack::decode_requests(frame, max_batch),
        }
    }

    /// Encode a handler's result value.
    pub(crate) fn encode_value<T: Serialize + ?Sized>(self, value: &T) -> Result<Encoded, String> {
        let encoded = match self {
            Codec::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
            // Through JSON's value model, so a result means the same in both codecs:
            // rmp-serde alone writes a unit struct as `[]` and a u128 as binary.
            Codec::MsgPack => serde_json::to_value(value)
                .map_err(|e| e.to_string())
                .and_then(|v| rmp_serde::to_vec_named(&v).map_err(|e| e.to_string())),
        };
        encoded.map(Encoded)
    }

    /// Encode the replies of one frame: one reply as itself, a batch as an array.
    pub(crate) fn encode_replies(self, replies: &[Reply], batch: bool) -> Vec<u8> {
        match self {
            Codec::Json => json::encode_replies(replies, batch),
            Codec::MsgPack => msgpack::encode_replies(replies, batch),
        }
    }

    /// Encode a server-pushed event.
    pub(crate) fn encode_event(self, name: &str, params: &Value) -> Vec<u8> {
        match self {
            Codec::Json => json::encode_event(name, params),
            Codec::MsgPack => msgpack::encode_event(name, params),
        }
    }

    /// Encode a call (with an id) or a notification as a client sends it.
    pub(crate) fn encode_call(self, id: Option<u64>, method: &str, params: &Value) -> Vec<u8> {
        match self {
            Codec::Json => json::encode_call(id, method, params),
            Codec::MsgPack => msgpack::encode_call(id, method, params),
        }
    }

    /// Read what a server sent.
    pub(crate) fn decode_server_message(self, frame: &[u8]) -> Result<Vec<ServerMessage>, String> {
        let value = match self {
            Codec::Json => serde_json::from_slice(frame).map_err(|e| e.to_string())?,
            Codec::MsgPack => msgpack::to_json(frame, false)?,
        };
        Ok(server_messages(value))
    }
}

/// The `params` an event carries: arrays and objects as they are, anything else
/// wrapped in an array, and nothing (`null`) as `[]`.
pub(crate) fn event_params(value: Value) -> Value {
    match value {
        Value::Array(_) | Value::Object(_) => value,
        Value::Null => Value::Array(Vec::new()),
        other => Value::Array(vec![other]),
    }
}

/// What a client receives from a server.
#[derive(Debug, PartialEq)]
pub(crate) enum ServerMessage {
    /// The reply to the call with this id.
    Reply {
        id: Option<Id>,
        outcome: Result<Value, RpcError>,
    },
    /// A pushed event.
    Event { name: String, params: Value },
}

/// Replies (single or batched) and events in a decoded frame. Messages of no known
/// shape are skipped, as the JavaScript client does.
fn server_messages(value: Value) -> Vec<ServerMessage> {
    let items = match value {
        Value::Array(items) => items,
        single => vec![single],
    };
    items.into_iter().filter_map(server_message).collect()
}

fn server_message(value: Value) -> Option<ServerMessage> {
    let Value::Object(mut obj) = value else {
        return None;
    };
    if let Some(Value::String(name)) = obj.remove("notification") {
        let params = obj.remove("params").unwrap_or(Value::Array(Vec::new()));
        return Some(ServerMessage::Event { name, params });
    }
    let id = match obj.remove("id") {
        Some(Value::Null) | None => None,
        Some(raw) => Some(serde_json::from_value::<Id>(raw).ok()?),
    };
    if let Some(error) = obj.remove("error") {
        let error = serde_json::from_value::<RpcError>(error).unwrap_or_else(|e| {
            RpcError::new(codes::INTERNAL_ERROR, "Malformed error").with_data(e.to_string())
        });
        return Some(ServerMessage::Reply {
            id,
            outcome: Err(error),
        });
    }
    if let Some(result) = obj.remove("result") {
        return Some(ServerMessage::Reply {
            id,
            outcome: Ok(result),
        });
    }
    // A JSON-RPC notification pushed by the server ({"method", "params"} without id).
    match (id, obj.remove("method")) {
        (None, Some(Value::String(name))) => {
            let params = obj.remove("params").unwrap_or(Value::Array(Vec::new()));
            Some(ServerMessage::Event { name, params })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_params_wrap_scalars_and_keep_containers() {
        assert_eq!(event_params(json!(5)), json!([5]));
        assert_eq!(event_params(json!("x")), json!(["x"]));
        assert_eq!(event_params(Value::Null), json!([]));
        assert_eq!(event_params(json!([1, 2])), json!([1, 2]));
        assert_eq!(event_params(json!({"a": 1})), json!({"a": 1}));
    }

    #[test]
    fn absent_params_read_as_null() {
        let unit: () = Params::Absent.parse().unwrap();
        assert_eq!(unit, ());
        let opt: Option<Vec<i32>> = Params::Absent.parse().unwrap();
        assert_eq!(opt, None);
        let err = Params::Absent.parse::<(i32, i32)>().unwrap_err();
        assert_eq!((err.code, err.message.as_str()), (-32602, "Invalid params"));
    }

    #[derive(serde::Deserialize, Debug, PartialEq, Default)]
    struct Optional {
        #[serde(default)]
        limit: Option<u32>,
    }

    /// Each empty container as JSON text and in MessagePack (short and long forms).
    fn empties() -> Vec<(String, Vec<u8>)> {
        let texts = ["[]", "{}", " [ ] ", "{\n}"];
        let packs: [&[u8]; 6] = [
            &[0x90],
            &[0x80],
            &[0xdc, 0, 0],
            &[0xde, 0, 0],
            &[0xdd, 0, 0, 0, 0],
            &[0xdf, 0, 0, 0, 0],
        ];
        texts
            .iter()
            .map(|t| t.to_string())
            .zip(packs.iter().map(|p| p.to_vec()))
            .chain(packs[4..].iter().map(|p| ("[]".to_string(), p.to_vec())))
            .collect()
    }

    fn both<T: DeserializeOwned>(text: &str, pack: &[u8]) -> [Result<T, RpcError>; 2] {
        let raw = RawValue::from_string(text.to_owned()).unwrap();
        let params = Params::MsgPack {
            bytes: pack,
            raw: false,
        };
        [Params::Json(&raw).parse(), params.parse()]
    }

    #[test]
    fn empty_array_and_object_params_mean_none_to_unit_and_option() {
        for (text, pack) in empties() {
            for unit in both::<()>(&text, &pack) {
                assert_eq!(unit.unwrap(), (), "{text} / {pack:02x?} into ()");
            }
            for none in both::<Option<(i32, i32)>>(&text, &pack) {
                assert_eq!(none.unwrap(), None, "{text} / {pack:02x?} into Option");
            }
        }
        // A type that takes the empty container takes it as it is.
        let [json, pack] = both::<Vec<i32>>("[]", &[0x90]);
        assert_eq!((json.unwrap(), pack.unwrap()), (vec![], vec![]));
        let [json, pack] = both::<Optional>("{}", &[0x80]);
        assert_eq!(
            (json.unwrap(), pack.unwrap()),
            (Optional::default(), Optional::default())
        );
        let [json, pack] = both::<Option<Vec<i32>>>("[]", &[0x90]);
        assert_eq!((json.unwrap(), pack.unwrap()), (Some(vec![]), Some(vec![])));
        // Types that need arguments still refuse them, with what the container said.
        for refused in both::<(i32, i32)>("[]", &[0x90]) {
            let err = refused.unwrap_err();
            assert_eq!(err.code, -32602);
            assert!(
                err.data
                    .as_ref()
                    .is_some_and(|d| d.to_string().contains("length 0")),
                "{:?}",
                err.data
            );
        }
        // Non-empty params are not read as none.
        assert!(both::<()>("[1]", &[0x91, 1]).iter().all(Result::is_err));
    }
}

#[cfg(test)]
mod depth_tests {
    use super::*;

    /// Params nested as deep as the codecs allow decode into a `Value` on a connection
    /// thread's default stack (512 KiB), in a debug build, through the budget's wrapper.
    #[test]
    fn deepest_params_fit_a_connection_threads_stack() {
        let depth = msgpack::MAX_DEPTH - 1;
        let text = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let mut bytes = vec![0x91; depth - 1];
        bytes.push(0x90);
        let worker = std::thread::Builder::new()
            .stack_size(512 << 10)
            .spawn(move || {
                let raw = RawValue::from_string(text).unwrap();
                let from_json: Value = Params::Json(&raw).parse().unwrap();
                let params = Params::MsgPack {
                    bytes: &bytes,
                    raw: false,
                };
                let from_msgpack: Value = params.parse().unwrap();
                assert_eq!(from_json, from_msgpack);
                let raw_values: Value = params.allowing_raw().parse().unwrap();
                assert_eq!(raw_values, from_msgpack);
            })
            .unwrap();
        worker.join().unwrap();
    }
}
