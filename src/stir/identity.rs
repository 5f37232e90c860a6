//! The SIP `Identity` header (RFC 8224 §4, with errata 6499: base64url).
//!
//! ```text
//! Identity = "Identity" HCOLON signed-identity-digest SEMI ident-info *( SEMI ident-info-params )
//! signed-identity-digest = 1*(base64url-char / ".")
//! ident-info = "info" EQUAL ident-info-uri        ; LAQUOT absoluteURI RAQUOT
//! ident-info-params = ident-info-alg / ident-type / ident-info-extension
//! ```
//!
//! The parser is liberal where carriers differ (parameter order and case, quoted `ppt`,
//! unknown parameters, linear white space, the compact `y` header name) and strict where a
//! lenient reading would hide an attack or a broken signer: duplicate parameters, a digest
//! with other than three segments or with base64 (not base64url) characters, a relative
//! `info`, and anything after `info`'s closing `>` other than `;` (the 2020 Asterisk
//! `;info=<URL>alg=ES256` bug) are refused.

use super::StirCode;
use std::fmt;

/// Identity header values longer than this are refused before any decoding. A SHAKEN value is
/// 450–900 bytes; 4 KiB leaves room for `rcd` with a jCard while bounding work per header.
pub const MAX_IDENTITY_LEN: usize = 4096;

/// Why an Identity header value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("Identity header value is {0} bytes, over the {MAX_IDENTITY_LEN}-byte limit")]
    TooLong(usize),
    #[error("Identity header value is empty")]
    Empty,
    #[error("not an Identity header line (expected \"Identity:\" or \"y:\")")]
    NotIdentityHeader,
    #[error("character {0:?} is not allowed in the signed identity digest (base64url only)")]
    BadDigestChar(char),
    #[error("the PASSporT has {0} dot-separated segments, not 3")]
    SegmentCount(usize),
    #[error("the PASSporT has an empty header, claims or signature segment")]
    EmptySegment,
    #[error("Identity header syntax: {0}")]
    Syntax(&'static str),
    #[error("parameter {0} appears more than once")]
    DuplicateParam(String),
    #[error("parameter {0} has an invalid value")]
    BadParamValue(String),
    #[error("the info parameter is missing")]
    MissingInfo,
    #[error("the info parameter {0:?} is not an absolute URI")]
    InfoNotAbsolute(String),
}

impl IdentityError {
    /// The response this error maps to: 436 for a missing or unusable `info`, 438 otherwise.
    pub fn code(&self) -> StirCode {
        match self {
            IdentityError::MissingInfo | IdentityError::InfoNotAbsolute(_) => {
                StirCode::BadIdentityInfo
            }
            _ => StirCode::InvalidIdentityHeader,
        }
    }
}

/// Whether the signed identity digest carries header and claims (full form) or only the
/// signature (compact form, RFC 8225 §7: header and claims are rebuilt from the SIP request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassportForm {
    Full,
    Compact,
}

/// A parsed Identity header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityHeader {
    jws: String,
    info: String,
    alg: Option<String>,
    ppt: Option<String>,
    /// Other parameters in received order: lower-cased name and unquoted value.
    extensions: Vec<(String, Option<String>)>,
}

impl IdentityHeader {
    /// An Identity value for a compact JWS signed by the gateway's authentication service:
    /// `<jws>;info=<x5u>;alg=ES256;ppt=<ppt>`.
    pub fn new(jws: &str, info: &str, ppt: &str) -> IdentityHeader {
        IdentityHeader {
            jws: jws.to_string(),
            info: info.to_string(),
            alg: Some("ES256".to_string()),
            ppt: Some(ppt.to_string()),
            extensions: Vec::new(),
        }
    }

    /// Parses a header line with its name: `Identity: ...` or the compact `y: ...`, name
    /// case-insensitive.
    pub fn parse_line(line: &str) -> Result<IdentityHeader, IdentityError> {
        let (name, value) = line
            .split_once(':')
            .ok_or(IdentityError::NotIdentityHeader)?;
        let name = name.trim_matches([' ', '\t']);
        if !name.eq_ignore_ascii_case("identity") && !name.eq_ignore_ascii_case("y") {
            return Err(IdentityError::NotIdentityHeader);
        }
        IdentityHeader::parse(value)
    }

    /// Parses a header value (what follows `Identity:`).
    pub fn parse(value: &str) -> Result<IdentityHeader, IdentityError> {
        if value.len() > MAX_IDENTITY_LEN {
            return Err(IdentityError::TooLong(value.len()));
        }
        let unfolded = unfold(value)?;
        let mut p = Cursor {
            s: unfolded.as_bytes(),
            i: 0,
        };
        p.skip_ws();
        if p.at_end() {
            return Err(IdentityError::Empty);
        }
        let start = p.i;
        while let Some(c) = p.peek() {
            if c == b';' || c == b' ' || c == b'\t' {
                break;
            }
            if !(c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.') {
                return Err(IdentityError::BadDigestChar(char::from(c)));
            }
            p.i += 1;
        }
        let jws = &unfolded[start..p.i];
        check_segments(jws)?;

        let mut info: Option<String> = None;
        let mut alg = None;
        let mut ppt = None;
        let mut extensions: Vec<(String, Option<String>)> = Vec::new();
        loop {
            p.skip_ws();
            if p.at_end() {
                break;
            }
            if p.peek() != Some(b';') {
                return Err(IdentityError::Syntax("expected ';' before a parameter"));
            }
            p.i += 1;
            p.skip_ws();
            let name = p.token().ok_or(IdentityError::Syntax("parameter name"))?;
            let name = name.to_ascii_lowercase();
            p.skip_ws();
            let value = if p.peek() == Some(b'=') {
                p.i += 1;
                p.skip_ws();
                Some(if name == "info" {
                    p.info_value()?
                } else {
                    p.gen_value(&name)?
                })
            } else {
                None
            };
            p.skip_ws();
            if !p.at_end() && p.peek() != Some(b';') {
                return Err(IdentityError::Syntax(
                    "unexpected text after a parameter value (missing ';'?)",
                ));
            }
            let seen = info.is_some() && name == "info"
                || alg.is_some() && name == "alg"
                || ppt.is_some() && name == "ppt"
                || extensions.iter().any(|(n, _)| *n == name);
            if seen {
                return Err(IdentityError::DuplicateParam(name));
            }
            match name.as_str() {
                "info" | "alg" | "ppt" => {
                    let v = value.ok_or_else(|| IdentityError::BadParamValue(name.clone()))?;
                    match name.as_str() {
                        "info" => info = Some(v),
                        "alg" => alg = Some(v),
                        _ => ppt = Some(v),
                    }
                }
                _ => extensions.push((name, value)),
            }
        }
        let info = info.ok_or(IdentityError::MissingInfo)?;
        if !is_absolute_uri(&info) {
            return Err(IdentityError::InfoNotAbsolute(info));
        }
        Ok(IdentityHeader {
            jws: jws.to_string(),
            info,
            alg,
            ppt,
            extensions,
        })
    }

    /// The signed identity digest: a compact JWS, or `..signature` in the compact form.
    pub fn jws(&self) -> &str {
        &self.jws
    }

    pub fn form(&self) -> PassportForm {
        if self.jws.starts_with("..") {
            PassportForm::Compact
        } else {
            PassportForm::Full
        }
    }

    /// The third (signature) segment, base64url.
    pub fn signature_b64(&self) -> &str {
        self.jws.rsplit('.').next().unwrap_or("")
    }

    /// The `info` URI without its angle brackets.
    pub fn info(&self) -> &str {
        &self.info
    }

    pub fn alg(&self) -> Option<&str> {
        self.alg.as_deref()
    }

    /// The `ppt` parameter, unquoted.
    pub fn ppt(&self) -> Option<&str> {
        self.ppt.as_deref()
    }

    /// Parameters other than `info`, `alg` and `ppt`, with lower-cased names.
    pub fn extensions(&self) -> &[(String, Option<String>)] {
        &self.extensions
    }

    /// The header line with its full name, `Identity: <value>`.
    pub fn to_header_line(&self) -> String {
        format!("Identity: {self}")
    }
}

/// `<jws>;info=<info>[;alg=..][;ppt=..][;ext...]`: tokens unquoted, other values quoted.
impl fmt::Display for IdentityHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{};info=<{}>", self.jws, self.info)?;
        if let Some(alg) = &self.alg {
            write!(f, ";alg=")?;
            write_gen_value(f, alg)?;
        }
        if let Some(ppt) = &self.ppt {
            write!(f, ";ppt=")?;
            write_gen_value(f, ppt)?;
        }
        for (name, value) in &self.extensions {
            write!(f, ";{name}")?;
            if let Some(v) = value {
                write!(f, "=")?;
                write_gen_value(f, v)?;
            }
        }
        Ok(())
    }
}

fn write_gen_value(f: &mut fmt::Formatter<'_>, v: &str) -> fmt::Result {
    if !v.is_empty() && v.bytes().all(is_token_char) {
        f.write_str(v)
    } else {
        f.write_str("\"")?;
        for c in v.chars() {
            if c == '"' || c == '\\' {
                f.write_str("\\")?;
            }
            write!(f, "{c}")?;
        }
        f.write_str("\"")
    }
}

/// Undoes header folding (CRLF followed by white space); any other CR or LF is an error, since
/// it would end the header.
fn unfold(value: &str) -> Result<String, IdentityError> {
    if !value.contains(['\r', '\n']) {
        return Ok(value.to_string());
    }
    let b = value.as_bytes();
    let mut out = String::with_capacity(value.len());
    let mut i = 0;
    let mut last = 0;
    while i < b.len() {
        match b[i] {
            b'\r' | b'\n' => {
                let mut j = i;
                if b[j] == b'\r' {
                    j += 1;
                }
                if b.get(j) == Some(&b'\n') {
                    j += 1;
                }
                let continues = matches!(b.get(j), Some(b' ') | Some(b'\t'));
                // Trailing CRLF at the very end is tolerated as the header terminator.
                if !continues && j < b.len() {
                    return Err(IdentityError::Syntax("line break inside the header value"));
                }
                out.push_str(&value[last..i]);
                out.push(' ');
                i = j;
                last = j;
            }
            _ => i += 1,
        }
    }
    out.push_str(&value[last..]);
    Ok(out)
}

fn check_segments(jws: &str) -> Result<(), IdentityError> {
    let segments: Vec<&str> = jws.split('.').collect();
    if segments.len() != 3 {
        return Err(IdentityError::SegmentCount(segments.len()));
    }
    let (h, c, s) = (segments[0], segments[1], segments[2]);
    if s.is_empty() || h.is_empty() != c.is_empty() {
        return Err(IdentityError::EmptySegment);
    }
    Ok(())
}

/// RFC 3261 `token` characters.
fn is_token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

/// RFC 3986 absolute URI, checked as far as a verifier needs: a scheme, a colon, a non-empty
/// remainder, and no characters that cannot appear in a URI.
fn is_absolute_uri(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    let scheme_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    scheme_ok
        && !rest.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_graphic() && !matches!(c, b'<' | b'>' | b'"' | b'{' | b'}'))
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn at_end(&self) -> bool {
        self.i >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ') | Some(b'\t')) {
            self.i += 1;
        }
    }

    fn token(&mut self) -> Option<String> {
        let start = self.i;
        while self.peek().is_some_and(is_token_char) {
            self.i += 1;
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    /// `<absoluteURI>`; an unbracketed URI (up to `;` or white space) is accepted too, since
    /// some producers omit the brackets and the URI is checked for being absolute anyway.
    fn info_value(&mut self) -> Result<String, IdentityError> {
        if self.peek() == Some(b'<') {
            self.i += 1;
            let start = self.i;
            while let Some(c) = self.peek() {
                if c == b'>' {
                    let v = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                    self.i += 1;
                    return Ok(v);
                }
                if c == b'<' || c == b' ' || c == b'\t' {
                    return Err(IdentityError::BadParamValue("info".into()));
                }
                self.i += 1;
            }
            Err(IdentityError::Syntax("info URI without closing '>'"))
        } else if self.peek() == Some(b'"') {
            self.quoted("info")
        } else {
            let start = self.i;
            while let Some(c) = self.peek() {
                if c == b';' || c == b' ' || c == b'\t' {
                    break;
                }
                self.i += 1;
            }
            if self.i == start {
                return Err(IdentityError::BadParamValue("info".into()));
            }
            Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
        }
    }

    /// `gen-value = token / host / quoted-string` (RFC 3261).
    fn gen_value(&mut self, name: &str) -> Result<String, IdentityError> {
        if self.peek() == Some(b'"') {
            return self.quoted(name);
        }
        let start = self.i;
        while self
            .peek()
            .is_some_and(|c| is_token_char(c) || matches!(c, b':' | b'[' | b']'))
        {
            self.i += 1;
        }
        if self.i == start {
            return Err(IdentityError::BadParamValue(name.to_string()));
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn quoted(&mut self, name: &str) -> Result<String, IdentityError> {
        self.i += 1;
        let mut out = Vec::new();
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'"' => {
                    return String::from_utf8(out)
                        .map_err(|_| IdentityError::BadParamValue(name.to_string()))
                }
                b'\\' => {
                    let Some(escaped) = self.peek() else { break };
                    if escaped < 0x20 || escaped == 0x7f {
                        return Err(IdentityError::BadParamValue(name.to_string()));
                    }
                    out.push(escaped);
                    self.i += 1;
                }
                c if c < 0x20 && c != b'\t' || c == 0x7f => {
                    return Err(IdentityError::BadParamValue(name.to_string()))
                }
                c => out.push(c),
            }
        }
        Err(IdentityError::Syntax("unterminated quoted string"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "eyJhbGciOiJFUzI1NiIsInBwdCI6InNoYWtlbiIsInR5cCI6InBhc3Nwb3J0IiwieDV1IjoiaHR0cHM6Ly9zaGFrZW4uc2lnbmFsd2lyZS5jbG91ZC9zcC5wZW0ifQ";
    const C: &str = "eyJhdHRlc3QiOiJCIiwiZGVzdCI6eyJ0biI6WyIwMTI1NjcwMDgwMCJdfSwiaWF0IjoxNjE2NDQyNTIzLCJvcmlnIjp7InRuIjoiMDEyNTY1MDA2MDAifSwib3JpZ2lkIjoiZTMyZjQxODktY2I4Ni00NjBmLWJiOTItYmQzYWNiODlmMjljIn0";
    const S: &str =
        "rN3n-2qjP9eVPMViBbK6sVUmN3tMRbI-8ffVs1M7J9KL0q0hMKtdZNBWj_TS5RkvakiDUoSErkDsahh2nRGD8Q";
    const X5U: &str = "https://shaken.signalwire.cloud/sp.pem";

    fn jws() -> String {
        format!("{H}.{C}.{S}")
    }

    /// What a parse is expected to give.
    enum Want {
        Ok {
            alg: Option<&'static str>,
            ppt: Option<&'static str>,
            ext: usize,
        },
        Err(fn(&IdentityError) -> bool, StirCode),
    }

    #[test]
    fn identity_table() {
        let j = jws();
        let ok = |alg, ppt, ext| Want::Ok { alg, ppt, ext };
        let cases: Vec<(String, Want)> = vec![
            // 1. §1.2 carrier form (libstirshaken README).
            (
                format!("{j};info=<{X5U}>;alg=ES256;ppt=shaken"),
                ok(Some("ES256"), Some("shaken"), 0),
            ),
            // 2. RFC 8588 quoted ppt.
            (
                format!("{j};info=<{X5U}>;alg=ES256;ppt=\"shaken\""),
                ok(Some("ES256"), Some("shaken"), 0),
            ),
            // 3. Parameters in another order.
            (
                format!("{j};ppt=shaken;alg=ES256;info=<{X5U}>"),
                ok(Some("ES256"), Some("shaken"), 0),
            ),
            // 4. Upper-case parameter names.
            (
                format!("{j};INFO=<{X5U}>;Alg=ES256;PPT=shaken"),
                ok(Some("ES256"), Some("shaken"), 0),
            ),
            // 5. alg absent (legacy default ES256).
            (
                format!("{j};info=<{X5U}>;ppt=shaken"),
                ok(None, Some("shaken"), 0),
            ),
            // 6. Unknown parameters, with and without values.
            (
                format!("{j};info=<{X5U}>;alg=ES256;ppt=shaken;foo=bar;flag;q=\"x y\""),
                ok(Some("ES256"), Some("shaken"), 3),
            ),
            // 7. Linear white space around separators.
            (
                format!("  {j} ;  info = <{X5U}> ;\talg = ES256 ; ppt = shaken  "),
                ok(Some("ES256"), Some("shaken"), 0),
            ),
            // 8. Folded over two lines.
            (
                format!("{j};info=<{X5U}>\r\n ;alg=ES256;ppt=shaken"),
                ok(Some("ES256"), Some("shaken"), 0),
            ),
            // 9. Compact PASSporT form.
            (
                format!("..{S};info=<{X5U}>;ppt=shaken"),
                ok(None, Some("shaken"), 0),
            ),
            // 10. Only info.
            (format!("{j};info=<{X5U}>"), ok(None, None, 0)),
            // 11. x5u on :8443 (AT&T style).
            (
                format!("{j};info=<https://cert2.sticr.att.net:8443/a.pem>;alg=ES256;ppt=shaken"),
                ok(Some("ES256"), Some("shaken"), 0),
            ),
            // 12. Missing info: 436.
            (
                format!("{j};alg=ES256;ppt=shaken"),
                Want::Err(
                    |e| *e == IdentityError::MissingInfo,
                    StirCode::BadIdentityInfo,
                ),
            ),
            // 13. Relative info: 436.
            (
                format!("{j};info=</sp.pem>;alg=ES256;ppt=shaken"),
                Want::Err(
                    |e| matches!(e, IdentityError::InfoNotAbsolute(_)),
                    StirCode::BadIdentityInfo,
                ),
            ),
            // 14. Empty info: 436.
            (
                format!("{j};info=<>;ppt=shaken"),
                Want::Err(
                    |e| matches!(e, IdentityError::InfoNotAbsolute(_)),
                    StirCode::BadIdentityInfo,
                ),
            ),
            // 15. Asterisk 2020 missing ';' before alg: 438.
            (
                format!("{j};info=<{X5U}>alg=ES256;ppt=shaken"),
                Want::Err(
                    |e| matches!(e, IdentityError::Syntax(_)),
                    StirCode::InvalidIdentityHeader,
                ),
            ),
            // 16. Duplicate ppt.
            (
                format!("{j};info=<{X5U}>;ppt=shaken;ppt=div"),
                Want::Err(
                    |e| matches!(e, IdentityError::DuplicateParam(n) if n == "ppt"),
                    StirCode::InvalidIdentityHeader,
                ),
            ),
            // 17. Duplicate info differing only in case.
            (
                format!("{j};info=<{X5U}>;INFO=<{X5U}>"),
                Want::Err(
                    |e| matches!(e, IdentityError::DuplicateParam(_)),
                    StirCode::InvalidIdentityHeader,
                ),
            ),
            // 18. Duplicate unknown parameter.
            (
                format!("{j};info=<{X5U}>;x=1;X=2"),
                Want::Err(
                    |e| matches!(e, IdentityError::DuplicateParam(_)),
                    StirCode::InvalidIdentityHeader,
                ),
            ),
            // 19. Two segments.
            (
                format!("{H}.{S};info=<{X5U}>"),
                Want::Err(
                    |e| *e == IdentityError::SegmentCount(2),
                    StirCode::InvalidIdentityHeader,
                ),
            ),
            // 20. Four segments.
            (
                format!("{j}.{S};info=<{X5U}>"),
                Want::Err(
                    |e| *e == IdentityError::SegmentCount(4),
                    StirCode::InvalidIdentityHeader,
                ),
            ),
            // 21. '+' in the signature (base64, not base64url).
            (
                format!("{H}.{C}.{}+{};info=<{X5U}>", &S[..10], &S[11..]),
                Want::Err(
                    |e| *e == IdentityError::BadDigestChar('+'),
                    StirCode::InvalidIdentityHeader,
                ),
            ),
            // 22. '/' in the signature.
            (
                format!("{H}.{C}.{}/{};info=<{X5U}>", &S[..10], &S[11..]),
                Want::Err(
                    |e| *e == IdentityError::BadDigestChar('/'),
                    StirCode::InvalidIdentityHeader,
                ),
            ),
            // 23. Padding.
            (
                format!("{j}==;info=<{X5U}>"),
                Want::Err(
                    |e| *e == IdentityError::BadDigestChar('='),
                    StirCode::InvalidIdentityHeader,
                ),
            ),
            // 24. Over 4 KiB.
            (
                format!("{j};info=<{X5U}>;pad={}", "a".repeat(MAX_IDENTITY_LEN)),
                Want::Err(
                    |e| matches!(e, IdentityError::TooLong(_)),
                    StirCode::InvalidIdentityHeader,
                ),
            ),
            // 25. Empty signature segment.
            (
                format!("{H}.{C}.;info=<{X5U}>"),
                Want::Err(
                    |e| *e == IdentityError::EmptySegment,
                    StirCode::InvalidIdentityHeader,
                ),
            ),
            // 26. Empty value.
            (
                "   ".to_string(),
                Want::Err(
                    |e| *e == IdentityError::Empty,
                    StirCode::InvalidIdentityHeader,
                ),
            ),
            // 27. No ';' at all between digest and info.
            (
                format!("{j} info=<{X5U}>"),
                Want::Err(
                    |e| matches!(e, IdentityError::Syntax(_)),
                    StirCode::InvalidIdentityHeader,
                ),
            ),
            // 28. Unterminated info.
            (
                format!("{j};info=<{X5U};ppt=shaken"),
                Want::Err(
                    |e| matches!(e, IdentityError::Syntax(_)),
                    StirCode::InvalidIdentityHeader,
                ),
            ),
            // 29. ppt without a value.
            (
                format!("{j};info=<{X5U}>;ppt"),
                Want::Err(
                    |e| matches!(e, IdentityError::BadParamValue(_)),
                    StirCode::InvalidIdentityHeader,
                ),
            ),
            // 30. A bare line break inside the value.
            (
                format!("{j};info=<{X5U}>\r\n;ppt=shaken"),
                Want::Err(
                    |e| matches!(e, IdentityError::Syntax(_)),
                    StirCode::InvalidIdentityHeader,
                ),
            ),
        ];
        assert!(cases.len() >= 20);
        for (n, (input, want)) in cases.iter().enumerate() {
            let got = IdentityHeader::parse(input);
            match (want, &got) {
                (Want::Ok { alg, ppt, ext }, Ok(h)) => {
                    assert_eq!(h.alg(), *alg, "case {}", n + 1);
                    assert_eq!(h.ppt(), *ppt, "case {}", n + 1);
                    assert_eq!(h.extensions().len(), *ext, "case {}", n + 1);
                    assert!(h.info().starts_with("https://"), "case {}", n + 1);
                }
                (Want::Err(pred, code), Err(e)) => {
                    assert!(pred(e), "case {}: unexpected error {e:?}", n + 1);
                    assert_eq!(e.code(), *code, "case {}", n + 1);
                    assert!(!e.to_string().is_empty());
                }
                _ => panic!("case {}: {input:?} gave {got:?}", n + 1),
            }
        }
    }

    #[test]
    fn header_names_full_and_compact() {
        let j = jws();
        for line in [
            format!("Identity: {j};info=<{X5U}>;alg=ES256;ppt=shaken"),
            format!("identity:{j};info=<{X5U}>;alg=ES256;ppt=shaken"),
            format!("y: {j};info=<{X5U}>;alg=ES256;ppt=shaken"),
            format!("Y :{j};info=<{X5U}>;alg=ES256;ppt=shaken"),
        ] {
            let h = IdentityHeader::parse_line(&line).unwrap();
            assert_eq!(h.ppt(), Some("shaken"));
            assert_eq!(h.jws(), j);
        }
        assert_eq!(
            IdentityHeader::parse_line(&format!("Identity-Info: {j};info=<{X5U}>")),
            Err(IdentityError::NotIdentityHeader)
        );
        assert_eq!(
            IdentityHeader::parse_line("no colon"),
            Err(IdentityError::NotIdentityHeader)
        );
    }

    #[test]
    fn format_round_trips() {
        let j = jws();
        let h = IdentityHeader::new(&j, X5U, "shaken");
        assert_eq!(
            h.to_header_line(),
            format!("Identity: {j};info=<{X5U}>;alg=ES256;ppt=shaken")
        );
        assert_eq!(h.form(), PassportForm::Full);
        assert_eq!(h.signature_b64(), S);
        let parsed = IdentityHeader::parse(&h.to_string()).unwrap();
        assert_eq!(parsed, h);

        let odd = IdentityHeader::parse(&format!(
            "{j};info=<{X5U}>;ppt=\"sha ken\";x=\"a\\\"b\";flag"
        ))
        .unwrap();
        assert_eq!(odd.ppt(), Some("sha ken"));
        assert_eq!(IdentityHeader::parse(&odd.to_string()).unwrap(), odd);

        let compact = IdentityHeader::parse(&format!("..{S};info=<{X5U}>")).unwrap();
        assert_eq!(compact.form(), PassportForm::Compact);
    }

    #[test]
    fn never_panics_on_junk() {
        let j = jws();
        let base = format!("{j};info=<{X5U}>;alg=ES256;ppt=\"shaken\";x=\"\\\"\"");
        // Every prefix (truncation at every byte) and a deterministic stream of random bytes.
        for end in 0..=base.len() {
            let _ = IdentityHeader::parse(&base[..end]);
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let len = (state % 300) as usize;
            let mut bytes = Vec::with_capacity(len);
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                bytes.push((state & 0xff) as u8);
            }
            let s = String::from_utf8_lossy(&bytes);
            let _ = IdentityHeader::parse(&s);
            let _ = IdentityHeader::parse_line(&s);
        }
        // Multi-byte characters everywhere.
        let _ = IdentityHeader::parse("é;info=<https://é>;ppt=\"é\"");
        let _ = IdentityHeader::parse(&format!("{j};info=<https://é>;ppt=é"));
    }
}
