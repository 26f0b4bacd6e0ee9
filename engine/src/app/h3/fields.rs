//! Checks every HTTP/3 message's fields get (RFC 9114 §4.2, §4.3): pseudo-header fields
//! first, lowercase names, no connection-specific fields, no bytes a field may not hold.

use super::qpack::Field;

/// Why a message is malformed (a stream error of type H3_MESSAGE_ERROR, §4.1.2).
pub type Malformed = &'static str;

/// Fields HTTP/3 forbids (§4.2): connection-specific ones, and TE other than "trailers".
fn forbidden(f: &Field) -> bool {
    matches!(
        f.name.as_slice(),
        b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding" | b"upgrade"
    ) || (f.name == b"te" && !f.value.eq_ignore_ascii_case(b"trailers"))
}

/// A field name: non-empty, lowercase token characters (RFC 9110 §5.1), or a pseudo-header
/// name (':' then the same).
fn valid_name(name: &[u8]) -> bool {
    let body = name.strip_prefix(b":").unwrap_or(name);
    !body.is_empty()
        && body.iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&c)
        })
}

/// A field value: RFC 9110 §5.5's field-content (visible ASCII, obs-text, and SP or HTAB
/// only between them), which RFC 9114 §10.3 requires; so no control character at all.
fn valid_value(v: &[u8]) -> bool {
    v.iter()
        .all(|&c| c == b' ' || c == b'\t' || (0x21..=0x7e).contains(&c) || c >= 0x80)
        && !v.first().is_some_and(|c| *c == b' ' || *c == b'\t')
        && !v.last().is_some_and(|c| *c == b' ' || *c == b'\t')
}

/// Checks the section's shape and splits it into its pseudo-header fields (in order) and
/// the rest. `allowed` lists the pseudo-headers this kind of message may carry; each may
/// appear once.
pub fn split<'a>(
    fields: &'a [Field],
    allowed: &[&[u8]],
) -> Result<(Vec<&'a Field>, &'a [Field]), Malformed> {
    let pseudo_end = fields
        .iter()
        .position(|f| !f.name.starts_with(b":"))
        .unwrap_or(fields.len());
    let (pseudo, regular) = fields.split_at(pseudo_end);
    let mut seen: Vec<&Field> = Vec::with_capacity(pseudo.len());
    for f in pseudo {
        if !allowed.contains(&f.name.as_slice()) {
            return Err("unknown pseudo-header field");
        }
        if seen.iter().any(|s| s.name == f.name) {
            return Err("repeated pseudo-header field");
        }
        if !valid_value(&f.value) {
            return Err("invalid pseudo-header value");
        }
        seen.push(f);
    }
    for f in regular {
        if f.name.starts_with(b":") {
            return Err("pseudo-header field after a regular field");
        }
        if !valid_name(&f.name) {
            return Err("invalid or uppercase field name");
        }
        if !valid_value(&f.value) {
            return Err("invalid field value");
        }
        if forbidden(f) {
            return Err("connection-specific field");
        }
    }
    Ok((seen, regular))
}

/// The value of pseudo-header `name` among `pseudo`.
pub fn pseudo<'a>(pseudo: &[&'a Field], name: &[u8]) -> Option<&'a [u8]> {
    pseudo
        .iter()
        .find(|f| f.name == name)
        .map(|f| f.value.as_slice())
}

/// The content-length, if present: one value, all digits (RFC 9110 §8.6).
pub fn content_length(regular: &[Field]) -> Result<Option<u64>, Malformed> {
    let mut found = None;
    for f in regular.iter().filter(|f| f.name == b"content-length") {
        let v = std::str::from_utf8(&f.value)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or("invalid content-length")?;
        if found.is_some_and(|prev| prev != v) {
            return Err("conflicting content-length");
        }
        found = Some(v);
    }
    Ok(found)
}

/// A field from text, for tests.
#[cfg(test)]
pub fn f(name: &str, value: &str) -> Field {
    Field {
        name: name.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &[&[u8]] = &[b":method", b":scheme", b":path", b":authority"];

    #[test]
    fn a_well_formed_request_splits() {
        let fields = [f(":method", "GET"), f(":path", "/x"), f("accept", "*/*")];
        let (p, r) = split(&fields, REQ).unwrap();
        assert_eq!(pseudo(&p, b":path"), Some(&b"/x"[..]));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn section_4_2_and_4_3_rules_are_enforced() {
        let bad: &[&[Field]] = &[
            &[f(":method", "GET"), f("accept", "*/*"), f(":path", "/")],
            &[f(":method", "GET"), f(":method", "GET")],
            &[f(":status", "200")],
            &[f("Accept", "x")],
            &[f("connection", "close")],
            &[f("te", "gzip")],
            &[f("x", "a\r\nb")],
            &[f("x", " padded")],
            &[f("", "v")],
            // RFC 9114 §10.3: no control character in a value, not only NUL, CR and LF.
            &[f("x", "a\x01b")],
            &[f("x", "a\x0bb")],
            &[f("x", "a\x7fb")],
            &[f(":method", "G\x1bT")],
        ];
        for fields in bad {
            assert!(split(fields, REQ).is_err(), "{fields:?}");
        }
        assert!(split(&[f("te", "trailers")], REQ).is_ok());
        // Inner SP and HTAB, and obs-text, are field-content.
        assert!(split(&[f("x", "a b\tc caf\u{e9}")], REQ).is_ok());
    }

    #[test]
    fn content_length_must_be_one_number() {
        assert_eq!(content_length(&[f("content-length", "12")]), Ok(Some(12)));
        assert_eq!(content_length(&[]), Ok(None));
        assert!(content_length(&[f("content-length", "1x")]).is_err());
        assert!(content_length(&[f("content-length", "1"), f("content-length", "2")]).is_err());
    }
}
