//! A JSON object parser that refuses duplicate member names.
//!
//! `serde_json` silently keeps the last of two members with the same name, so
//! `{"alg":"RS256","alg":"none"}` means one thing to us and possibly another
//! to whoever else reads the token (RFC 7515 §4 and RFC 7519 §4 require a
//! parser to reject such input or use the last one; we reject). The parser
//! here drives `serde_json`'s tokenizer with our own visitor, which builds the
//! same [`Value`] tree but fails on a repeated name at any nesting level
//! (names are compared after unescaping, so `"a"` and `"\u0061"` collide), and
//! caps nesting depth.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Deepest nesting of arrays and objects accepted (the top-level object is 1).
pub const MAX_DEPTH: usize = 64;

/// Why a document was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrictJsonError {
    /// A member name appears twice in one object.
    Duplicate,
    /// Not a JSON object: bad syntax, trailing data, invalid UTF-8, a
    /// top-level value of another type, or nesting deeper than [`MAX_DEPTH`].
    Malformed,
}

impl fmt::Display for StrictJsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StrictJsonError::Duplicate => f.write_str("duplicate JSON member name"),
            StrictJsonError::Malformed => f.write_str("malformed JSON object"),
        }
    }
}

impl std::error::Error for StrictJsonError {}

/// Parses `bytes` as one JSON object, refusing duplicate member names at any
/// depth.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, StrictJsonError> {
    let duplicate = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let seed = ValueSeed {
        depth: 1,
        duplicate: &duplicate,
    };
    let parsed = de
        .deserialize_map(ObjectVisitor(seed))
        .and_then(|map| de.end().map(|()| map));
    match parsed {
        Ok(map) => Ok(map),
        Err(_) if duplicate.get() => Err(StrictJsonError::Duplicate),
        Err(_) => Err(StrictJsonError::Malformed),
    }
}

// === impl ValueSeed ===

/// Deserializes one value at `depth`; flags a duplicate through `duplicate`
/// (serde's error type cannot carry our own kind back out).
#[derive(Clone, Copy)]
struct ValueSeed<'a> {
    depth: usize,
    duplicate: &'a Cell<bool>,
}

impl ValueSeed<'_> {
    /// The seed for the members of the array or object being entered at
    /// `self.depth`; refuses to enter one deeper than [`MAX_DEPTH`].
    fn enter<E: de::Error>(self) -> Result<Self, E> {
        if self.depth > MAX_DEPTH {
            return Err(E::custom("JSON nested too deeply"));
        }
        Ok(ValueSeed {
            depth: self.depth + 1,
            duplicate: self.duplicate,
        })
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let child = self.enter()?;
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element_seed(child)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Value, A::Error> {
        ObjectVisitor(self).visit_map(map).map(Value::Object)
    }
}

// === impl ObjectVisitor ===

/// Builds one object at the seed's depth, refusing a repeated name.
struct ObjectVisitor<'a>(ValueSeed<'a>);

impl<'de> Visitor<'de> for ObjectVisitor<'_> {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let child = self.0.enter()?;
        let mut map = Map::new();
        while let Some(name) = access.next_key::<String>()? {
            if map.contains_key(&name) {
                self.0.duplicate.set(true);
                return Err(de::Error::custom("duplicate member name"));
            }
            let value = access.next_value_seed(child)?;
            map.insert(name, value);
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_objects() {
        let m = parse_object(br#" {"a":1,"b":[true,null,"x",1.5,-2],"c":{"d":{}}} "#).unwrap();
        assert_eq!(
            Value::Object(m),
            serde_json::json!({"a":1,"b":[true,null,"x",1.5,-2],"c":{"d":{}}})
        );
        assert!(parse_object(b"{}").unwrap().is_empty());
    }

    #[test]
    fn refuses_duplicates_at_any_depth() {
        let dup = |s: &str| parse_object(s.as_bytes());
        assert_eq!(dup(r#"{"a":1,"a":2}"#), Err(StrictJsonError::Duplicate));
        assert_eq!(
            dup(r#"{"a":1,"\u0061":2}"#),
            Err(StrictJsonError::Duplicate)
        );
        assert_eq!(
            dup(r#"{"x":{"a":1,"a":1}}"#),
            Err(StrictJsonError::Duplicate)
        );
        assert_eq!(
            dup(r#"{"x":[{"b":1},{"b":2,"b":3}]}"#),
            Err(StrictJsonError::Duplicate)
        );
        // Same name in sibling objects is fine.
        assert!(dup(r#"{"x":{"a":1},"y":{"a":1}}"#).is_ok());
    }

    #[test]
    fn refuses_non_objects_and_bad_syntax() {
        for s in [
            "",
            "[]",
            "1",
            "\"s\"",
            "null",
            "{",
            "{\"a\":1,}",
            "{\"a\":1} x",
            "{\"a\":1}{}",
            "{'a':1}",
            "{\"a\":NaN}",
            "{\"a\":1e999}",
            "{\"a\":\"\\ud800\"}",
        ] {
            assert_eq!(
                parse_object(s.as_bytes()),
                Err(StrictJsonError::Malformed),
                "{s}"
            );
        }
        assert_eq!(
            parse_object(b"{\"a\":\"\xff\"}"),
            Err(StrictJsonError::Malformed)
        );
    }

    #[test]
    fn bounds_nesting_depth() {
        let nest = |n: usize| {
            let mut s = String::from("{\"a\":");
            s.push_str(&"[".repeat(n));
            s.push_str(&"]".repeat(n));
            s.push('}');
            s
        };
        assert!(parse_object(nest(MAX_DEPTH - 1).as_bytes()).is_ok());
        assert_eq!(
            parse_object(nest(MAX_DEPTH).as_bytes()),
            Err(StrictJsonError::Malformed)
        );
        assert_eq!(
            parse_object(nest(10_000).as_bytes()),
            Err(StrictJsonError::Malformed)
        );
    }
}
