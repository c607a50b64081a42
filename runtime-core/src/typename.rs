//! Type names and addresses: the identity of function types, values and virtual instances.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A StateFun type name, `namespace/name`. The namespace is everything before the last
/// `/` (so `type.googleapis.com/io.statefun.sdk.egress.KafkaProducerRecord` works), as in
/// the StateFun SDKs.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TypeName(Cow<'static, str>);

/// A string that is not of the form `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid type name {0:?}: expected `namespace/name` with both parts non-empty")]
pub struct InvalidTypeName(pub String);

const fn split_point(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = bytes.len();
    while i > 0 {
        i -= 1;
        if bytes[i] == b'/' {
            return if i == 0 || i + 1 == bytes.len() {
                None
            } else {
                Some(i)
            };
        }
    }
    None
}

impl TypeName {
    /// A type name from a literal; invalid literals fail at compile time in `const` items.
    pub const fn from_static(s: &'static str) -> Self {
        assert!(
            split_point(s).is_some(),
            "type name must be `namespace/name`"
        );
        TypeName(Cow::Borrowed(s))
    }

    /// Parses `namespace/name`.
    pub fn parse(s: impl Into<String>) -> Result<Self, InvalidTypeName> {
        let s = s.into();
        match split_point(&s) {
            Some(_) => Ok(TypeName(Cow::Owned(s))),
            None => Err(InvalidTypeName(s)),
        }
    }

    /// Joins a namespace and a name.
    pub fn new(namespace: &str, name: &str) -> Result<Self, InvalidTypeName> {
        Self::parse(format!("{namespace}/{name}"))
    }

    fn split(&self) -> usize {
        split_point(&self.0).unwrap_or_default()
    }

    pub fn namespace(&self) -> &str {
        &self.0[..self.split()]
    }

    pub fn name(&self) -> &str {
        &self.0[self.split() + 1..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TypeName {
    type Error = InvalidTypeName;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

impl From<TypeName> for String {
    fn from(t: TypeName) -> Self {
        t.0.into_owned()
    }
}

impl AsRef<str> for TypeName {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for TypeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TypeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// The address of one virtual instance: a function type and an id.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Address {
    pub function_type: TypeName,
    pub id: String,
}

impl Address {
    pub fn new(function_type: TypeName, id: impl Into<String>) -> Self {
        Address {
            function_type,
            id: id.into(),
        }
    }

    /// The address as the source of message and egress ids: `type/id` with `%`, `/` and
    /// `@` in the id percent-encoded. Unambiguous, where [`Display`](fmt::Display) is not
    /// (type `a/b` with id `c/d` and type `a/b/c` with id `d` both display as `a/b/c/d`):
    /// the id is everything after the last `/`, and nothing in it is an `@`, so
    /// `<source>@<version>.<index>` parses back. Ids without those characters read as
    /// they display.
    pub fn source_name(&self) -> String {
        let mut out = String::with_capacity(self.function_type.as_str().len() + self.id.len() + 1);
        out.push_str(self.function_type.as_str());
        out.push('/');
        for c in self.id.chars() {
            match c {
                '%' => out.push_str("%25"),
                '/' => out.push_str("%2F"),
                '@' => out.push_str("%40"),
                c => out.push(c),
            }
        }
        out
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.function_type, self.id)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_is_everything_before_the_last_slash() {
        let t = TypeName::parse("type.googleapis.com/io.statefun.sdk.egress.KafkaProducerRecord")
            .expect("valid");
        assert_eq!(t.namespace(), "type.googleapis.com");
        assert_eq!(t.name(), "io.statefun.sdk.egress.KafkaProducerRecord");
        let t = TypeName::from_static("io.statefun.types/long");
        assert_eq!((t.namespace(), t.name()), ("io.statefun.types", "long"));
    }

    #[test]
    fn malformed_type_names_are_rejected() {
        for bad in ["", "noslash", "/name", "ns/", "/"] {
            assert!(TypeName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn source_names_are_unambiguous() {
        let a = Address::new(TypeName::from_static("a/b"), "c/d");
        let b = Address::new(TypeName::from_static("a/b/c"), "d");
        assert_eq!(a.to_string(), b.to_string(), "display is ambiguous");
        assert_ne!(a.source_name(), b.source_name());
        assert_eq!(a.source_name(), "a/b/c%2Fd");
        assert_eq!(
            Address::new(TypeName::from_static("x/y"), "u@v%").source_name(),
            "x/y/u%40v%25"
        );
        let plain = Address::new(TypeName::from_static("example/greeter"), "Bob");
        assert_eq!(plain.source_name(), plain.to_string());
    }

    #[test]
    fn address_displays_as_path() {
        let a = Address::new(TypeName::from_static("example/counter"), "a b");
        assert_eq!(a.to_string(), "example/counter/a b");
    }
}
