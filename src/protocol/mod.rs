//! The message model of the wire contract, free of I/O.
//!
//! A connection's bytes go in through [`Codec::decode_requests`] and come out as
//! [`Incoming`] calls; replies and events are encoded by the same [`Codec`]. Which
//! reply a call gets is decided in `server::calls`; this module only knows shapes.

pub(crate) mod json;

use std::borrow::Cow;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::error::{RpcError, codes};

/// How the messages of a connection are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Codec {
    /// JSON in text frames.
    Json,
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
}

impl Params<'_> {
    pub(crate) fn is_absent(&self) -> bool {
        matches!(self, Params::Absent)
    }

    /// Deserialize into the handler's type; absent params read as `null`, so `()`,
    /// `Option<T>` and `serde_json::Value` accept them.
    pub(crate) fn parse<T: DeserializeOwned>(&self) -> Result<T, RpcError> {
        let parsed = match self {
            Params::Absent => T::deserialize(Value::Null).map_err(|e| e.to_string()),
            Params::Json(raw) => serde_json::from_str(raw.get()).map_err(|e| e.to_string()),
        };
        parsed.map_err(|msg| RpcError::standard(codes::INVALID_PARAMS).with_data(msg))
    }
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
    /// Split a frame into calls, validating each per the contract.
    pub(crate) fn decode_requests(self, frame: &[u8]) -> Incoming<'_> {
        match self {
            Codec::Json => json::decode_requests(frame),
        }
    }

    /// Encode a handler's result value.
    pub(crate) fn encode_value<T: Serialize + ?Sized>(self, value: &T) -> Result<Encoded, String> {
        match self {
            Codec::Json => serde_json::to_vec(value)
                .map(Encoded)
                .map_err(|e| e.to_string()),
        }
    }

    /// Encode the replies of one frame: one reply as itself, a batch as an array.
    pub(crate) fn encode_replies(self, replies: &[Reply], batch: bool) -> Vec<u8> {
        match self {
            Codec::Json => json::encode_replies(replies, batch),
        }
    }

    /// Encode a server-pushed event.
    pub(crate) fn encode_event(self, name: &str, params: &Value) -> Vec<u8> {
        match self {
            Codec::Json => json::encode_event(name, params),
        }
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
}
