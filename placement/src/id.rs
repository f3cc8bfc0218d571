//! Client ids: finding one in a query string, decoding it, and deciding whether it is valid.
//!
//! The server, the client and the Lua filter must agree on these rules byte for byte, or a
//! request would be routed by one reading of the id and checked by another.

use percent_encoding::percent_decode;

/// The longest id accepted, in bytes after decoding.
pub const MAX_CLIENT_ID_BYTES: usize = 256;

/// Why a request carries no usable client id. The machine code ([`IdError::code`]) is what
/// clients see in the JSON error body; the message they see names the source the id was
/// looked for in ([`crate::KeyError`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("the request has no client id")]
    Missing,
    #[error("the client id is given more than once; exactly one is allowed")]
    Duplicate,
    #[error("the client id is empty")]
    Empty,
    #[error("the client id is {0} bytes long; at most {MAX_CLIENT_ID_BYTES} are allowed")]
    TooLong(usize),
    #[error("the client id is not valid UTF-8")]
    NotUtf8,
    #[error("the client id contains a control character at byte {0}")]
    ControlChar(usize),
    #[error("the client id must be decimal digits with a value of at most 18446744073709551615 in numeric mode")]
    NotNumeric,
}

impl IdError {
    /// The stable machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            IdError::Missing => "missing_client_id",
            IdError::Duplicate => "duplicate_client_id",
            _ => "invalid_client_id",
        }
    }
}

/// A client id that passed validation: 1..=256 bytes of UTF-8 with no C0 control or DEL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(String);

impl ClientId {
    /// Validates already-decoded bytes.
    pub fn new(bytes: Vec<u8>) -> Result<Self, IdError> {
        if bytes.is_empty() {
            return Err(IdError::Empty);
        }
        if bytes.len() > MAX_CLIENT_ID_BYTES {
            return Err(IdError::TooLong(bytes.len()));
        }
        if let Some(pos) = bytes.iter().position(|&b| b < 0x20 || b == 0x7f) {
            return Err(IdError::ControlChar(pos));
        }
        String::from_utf8(bytes)
            .map(ClientId)
            .map_err(|_| IdError::NotUtf8)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<&str> for ClientId {
    type Error = IdError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        ClientId::new(s.as_bytes().to_vec())
    }
}

/// Decodes one `application/x-www-form-urlencoded` component: `+` is a space, `%XX` a byte.
/// Malformed escapes (`%` not followed by two hex digits) are kept as they are, as browsers do.
pub(crate) fn form_decode(raw: &str) -> Vec<u8> {
    let plus_as_space: Vec<u8> = raw
        .bytes()
        .map(|b| if b == b'+' { b' ' } else { b })
        .collect();
    percent_decode(&plus_as_space).collect()
}

/// Finds the single `client_id` parameter in a raw query string (without the `?`) and returns
/// the validated id: [`KeySource::default_query`](crate::KeySource::default_query)'s rules.
///
/// Parameter names are decoded before comparison, so `client%5Fid` is `client_id` too; a
/// parameter without `=` has an empty value. Two `client_id` parameters are an error even when
/// they agree, because a proxy and a server could otherwise pick different ones.
pub fn client_id_from_query(query: Option<&str>) -> Result<ClientId, crate::KeyError> {
    let at = |error| crate::KeyError {
        source: crate::KeySource::default_query(),
        error,
    };
    let raw = crate::key::query_value(query.map(str::as_bytes), "client_id").map_err(at)?;
    ClientId::new(raw).map_err(at)
}

/// `client_id=<id>`, form-encoded (a space is `+`, other reserved bytes `%XX`): the query that
/// [`client_id_from_query`] reads back as `id`. Clients and the bench build their URLs with it.
pub fn client_id_query(id: &str) -> String {
    let mut query = String::from("client_id=");
    query.extend(form_urlencoded::byte_serialize(id.as_bytes()));
    query
}

/// Parses a decimal `u64`: ASCII digits only, leading zeros allowed, no sign or spaces.
pub(crate) fn parse_decimal_u64(s: &str) -> Result<u64, IdError> {
    if s.is_empty() {
        return Err(IdError::NotNumeric);
    }
    s.bytes().try_fold(0u64, |acc, b| {
        if !b.is_ascii_digit() {
            return Err(IdError::NotNumeric);
        }
        acc.checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or(IdError::NotNumeric)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_query_reads_back_as_its_id() {
        let cases = [
            ("abc", "client_id=abc"),
            ("a b", "client_id=a+b"),
            ("a&b=c", "client_id=a%26b%3Dc"),
            ("a+b", "client_id=a%2Bb"),
            ("Zoë", "client_id=Zo%C3%AB"),
            ("100%", "client_id=100%25"),
        ];
        for (id, query) in cases {
            assert_eq!(client_id_query(id), query, "{id:?}");
            let back = client_id_from_query(Some(query)).unwrap();
            assert_eq!(back.as_str(), id, "{query:?}");
        }
    }

    #[test]
    fn query_extraction() {
        let long = "x".repeat(257);
        let long_query = format!("client_id={long}");
        let cases: Vec<(Option<&str>, Result<&str, IdError>)> = vec![
            (None, Err(IdError::Missing)),
            (Some(""), Err(IdError::Missing)),
            (Some("other=1"), Err(IdError::Missing)),
            (Some("client_id=abc"), Ok("abc")),
            (Some("a=1&client_id=abc&b=2"), Ok("abc")),
            (Some("client_id=a+b"), Ok("a b")),
            (Some("client_id=a%20b%26c%3Dd"), Ok("a b&c=d")),
            (Some("client_id=%E6%97%A5%E6%9C%AC"), Ok("日本")),
            (Some("client_id=Zo%C3%AB"), Ok("Zoë")),
            (Some("client%5Fid=x"), Ok("x")),
            (Some("client_id=100%"), Ok("100%")),
            (Some("client_id=%zz"), Ok("%zz")),
            (Some("client_id="), Err(IdError::Empty)),
            (Some("client_id"), Err(IdError::Empty)),
            (Some("client_id=a&client_id=a"), Err(IdError::Duplicate)),
            (Some("client_id=a&client_id=b"), Err(IdError::Duplicate)),
            (Some("client_id=&client_id=b"), Err(IdError::Duplicate)),
            (Some("client_id=%FF"), Err(IdError::NotUtf8)),
            (Some("client_id=a%00b"), Err(IdError::ControlChar(1))),
            (Some("client_id=%7F"), Err(IdError::ControlChar(0))),
            (Some("client_id=%0A"), Err(IdError::ControlChar(0))),
            (Some(long_query.as_str()), Err(IdError::TooLong(257))),
            (Some("client_ids=1"), Err(IdError::Missing)),
        ];
        for (query, want) in cases {
            let got = client_id_from_query(query).map_err(|e| e.error);
            assert_eq!(
                got.as_ref().map(ClientId::as_str),
                want.as_ref().map(|s| *s),
                "query {query:?}"
            );
        }
    }

    #[test]
    fn exactly_256_bytes_is_accepted() {
        let id = "é".repeat(128);
        assert_eq!(ClientId::try_from(id.as_str()).unwrap().as_str(), id);
    }

    #[test]
    fn error_codes() {
        assert_eq!(IdError::Missing.code(), "missing_client_id");
        assert_eq!(IdError::Duplicate.code(), "duplicate_client_id");
        for e in [
            IdError::Empty,
            IdError::TooLong(300),
            IdError::NotUtf8,
            IdError::ControlChar(0),
            IdError::NotNumeric,
        ] {
            assert_eq!(e.code(), "invalid_client_id");
        }
    }

    #[test]
    fn decimal_parsing() {
        let cases = [
            ("0", Ok(0)),
            ("00042", Ok(42)),
            ("18446744073709551615", Ok(u64::MAX)),
            ("18446744073709551616", Err(IdError::NotNumeric)),
            ("", Err(IdError::NotNumeric)),
            ("-5", Err(IdError::NotNumeric)),
            ("+5", Err(IdError::NotNumeric)),
            (" 12", Err(IdError::NotNumeric)),
            ("1e3", Err(IdError::NotNumeric)),
            ("٣", Err(IdError::NotNumeric)),
        ];
        for (s, want) in cases {
            assert_eq!(parse_decimal_u64(s), want, "{s:?}");
        }
        let many_zeros = format!("{}7", "0".repeat(255));
        assert_eq!(parse_decimal_u64(&many_zeros), Ok(7));
    }
}
