//! Key sources: where a request carries the key its owner is found by.
//!
//! The placement hashes a key's bytes and nothing else, so one key has one owner whichever part
//! of a request carried it: `?client_id=alice`, `x-user-id: alice`, `Cookie: user=alice` and
//! `/rooms/alice/...` all go to the same instance. What differs is only how the key is found,
//! and that is this module, used by the Envoy module (every affinity route), the server and,
//! through the shared vectors in `tests/data/keys.tsv`, the Lua spec.
//!
//! Every source follows the same rules: exactly one value (two `client_id` parameters, two
//! `x-user-id` headers or two `user` cookies are refused, never guessed between, because a proxy
//! and a server could pick different ones), then [`ClientId::new`]'s rules for the value. The
//! error names the source, and its machine code is the one the query parameter always had
//! (`missing_client_id`, `duplicate_client_id`, `invalid_client_id`): the key *is* the client's
//! id, wherever it travels.

use std::fmt;
use std::str::FromStr;

use percent_encoding::{percent_decode, utf8_percent_encode, AsciiSet, CONTROLS};

use crate::id::{form_decode, ClientId, IdError};

/// The request header in which a routing filter hands the key it routed by to the owner,
/// form-encoded ([`key_header_value`]). The filter overwrites any value a client sent, so the
/// owner checks ownership of exactly the key the request was routed by, whatever its source.
pub const KEY_HEADER: &str = "x-poc-key";

/// The longest header or cookie name a source may name (Envoy's own limit on a header name is
/// far larger; no real API uses more).
const MAX_NAME_BYTES: usize = 128;

/// Where a request carries its key. Written as in configuration: `query:client_id`,
/// `header:x-user-id`, `cookie:session`, `path:/rooms/{key}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeySource {
    /// A query parameter, form-decoded (`+` is a space, `%XX` a byte), its name decoded too.
    Query(String),
    /// A request header (its name in lower case, as HTTP/2 and Envoy write it), taken as it is:
    /// no decoding, so the key is exactly the header's bytes.
    Header(String),
    /// A cookie of the `cookie` header(s) (RFC 6265: `name=value` pairs split by `;`), its value
    /// taken as it is.
    Cookie(String),
    /// One segment of the path, percent-decoded (`+` stays a `+`, as in any path).
    Path(PathTemplate),
}

impl KeySource {
    /// Today's and the default source: the `client_id` query parameter.
    pub fn default_query() -> Self {
        KeySource::Query("client_id".into())
    }

    /// The header whose values [`KeySource::extract`] needs: the named header, `cookie` for a
    /// cookie, none for the query and the path (they are in `:path`).
    pub fn header_name(&self) -> Option<&str> {
        match self {
            KeySource::Header(name) => Some(name),
            KeySource::Cookie(_) => Some("cookie"),
            KeySource::Query(_) | KeySource::Path(_) => None,
        }
    }

    /// The key of a request: `path` is its raw `:path` (query included), `header_values` every
    /// value of [`KeySource::header_name`] in the order received (empty for the query and path
    /// sources). Bytes, not text: a request that is not UTF-8 somewhere else still has a key.
    pub fn extract(&self, path: &[u8], header_values: &[&[u8]]) -> Result<ClientId, KeyError> {
        let at = |error| KeyError {
            source: self.clone(),
            error,
        };
        let raw = match self {
            KeySource::Query(name) => {
                let query = path
                    .iter()
                    .position(|&b| b == b'?')
                    .map(|at| &path[at + 1..]);
                query_value(query, name).map_err(at)?
            }
            KeySource::Header(_) => match header_values {
                [] => return Err(at(IdError::Missing)),
                [one] => one.to_vec(),
                _ => return Err(at(IdError::Duplicate)),
            },
            KeySource::Cookie(name) => cookie_value(header_values, name).map_err(at)?,
            KeySource::Path(template) => template.key_of(path).map_err(at)?,
        };
        ClientId::new(raw).map_err(at)
    }

    /// What [`KeySource::extract`]'s errors call the source: `the query parameter client_id`.
    pub fn describe(&self) -> String {
        match self {
            KeySource::Query(name) => format!("the query parameter {name}"),
            KeySource::Header(name) => format!("the header {name}"),
            KeySource::Cookie(name) => format!("the cookie {name}"),
            KeySource::Path(t) => format!("the path segment {{key}} of {}", t.template),
        }
    }

    /// A request carrying `id` in this source: `path` (which must hold `{key}` for a path
    /// source, where the id goes percent-encoded) with the query parameter appended, and the
    /// header to send, if any. What clients and tests send; [`KeySource::extract`] reads `id`
    /// back from it.
    pub fn request(&self, path: &str, id: &str) -> Result<KeyedRequest, String> {
        let mut header = None;
        let path = match self {
            KeySource::Query(name) => {
                let sep = if path.contains('?') { '&' } else { '?' };
                let name: String = form_urlencoded::byte_serialize(name.as_bytes()).collect();
                let value: String = form_urlencoded::byte_serialize(id.as_bytes()).collect();
                format!("{path}{sep}{name}={value}")
            }
            KeySource::Header(name) => {
                if id.trim() != id {
                    return Err(format!(
                        "{id:?} cannot be a header value as it is: HTTP trims its outer spaces"
                    ));
                }
                header = Some((name.clone(), id.to_owned()));
                path.to_owned()
            }
            KeySource::Cookie(name) => {
                if id.contains([';', ',', ' ', '"', '\\']) {
                    return Err(format!(
                        "{id:?} cannot be a cookie value (RFC 6265 forbids ; , space \" and \\)"
                    ));
                }
                header = Some(("cookie".into(), format!("{name}={id}")));
                path.to_owned()
            }
            KeySource::Path(template) => {
                if !path.contains(PathTemplate::KEY) {
                    return Err(format!(
                        "the path {path:?} has no {} for the key of {}",
                        PathTemplate::KEY,
                        template.template
                    ));
                }
                // Envoy unescapes %2F before any filter sees the path (envoy.yaml's
                // path_with_escaped_slashes_action), so a `/` in a key would split it.
                // And it resolves `.` and `..` segments, and turns a `\` into a `/`.
                if id.contains(['/', '\\']) || id == "." || id == ".." {
                    return Err(format!(
                        "{id:?} cannot be a path segment behind Envoy: it holds a / or \\, or is . or .."
                    ));
                }
                let segment = utf8_percent_encode(id, SEGMENT).to_string();
                path.replacen(PathTemplate::KEY, &segment, 1)
            }
        };
        Ok(KeyedRequest { path, header })
    }
}

/// A request [`KeySource::request`] made: its path and query, and a header to send with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedRequest {
    pub path: String,
    pub header: Option<(String, String)>,
}

/// Bytes a path segment cannot hold as they are.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'\\')
    .add(b'`')
    .add(b'{')
    .add(b'}');

impl Default for KeySource {
    fn default() -> Self {
        KeySource::default_query()
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Query(name) => write!(f, "query:{name}"),
            KeySource::Header(name) => write!(f, "header:{name}"),
            KeySource::Cookie(name) => write!(f, "cookie:{name}"),
            KeySource::Path(t) => write!(f, "path:{}", t.template),
        }
    }
}

/// A key source written wrong in configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{written:?} is not a key source: {why} (accepted: query:NAME, header:NAME, cookie:NAME, path:/segments/{{key}}/...)")]
pub struct KeySourceError {
    written: String,
    why: String,
}

impl FromStr for KeySource {
    type Err = KeySourceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |why: &str| KeySourceError {
            written: s.to_owned(),
            why: why.to_owned(),
        };
        let (kind, rest) = s
            .split_once(':')
            .ok_or_else(|| fail("no `:` after the kind"))?;
        let name = |what: &str, token: fn(u8) -> bool| {
            if rest.is_empty() || rest.len() > MAX_NAME_BYTES {
                return Err(fail(&format!(
                    "a {what} name is 1 to {MAX_NAME_BYTES} bytes"
                )));
            }
            match rest.bytes().position(|b| !token(b)) {
                Some(at) => Err(fail(&format!(
                    "byte {at} of the {what} name is not allowed in one"
                ))),
                None => Ok(rest.to_owned()),
            }
        };
        match kind {
            "query" => name("query parameter", |b| {
                b.is_ascii_graphic() && !matches!(b, b'&' | b'=' | b'#' | b'?')
            })
            .map(KeySource::Query),
            "header" => {
                // Lower case first: `header:X-Poc-Key` is the routing filter's own header too.
                let header = name("header", is_tchar)?.to_ascii_lowercase();
                if header.starts_with(':') || header == "cookie" || header == KEY_HEADER {
                    return Err(fail(
                        "a pseudo-header, `cookie` (use cookie:NAME) or the routing filter's own header cannot carry the key",
                    ));
                }
                Ok(KeySource::Header(header))
            }
            "cookie" => name("cookie", is_tchar).map(KeySource::Cookie),
            "path" => PathTemplate::parse(rest)
                .map(KeySource::Path)
                .map_err(|why| fail(&why)),
            _ => Err(fail("the kind is none of query, header, cookie, path")),
        }
    }
}

/// RFC 9110's `tchar`: what a header or cookie name is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A path with one segment that is the key: `/rooms/{key}` or `/v1/{key}/items`. It matches
/// a path whose first segments are these (the key any one non-empty segment), followed by
/// anything, as Envoy's `path_separated_prefix` does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathTemplate {
    template: String,
    /// Each segment after the leading `/`: `None` is the key.
    segments: Vec<Option<String>>,
}

impl PathTemplate {
    /// What stands for the key in a template.
    pub const KEY: &'static str = "{key}";

    fn parse(template: &str) -> Result<Self, String> {
        let Some(rest) = template.strip_prefix('/') else {
            return Err("a path template starts with /".into());
        };
        if template.len() > 1024 {
            return Err("a path template is at most 1024 bytes".into());
        }
        let segments: Vec<Option<String>> = rest
            .split('/')
            .map(|s| (s != Self::KEY).then(|| s.to_owned()))
            .collect();
        if segments.iter().filter(|s| s.is_none()).count() != 1 {
            return Err("a path template has exactly one {key} segment".into());
        }
        for literal in segments.iter().flatten() {
            if literal.is_empty() || literal == "." || literal == ".." {
                return Err("a path template has no empty, `.` or `..` segment".into());
            }
            if literal
                .bytes()
                .any(|b| !b.is_ascii_graphic() || b"%?#{}".contains(&b))
            {
                return Err(format!(
                    "the segment {literal:?} holds a byte a literal segment cannot (%, ?, #, braces, spaces or non-ASCII)"
                ));
            }
        }
        Ok(Self {
            template: template.to_owned(),
            segments,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.template
    }

    /// The decoded key segment of `path` (its query ignored), or `Missing` if the path does not
    /// match the template.
    fn key_of(&self, path: &[u8]) -> Result<Vec<u8>, IdError> {
        let path = path.split(|&b| b == b'?').next().unwrap_or_default();
        let Some(rest) = path.strip_prefix(b"/") else {
            return Err(IdError::Missing);
        };
        let mut parts = rest.split(|&b| b == b'/');
        let mut key = None;
        for segment in &self.segments {
            let part = parts.next().ok_or(IdError::Missing)?;
            match segment {
                Some(literal) if part != literal.as_bytes() => return Err(IdError::Missing),
                Some(_) => {}
                None => key = Some(part),
            }
        }
        let key = key.expect("a template has one key segment");
        Ok(percent_decode(key).collect())
    }
}

/// The single value of the query parameter `name` in a raw query (`a=1&client_id=x`, without
/// the `?`), form-decoded. A query that is not UTF-8 keeps its UTF-8 parameters; a value
/// holding raw non-UTF-8 bytes is refused as such.
pub(crate) fn query_value(query: Option<&[u8]>, name: &str) -> Result<Vec<u8>, IdError> {
    let query = query.ok_or(IdError::Missing)?;
    let mut found: Option<&[u8]> = None;
    for pair in query.split(|&b| b == b'&') {
        if pair.is_empty() {
            continue;
        }
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &b""[..]),
        };
        // The common case compares without decoding.
        if key != name.as_bytes() && form_decode_bytes(key) != name.as_bytes() {
            continue;
        }
        if found.replace(value).is_some() {
            return Err(IdError::Duplicate);
        }
    }
    let raw = found.ok_or(IdError::Missing)?;
    std::str::from_utf8(raw)
        .map(form_decode)
        .map_err(|_| IdError::NotUtf8)
}

fn form_decode_bytes(raw: &[u8]) -> Vec<u8> {
    match std::str::from_utf8(raw) {
        Ok(s) => form_decode(s),
        Err(_) => raw.to_vec(),
    }
}

/// The single value of cookie `name` across every `cookie` header (HTTP/2 may send one header
/// per cookie).
fn cookie_value(headers: &[&[u8]], name: &str) -> Result<Vec<u8>, IdError> {
    let mut found: Option<&[u8]> = None;
    for header in headers {
        for pair in header.split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            let Some(at) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            if pair[..at].trim_ascii() != name.as_bytes() {
                continue;
            }
            let mut value = pair[at + 1..].trim_ascii();
            // RFC 6265: a value may be in double quotes, which are not part of it.
            if value.len() >= 2 && value.starts_with(b"\"") && value.ends_with(b"\"") {
                value = &value[1..value.len() - 1];
            }
            if found.replace(value).is_some() {
                return Err(IdError::Duplicate);
            }
        }
    }
    found.map(<[u8]>::to_vec).ok_or(IdError::Missing)
}

/// The value of [`KEY_HEADER`] for `id`: form-encoded, so that any id (spaces, non-ASCII) is a
/// plain ASCII header value.
pub fn key_header_value(id: &ClientId) -> String {
    form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

/// The id in a [`KEY_HEADER`] value, decoded by the same rules as a query parameter.
pub fn key_from_header(value: &[u8]) -> Result<ClientId, KeyError> {
    let at = |error| KeyError {
        source: KeySource::Header(KEY_HEADER.into()),
        error,
    };
    let value = std::str::from_utf8(value).map_err(|_| at(IdError::NotUtf8))?;
    ClientId::new(form_decode(value)).map_err(at)
}

/// A request without a usable key in its route's source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    /// Where the key was looked for.
    pub source: KeySource,
    /// What was wrong with it.
    pub error: IdError,
}

impl KeyError {
    /// The machine code clients see: the same for every source.
    pub fn code(&self) -> &'static str {
        self.error.code()
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = self.source.describe();
        let decoded = match self.source {
            KeySource::Query(_) | KeySource::Path(_) => " after percent-decoding",
            KeySource::Header(_) | KeySource::Cookie(_) => "",
        };
        match &self.error {
            IdError::Missing => match &self.source {
                KeySource::Path(t) => {
                    write!(
                        f,
                        "the path does not match {}, so it has no key",
                        t.template
                    )
                }
                _ => write!(f, "the request has no {}", &what[4..]),
            },
            IdError::Duplicate => {
                write!(f, "{what} is given more than once; exactly one is allowed")
            }
            IdError::Empty => write!(f, "{what} is empty"),
            IdError::TooLong(n) => write!(
                f,
                "{what} is {n} bytes long; at most {} are allowed",
                crate::MAX_CLIENT_ID_BYTES
            ),
            IdError::NotUtf8 => write!(f, "{what} is not valid UTF-8{decoded}"),
            IdError::ControlChar(at) => {
                write!(f, "{what} contains a control character at byte {at}")
            }
            IdError::NotNumeric => write!(f, "{what}: {}", self.error),
        }
    }
}

impl std::error::Error for KeyError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_and_print_back() {
        for written in [
            "query:client_id",
            "query:room",
            "header:x-user-id",
            "cookie:session",
            "path:/rooms/{key}",
            "path:/v1/{key}/items",
            "path:/{key}",
        ] {
            let source: KeySource = written.parse().unwrap();
            assert_eq!(source.to_string(), written);
        }
        assert_eq!(
            "header:X-User-Id".parse::<KeySource>().unwrap(),
            KeySource::Header("x-user-id".into())
        );
    }

    #[test]
    fn bad_sources_are_refused_with_the_reason() {
        let cases = [
            ("client_id", "no `:`"),
            ("body:x", "none of query"),
            ("query:", "1 to 128"),
            ("header:x user", "byte 1 of the header name"),
            ("header::path", "byte 0"),
            ("header:cookie", "cookie:NAME"),
            ("header:x-poc-key", "routing filter's own header"),
            ("header:X-Poc-Key", "routing filter's own header"),
            ("header:Cookie", "cookie:NAME"),
            ("cookie:a=b", "byte 1 of the cookie name"),
            ("path:rooms/{key}", "starts with /"),
            ("path:/rooms", "exactly one {key}"),
            ("path:/{key}/{key}", "exactly one {key}"),
            ("path:/rooms//{key}", "no empty"),
            ("path:/../{key}", "no empty"),
            ("path:/a%2F/{key}", "holds a byte"),
        ];
        for (written, why) in cases {
            let e = written.parse::<KeySource>().unwrap_err().to_string();
            assert!(e.contains(why), "{written:?}: {e}");
            assert!(e.contains("accepted: query:NAME"), "{e}");
        }
    }

    #[test]
    fn errors_name_their_source_and_keep_the_codes() {
        let header: KeySource = "header:x-user-id".parse().unwrap();
        let e = header.extract(b"/api", &[]).unwrap_err();
        assert_eq!(e.code(), "missing_client_id");
        assert_eq!(e.to_string(), "the request has no header x-user-id");
        let e = header.extract(b"/api", &[b"a", b"b"]).unwrap_err();
        assert_eq!(e.code(), "duplicate_client_id");
        assert_eq!(
            e.to_string(),
            "the header x-user-id is given more than once; exactly one is allowed"
        );
        let path: KeySource = "path:/rooms/{key}".parse().unwrap();
        let e = path.extract(b"/other/x", &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the path does not match /rooms/{key}, so it has no key"
        );
        let e = KeySource::default()
            .extract(b"/join?client_id=", &[])
            .unwrap_err();
        assert_eq!(e.code(), "invalid_client_id");
        assert_eq!(e.to_string(), "the query parameter client_id is empty");
    }

    #[test]
    fn a_request_made_for_a_source_reads_back_as_its_id() {
        let ids = ["abc", "a b", "a&b=c", "Zoë", "100%", "x?z#w", "+"];
        let sources = [
            ("query:client_id", "/join"),
            ("query:room", "/rooms?x=1"),
            ("header:x-user-id", "/api/join"),
            ("path:/rooms/{key}", "/rooms/{key}/join"),
            ("path:/{key}", "/{key}"),
        ];
        for (source, path) in sources {
            let source: KeySource = source.parse().unwrap();
            for id in ids {
                let made = source.request(path, id).unwrap();
                let values: Vec<Vec<u8>> = made
                    .header
                    .iter()
                    .map(|(_, v)| v.as_bytes().to_vec())
                    .collect();
                let values: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
                let back = source.extract(made.path.as_bytes(), &values).unwrap();
                assert_eq!(back.as_str(), id, "{source} {made:?}");
            }
        }
        let cookie: KeySource = "cookie:user".parse().unwrap();
        let made = cookie.request("/join", "alice").unwrap();
        assert_eq!(made.header, Some(("cookie".into(), "user=alice".into())));
        assert!(cookie.request("/join", "a;b").is_err());
        let path: KeySource = "path:/rooms/{key}".parse().unwrap();
        assert!(path.request("/rooms/x", "a").is_err());
        for id in ["a/b", "a\\b", ".", ".."] {
            assert!(path.request("/rooms/{key}", id).is_err(), "{id:?}");
        }
        let header: KeySource = "header:x-user-id".parse().unwrap();
        assert!(header.request("/api", " alice").is_err());
    }

    #[test]
    fn the_key_header_round_trips_every_id() {
        for id in ["abc", "a b", "a+b", "Zoë", "%", "a&b"] {
            let id = ClientId::try_from(id).unwrap();
            let value = key_header_value(&id);
            assert!(value.bytes().all(|b| b.is_ascii_graphic()), "{value}");
            assert_eq!(key_from_header(value.as_bytes()).unwrap(), id);
        }
        assert_eq!(
            key_from_header(b"").unwrap_err().code(),
            "invalid_client_id"
        );
        assert_eq!(
            key_from_header(b"\xff").unwrap_err().code(),
            "invalid_client_id"
        );
    }
}
