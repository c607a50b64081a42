//! The StateFun built-in types (`io.statefun.types/*`): protobuf wrapper messages with the
//! value in field 1. proto3 omits default values, so 0, 0.0, false and "" encode to no
//! bytes at all. Hand-written here so the core needs no protobuf runtime for them.

use serde_json::Value as Json;

use crate::typename::TypeName;
use crate::value::TypedValue;

pub const INT: TypeName = TypeName::from_static("io.statefun.types/int");
pub const LONG: TypeName = TypeName::from_static("io.statefun.types/long");
pub const FLOAT: TypeName = TypeName::from_static("io.statefun.types/float");
pub const DOUBLE: TypeName = TypeName::from_static("io.statefun.types/double");
pub const BOOL: TypeName = TypeName::from_static("io.statefun.types/bool");
pub const STRING: TypeName = TypeName::from_static("io.statefun.types/string");

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

fn tag(wire: u8) -> u8 {
    (1 << 3) | wire
}

fn fixed(wire: u8, bytes: &[u8]) -> Vec<u8> {
    if bytes.iter().all(|b| *b == 0) {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(1 + bytes.len());
    out.push(tag(wire));
    out.extend_from_slice(bytes);
    out
}

pub(crate) fn encode_int(v: &i32) -> Vec<u8> {
    fixed(FIXED32, &v.to_le_bytes())
}
pub(crate) fn encode_long(v: &i64) -> Vec<u8> {
    fixed(FIXED64, &v.to_le_bytes())
}
pub(crate) fn encode_float(v: &f32) -> Vec<u8> {
    fixed(FIXED32, &v.to_le_bytes())
}
pub(crate) fn encode_double(v: &f64) -> Vec<u8> {
    fixed(FIXED64, &v.to_le_bytes())
}
pub(crate) fn encode_bool(v: &bool) -> Vec<u8> {
    if *v { vec![tag(VARINT), 1] } else { Vec::new() }
}
pub(crate) fn encode_string(v: &String) -> Vec<u8> {
    if v.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(v.len() + 6);
    out.push(tag(LEN));
    put_varint(&mut out, v.len() as u64);
    out.extend_from_slice(v.as_bytes());
    out
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(bytes: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes".into())
}

fn take<'a>(bytes: &'a [u8], pos: &mut usize, n: usize) -> Result<&'a [u8], String> {
    let end = pos.checked_add(n).filter(|e| *e <= bytes.len());
    let end = end.ok_or_else(|| format!("truncated field: {n} bytes expected"))?;
    let s = &bytes[*pos..end];
    *pos = end;
    Ok(s)
}

/// Reads the last occurrence of field 1 with the expected wire type, skipping unknown
/// fields as protobuf parsers do. `None` means the field is absent (the default value).
fn field_one(bytes: &[u8], want: u8) -> Result<Option<&[u8]>, String> {
    let mut pos = 0;
    let mut found = None;
    while pos < bytes.len() {
        let key = get_varint(bytes, &mut pos)?;
        let (field, wire) = (key >> 3, (key & 7) as u8);
        let start = pos;
        match wire {
            VARINT => {
                get_varint(bytes, &mut pos)?;
            }
            FIXED64 => {
                take(bytes, &mut pos, 8)?;
            }
            FIXED32 => {
                take(bytes, &mut pos, 4)?;
            }
            LEN => {
                let n = get_varint(bytes, &mut pos)?;
                let n = usize::try_from(n).map_err(|_| "length overflows")?;
                let body = take(bytes, &mut pos, n)?;
                if field == 1 && want == LEN {
                    found = Some(body);
                }
                continue;
            }
            other => return Err(format!("unsupported wire type {other}")),
        }
        if field == 1 {
            if wire != want {
                return Err(format!("field 1 has wire type {wire}, expected {want}"));
            }
            found = Some(&bytes[start..pos]);
        }
    }
    Ok(found)
}

fn fixed_array<const N: usize>(bytes: &[u8], wire: u8) -> Result<[u8; N], String> {
    match field_one(bytes, wire)? {
        None => Ok([0; N]),
        Some(b) => b.try_into().map_err(|_| "bad fixed width".to_string()),
    }
}

pub(crate) fn decode_int(bytes: &[u8]) -> Result<i32, String> {
    fixed_array(bytes, FIXED32).map(i32::from_le_bytes)
}
pub(crate) fn decode_long(bytes: &[u8]) -> Result<i64, String> {
    fixed_array(bytes, FIXED64).map(i64::from_le_bytes)
}
pub(crate) fn decode_float(bytes: &[u8]) -> Result<f32, String> {
    fixed_array(bytes, FIXED32).map(f32::from_le_bytes)
}
pub(crate) fn decode_double(bytes: &[u8]) -> Result<f64, String> {
    fixed_array(bytes, FIXED64).map(f64::from_le_bytes)
}
pub(crate) fn decode_bool(bytes: &[u8]) -> Result<bool, String> {
    match field_one(bytes, VARINT)? {
        None => Ok(false),
        Some(b) => {
            let mut pos = 0;
            Ok(get_varint(b, &mut pos)? != 0)
        }
    }
}
pub(crate) fn decode_string(bytes: &[u8]) -> Result<String, String> {
    match field_one(bytes, LEN)? {
        None => Ok(String::new()),
        Some(b) => String::from_utf8(b.to_vec()).map_err(|e| e.to_string()),
    }
}

/// Whether a type name is one of the six built-in types.
pub fn is_builtin(typename: &TypeName) -> bool {
    [&INT, &LONG, &FLOAT, &DOUBLE, &BOOL, &STRING].contains(&typename)
}

/// A plain-text form (`42`, `true`, `hello`) of a built-in type, as HTTP ingress bodies
/// carry it, encoded into the SDK wire form. `None` if `typename` is not built in.
pub fn from_text(typename: &TypeName, text: &str) -> Option<Result<TypedValue, String>> {
    fn parsed<T: crate::ValueType, E: std::fmt::Display>(
        r: Result<T, E>,
    ) -> Result<TypedValue, String> {
        r.map(|v| TypedValue::of(&v))
            .map_err(|e| format!("not a valid {}: {e}", T::typename()))
    }
    let t = text.trim();
    Some(match typename.as_str() {
        "io.statefun.types/int" => parsed(t.parse::<i32>()),
        "io.statefun.types/long" => parsed(t.parse::<i64>()),
        "io.statefun.types/float" => parsed(t.parse::<f32>()),
        "io.statefun.types/double" => parsed(t.parse::<f64>()),
        "io.statefun.types/bool" => parsed(t.parse::<bool>()),
        "io.statefun.types/string" => Ok(TypedValue::of(&text.to_string())),
        _ => return None,
    })
}

/// A built-in value decoded to JSON. `None` if `typename` is not built in.
pub fn to_json(typename: &TypeName, bytes: &[u8]) -> Option<Result<Json, String>> {
    Some(match typename.as_str() {
        "io.statefun.types/int" => decode_int(bytes).map(Json::from),
        "io.statefun.types/long" => decode_long(bytes).map(Json::from),
        "io.statefun.types/float" => decode_float(bytes).map(Json::from),
        "io.statefun.types/double" => decode_double(bytes).map(Json::from),
        "io.statefun.types/bool" => decode_bool(bytes).map(Json::from),
        "io.statefun.types/string" => decode_string(bytes).map(Json::from),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_parse_into_wire_form() {
        let v = from_text(&LONG, " 42\n").expect("builtin").expect("valid");
        assert_eq!(v.decode::<i64>(), Ok(42));
        let err = from_text(&LONG, "forty-two").expect("builtin").unwrap_err();
        assert!(err.contains("io.statefun.types/long"), "{err}");
        assert!(from_text(&TypeName::from_static("example/Foo"), "{}").is_none());
        let s = from_text(&STRING, " padded ")
            .expect("builtin")
            .expect("valid");
        assert_eq!(s.decode::<String>().as_deref(), Ok(" padded "));
    }

    #[test]
    fn unknown_fields_are_skipped_and_last_field_one_wins() {
        // field 2 varint 7, then field 1 fixed64 = 3, then field 1 fixed64 = 5
        let mut b = vec![0x10, 7, 0x09];
        b.extend_from_slice(&3i64.to_le_bytes());
        b.push(0x09);
        b.extend_from_slice(&5i64.to_le_bytes());
        assert_eq!(decode_long(&b), Ok(5));
        assert!(
            decode_long(&[0x0d, 1, 0, 0, 0]).is_err(),
            "wrong wire type accepted"
        );
    }

    #[test]
    fn json_view_of_builtins() {
        assert_eq!(to_json(&INT, &encode_int(&-3)), Some(Ok(Json::from(-3))));
        assert_eq!(to_json(&BOOL, &[]), Some(Ok(Json::from(false))));
    }
}
