//! Typed values: the `(typename, bytes)` pairs every message and state cell carries, and
//! the Rust types that encode to them exactly as the official StateFun SDKs do.

use serde::{Deserialize, Serialize};

use crate::builtin;
use crate::typename::TypeName;

/// A value as it travels and rests: a type name and its serialized bytes. `value: None`
/// is the protocol's `has_value = false`; `Some(vec![])` is a present value that encodes
/// to no bytes (0, "", false for the built-in types).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypedValue {
    pub typename: TypeName,
    pub value: Option<Vec<u8>>,
}

impl std::fmt::Debug for TypedValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}({} bytes)", self.typename, v.len()),
            None => write!(f, "{}(absent)", self.typename),
        }
    }
}

/// A value whose bytes could not be read as the type it claims, or a value of another type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("expected a value of type {expected}, got {actual}")]
    WrongType {
        expected: TypeName,
        actual: TypeName,
    },
    #[error("a value of type {0} has no bytes (has_value = false)")]
    Absent(TypeName),
    #[error("malformed {typename} value: {reason}")]
    Malformed { typename: TypeName, reason: String },
}

impl TypedValue {
    /// Encodes a Rust value.
    pub fn of<T: ValueType>(value: &T) -> Self {
        TypedValue {
            typename: T::typename(),
            value: Some(value.encode()),
        }
    }

    /// Raw bytes under a type name.
    pub fn from_bytes(typename: TypeName, bytes: Vec<u8>) -> Self {
        TypedValue {
            typename,
            value: Some(bytes),
        }
    }

    /// Decodes into a Rust value, checking the type name first.
    pub fn decode<T: ValueType>(&self) -> Result<T, DecodeError> {
        let expected = T::typename();
        if self.typename != expected {
            return Err(DecodeError::WrongType {
                expected,
                actual: self.typename.clone(),
            });
        }
        match &self.value {
            Some(bytes) => T::decode(bytes),
            None => Err(DecodeError::Absent(expected)),
        }
    }

    /// Whether the value is of type `T`.
    pub fn is<T: ValueType>(&self) -> bool {
        self.typename == T::typename()
    }

    /// Size in bytes of the payload plus the type name, for limits.
    pub fn size(&self) -> usize {
        self.typename.as_str().len() + self.value.as_ref().map_or(0, Vec::len)
    }
}

/// A Rust type with a StateFun type name and a byte encoding. Implemented for the
/// built-in types (`i32` ⇒ `io.statefun.types/int`, `i64` ⇒ `long`, `f32` ⇒ `float`,
/// `f64` ⇒ `double`, `bool`, `String` ⇒ `string`); use [`json_type!`](crate::json_type)
/// for serde JSON types, or implement it by hand for custom encodings.
pub trait ValueType: Sized {
    fn typename() -> TypeName;
    fn encode(&self) -> Vec<u8>;
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError>;
}

macro_rules! builtin_value_type {
    ($t:ty, $tn:expr, $enc:path, $dec:path) => {
        impl ValueType for $t {
            fn typename() -> TypeName {
                $tn
            }
            fn encode(&self) -> Vec<u8> {
                $enc(self)
            }
            fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
                $dec(bytes).map_err(|reason| DecodeError::Malformed {
                    typename: $tn,
                    reason,
                })
            }
        }
    };
}

builtin_value_type!(i32, builtin::INT, builtin::encode_int, builtin::decode_int);
builtin_value_type!(
    i64,
    builtin::LONG,
    builtin::encode_long,
    builtin::decode_long
);
builtin_value_type!(
    f32,
    builtin::FLOAT,
    builtin::encode_float,
    builtin::decode_float
);
builtin_value_type!(
    f64,
    builtin::DOUBLE,
    builtin::encode_double,
    builtin::decode_double
);
builtin_value_type!(
    bool,
    builtin::BOOL,
    builtin::encode_bool,
    builtin::decode_bool
);
builtin_value_type!(
    String,
    builtin::STRING,
    builtin::encode_string,
    builtin::decode_string
);

/// Declares a serde type as a StateFun JSON type (UTF-8 JSON bytes under a type name),
/// the way the SDKs' `make_json_type` does:
///
/// ```
/// use serde::{Deserialize, Serialize};
/// #[derive(Serialize, Deserialize)]
/// struct GreetRequest { name: String }
/// statefun_core::json_type!(GreetRequest, "example/GreetRequest");
///
/// let v = statefun_core::TypedValue::of(&GreetRequest { name: "Bob".into() });
/// assert_eq!(v.value.as_deref(), Some(&br#"{"name":"Bob"}"#[..]));
/// ```
#[macro_export]
macro_rules! json_type {
    ($t:ty, $typename:literal) => {
        impl $crate::ValueType for $t {
            fn typename() -> $crate::TypeName {
                $crate::TypeName::from_static($typename)
            }
            fn encode(&self) -> Vec<u8> {
                $crate::value::json_encode(self)
            }
            fn decode(bytes: &[u8]) -> Result<Self, $crate::DecodeError> {
                $crate::value::json_decode(bytes, <$t as $crate::ValueType>::typename())
            }
        }
    };
}

#[doc(hidden)]
pub fn json_encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing plain serde data to a Vec cannot fail; a map with non-string keys can,
    // and is a programming error in the declared type.
    serde_json::to_vec(value).expect("JSON type must serialize")
}

#[doc(hidden)]
pub fn json_decode<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    typename: TypeName,
) -> Result<T, DecodeError> {
    serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed {
        typename,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(v: &TypedValue) -> String {
        v.value
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn builtin_types_encode_like_the_statefun_sdks() {
        assert_eq!(hex(&TypedValue::of(&1i32)), "0d01000000");
        assert_eq!(hex(&TypedValue::of(&1i64)), "090100000000000000");
        assert_eq!(hex(&TypedValue::of(&true)), "0801");
        assert_eq!(hex(&TypedValue::of(&1.0f32)), "0d0000803f");
        assert_eq!(hex(&TypedValue::of(&1.0f64)), "09000000000000f03f");
        assert_eq!(hex(&TypedValue::of(&"hi".to_string())), "0a026869");
        assert_eq!(
            TypedValue::of(&1i64).typename.as_str(),
            "io.statefun.types/long"
        );
    }

    #[test]
    fn defaults_encode_as_present_empty_bytes() {
        for v in [
            TypedValue::of(&0i32),
            TypedValue::of(&0i64),
            TypedValue::of(&false),
            TypedValue::of(&0.0f32),
            TypedValue::of(&0.0f64),
            TypedValue::of(&String::new()),
        ] {
            assert_eq!(v.value, Some(vec![]), "{v:?}");
        }
        assert_eq!(TypedValue::of(&0i64).decode::<i64>(), Ok(0));
        assert_eq!(
            TypedValue::of(&String::new()).decode::<String>(),
            Ok(String::new())
        );
    }

    #[test]
    fn round_trips_extremes() {
        for v in [i64::MIN, -1, 1, i64::MAX] {
            assert_eq!(TypedValue::of(&v).decode::<i64>(), Ok(v));
        }
        for v in [i32::MIN, -7, i32::MAX] {
            assert_eq!(TypedValue::of(&v).decode::<i32>(), Ok(v));
        }
        let s = "héllo wörld".repeat(50);
        assert_eq!(TypedValue::of(&s).decode::<String>(), Ok(s));
        assert_eq!(TypedValue::of(&-2.5f64).decode::<f64>(), Ok(-2.5));
    }

    #[test]
    fn decoding_checks_the_typename_and_presence() {
        let v = TypedValue::of(&5i32);
        assert!(matches!(
            v.decode::<i64>(),
            Err(DecodeError::WrongType { .. })
        ));
        let absent = TypedValue {
            typename: builtin::LONG,
            value: None,
        };
        assert_eq!(
            absent.decode::<i64>(),
            Err(DecodeError::Absent(builtin::LONG))
        );
        let garbage = TypedValue::from_bytes(builtin::LONG, vec![0x09, 1, 2]);
        assert!(matches!(
            garbage.decode::<i64>(),
            Err(DecodeError::Malformed { .. })
        ));
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Greeting {
        name: String,
        visits: u32,
    }
    crate::json_type!(Greeting, "example/Greeting");

    #[test]
    fn json_types_are_utf8_json_under_their_typename() {
        let g = Greeting {
            name: "Bob".into(),
            visits: 2,
        };
        let v = TypedValue::of(&g);
        assert_eq!(v.typename.as_str(), "example/Greeting");
        assert_eq!(
            v.value.as_deref(),
            Some(&br#"{"name":"Bob","visits":2}"#[..])
        );
        assert_eq!(v.decode::<Greeting>(), Ok(g));
        let bad = TypedValue::from_bytes(Greeting::typename(), b"{".to_vec());
        assert!(matches!(
            bad.decode::<Greeting>(),
            Err(DecodeError::Malformed { .. })
        ));
    }
}
