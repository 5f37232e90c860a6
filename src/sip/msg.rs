//! SIP messages: parsing and validation on rsipstack's parser, and compact builders for what the
//! B2BUA sends.
//!
//! Incoming messages are parsed once (in the transport task) into an rsipstack [`SipMessage`]
//! plus an [`Info`] holding the fields every layer needs, so the engine never re-parses headers.
//! Outgoing messages are written as text directly: a B2BUA never forwards a message, it writes a
//! new one per leg, which is also what keeps one side's addressing out of the other.

use rsipstack::sip::{Header, Method, Request, Response, SipMessage};
use std::fmt::Write as _;
use std::net::SocketAddr;

/// What the gateway supports; sent in Allow on OPTIONS and 405 answers.
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, PRACK";
pub const ACCEPT: &str = "application/sdp, application/dtmf-relay, application/dtmf";
pub const USER_AGENT: &str = concat!("riptide/", env!("CARGO_PKG_VERSION"));
/// Largest SIP message accepted on any transport.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// The fields of a message that the transaction layer and the engine use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub call_id: String,
    pub cseq: u32,
    pub cseq_method: Method,
    pub from_tag: Option<String>,
    pub to_tag: Option<String>,
    /// Top Via branch parameter.
    pub branch: String,
    /// Top Via sent-by (`host[:port]`).
    pub via_sent_by: String,
    pub max_forwards: Option<u32>,
    /// The top Via asks for `rport` (RFC 3581).
    pub rport: bool,
}

/// A message that could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadMessage {
    /// Why, for logs and the reason phrase.
    pub reason: String,
    /// A `400 Bad Request` (or `501`) to send back, when the message carried enough to address one.
    pub reply: Option<Vec<u8>>,
}

/// Parses and validates one complete message (one UDP datagram, or one framed TCP message).
pub fn parse(bytes: &[u8]) -> Result<(SipMessage, Info), BadMessage> {
    if bytes.len() > MAX_MESSAGE {
        return Err(bad(bytes, 513, "Message Too Large"));
    }
    let msg = match rsipstack::sip::parser::parse_message(bytes) {
        Ok(m) => m,
        Err(e) => {
            let text = e.to_string();
            // An unknown method is well-formed SIP that we do not implement.
            if unknown_method(bytes) {
                return Err(bad(bytes, 501, "Not Implemented"));
            }
            return Err(bad(bytes, 400, &format!("Bad Request ({})", short(&text))));
        }
    };
    match info(&msg, bytes) {
        Ok(i) => Ok((msg, i)),
        Err(reason) => Err(bad(bytes, 400, &format!("Bad Request ({reason})"))),
    }
}

fn short(s: &str) -> String {
    let s: String = s
        .chars()
        .filter(|c| !c.is_control())
        .take(80)
        .collect::<String>();
    s.replace('"', "'")
}

fn looks_like_request(bytes: &[u8]) -> bool {
    !bytes.starts_with(b"SIP/")
}

/// A request line `TOKEN SP URI SP SIP/2.0` whose method is a valid token that the parser
/// does not know (RFC 3261 §21.5.2: 501).
fn unknown_method(bytes: &[u8]) -> bool {
    let line = bytes.split(|b| *b == b'\n').next().unwrap_or(&[]);
    let Ok(line) = std::str::from_utf8(line) else {
        return false;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(_uri), Some("SIP/2.0"), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let is_token = !method.is_empty()
        && method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b));
    is_token && method.parse::<Method>().is_err()
}

fn info(msg: &SipMessage, raw: &[u8]) -> Result<Info, String> {
    let headers = match msg {
        SipMessage::Request(r) => &r.headers,
        SipMessage::Response(r) => &r.headers,
    };
    let h = HeaderView(headers);
    let call_id = h
        .find(|h| matches!(h, Header::CallId(_)))
        .ok_or("missing Call-ID")?;
    if call_id.is_empty() {
        return Err("empty Call-ID".into());
    }
    let cseq_raw = h
        .find(|h| matches!(h, Header::CSeq(_)))
        .ok_or("missing CSeq")?;
    let (num, method) = cseq_raw
        .split_once(|c: char| c.is_ascii_whitespace())
        .ok_or("malformed CSeq")?;
    let cseq: u32 = num.trim().parse().map_err(|_| "malformed CSeq number")?;
    let cseq_method: Method = method
        .trim()
        .parse()
        .map_err(|_| "unknown CSeq method".to_string())?;
    if let SipMessage::Request(r) = msg {
        if r.method != cseq_method && r.method != Method::Ack && r.method != Method::Cancel {
            return Err("CSeq method does not match the request method".into());
        }
        if (r.method == Method::Ack || r.method == Method::Cancel) && cseq_method != r.method {
            return Err("CSeq method does not match the request method".into());
        }
    }
    let from = h
        .find(|h| matches!(h, Header::From(_)))
        .ok_or("missing From")?;
    let to = h.find(|h| matches!(h, Header::To(_))).ok_or("missing To")?;
    let via = h
        .find(|h| matches!(h, Header::Via(_)))
        .ok_or("missing Via")?;
    let top_via = first_of_list(&via);
    let (sent_by, branch) = parse_via(top_via).ok_or("malformed Via")?;
    let rport = top_via.split(';').skip(1).any(|p| {
        p.split('=')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case("rport")
    });
    let branch = branch.ok_or("Via without branch")?;
    let max_forwards = match h.find(|h| matches!(h, Header::MaxForwards(_))) {
        Some(v) => Some(
            v.trim()
                .parse()
                .map_err(|_| "malformed Max-Forwards".to_string())?,
        ),
        None => None,
    };
    // Content-Length must agree with what arrived: rsipstack truncates silently otherwise.
    if let Some(cl) = h.find(|h| matches!(h, Header::ContentLength(_))) {
        let cl: usize = cl
            .trim()
            .parse()
            .map_err(|_| "malformed Content-Length".to_string())?;
        let body_len = match msg {
            SipMessage::Request(r) => r.body.len(),
            SipMessage::Response(r) => r.body.len(),
        };
        if cl != body_len {
            return Err(format!(
                "Content-Length {cl} but {body_len} body bytes arrived"
            ));
        }
        let _ = raw;
    }
    Ok(Info {
        call_id,
        cseq,
        cseq_method,
        from_tag: param(&from, "tag"),
        to_tag: param(&to, "tag"),
        branch,
        via_sent_by: sent_by,
        max_forwards,
        rport,
    })
}

/// The port of a Via sent-by (`host:port`, `[v6]:port`), if it has one.
pub fn sent_by_port(sent_by: &str) -> Option<u16> {
    let s = sent_by.trim();
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once("]:").and_then(|(_, p)| p.parse().ok());
    }
    match s.split_once(':') {
        Some((_, p)) if !p.contains(':') => p.parse().ok(),
        _ => None,
    }
}

struct HeaderView<'a>(&'a rsipstack::sip::Headers);

impl HeaderView<'_> {
    fn find(&self, pred: impl Fn(&Header) -> bool) -> Option<String> {
        let h = self.0.iter().find(|h| pred(h))?;
        // The headers looked up here are all untyped variants: read their value without
        // rendering the whole header.
        Some(
            match h {
                Header::CallId(v) => v.value(),
                Header::CSeq(v) => v.value(),
                Header::From(v) => v.value(),
                Header::To(v) => v.value(),
                Header::Via(v) => v.value(),
                Header::MaxForwards(v) => v.value(),
                Header::ContentLength(v) => v.value(),
                other => return Some(header_value(other)),
            }
            .trim()
            .to_string(),
        )
    }
}

/// The value part of a header (after `Name: `).
pub fn header_value(h: &Header) -> String {
    let s = h.to_string();
    match s.split_once(':') {
        Some((_, v)) => v.trim().to_string(),
        None => s,
    }
}

/// The name part of a header.
pub fn header_name(h: &Header) -> String {
    let s = h.to_string();
    s.split_once(':')
        .map(|(n, _)| n.trim().to_string())
        .unwrap_or_default()
}

/// All values of headers with this name (case-insensitive, compact forms expanded by rsipstack).
pub fn header_values(headers: &rsipstack::sip::Headers, name: &str) -> Vec<String> {
    headers
        .iter()
        .filter_map(|h| {
            let s = h.to_string();
            let (n, v) = s.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
        .collect()
}

/// The option-tag lists of the headers `names` (`Require`, `Supported` and its compact form
/// `k`, …) include `tag` (case-insensitive).
pub fn lists_option(headers: &rsipstack::sip::Headers, names: &[&str], tag: &str) -> bool {
    names.iter().any(|name| {
        header_values(headers, name)
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(tag))
    })
}

pub fn first_header(headers: &rsipstack::sip::Headers, name: &str) -> Option<String> {
    header_values(headers, name).into_iter().next()
}

/// The first element of a comma-separated header value, respecting quotes and angle brackets.
pub fn first_of_list(v: &str) -> &str {
    split_list(v).into_iter().next().unwrap_or(v)
}

/// Splits a comma-separated header value, respecting quotes and angle brackets.
pub fn split_list(v: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0usize);
    let bytes = v.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b'<' if !quoted => depth += 1,
            b'>' if !quoted => depth -= 1,
            b',' if !quoted && depth <= 0 => {
                out.push(v[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(v[start..].trim());
    out.retain(|s| !s.is_empty());
    out
}

/// `SIP/2.0/UDP host:port;branch=z9..;rport` → (`host:port`, branch).
fn parse_via(v: &str) -> Option<(String, Option<String>)> {
    let v = v.trim();
    let (proto, rest) = v.split_once(|c: char| c.is_ascii_whitespace())?;
    if !proto.to_ascii_uppercase().starts_with("SIP/2.0/") {
        return None;
    }
    let rest = rest.trim();
    let mut parts = rest.split(';');
    let sent_by = parts.next()?.trim().to_string();
    if sent_by.is_empty() {
        return None;
    }
    let mut branch = None;
    for p in parts {
        let (k, val) = p.split_once('=').unwrap_or((p, ""));
        if k.trim().eq_ignore_ascii_case("branch") && !val.trim().is_empty() {
            branch = Some(val.trim().to_string());
        }
    }
    Some((sent_by, branch))
}

/// A header parameter (`;tag=...`) outside the `<...>` URI part.
pub fn param(header_value: &str, name: &str) -> Option<String> {
    let after_uri = match header_value.rfind('>') {
        Some(i) => &header_value[i + 1..],
        None => header_value,
    };
    after_uri.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// The URI inside a name-addr (`"Alice" <sip:a@b>;tag=1` → `sip:a@b`) or an addr-spec.
pub fn addr_uri(header_value: &str) -> &str {
    let v = header_value.trim();
    if let (Some(s), Some(e)) = (v.find('<'), v.find('>')) {
        if s < e {
            return &v[s + 1..e];
        }
    }
    v.split(';').next().unwrap_or(v).trim()
}

/// The user part of a SIP/SIPS/tel URI (`sip:+1215@h` → `+1215`, `tel:+1215;x` → `+1215`).
pub fn uri_user(uri: &str) -> Option<&str> {
    let uri = uri.trim();
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))
        .or_else(|| uri.strip_prefix("SIP:"));
    if let Some(rest) = rest {
        let at = rest.find('@')?;
        let user = &rest[..at];
        return Some(user.split(';').next().unwrap_or(user));
    }
    let tel = uri.strip_prefix("tel:")?;
    Some(tel.split(';').next().unwrap_or(tel))
}

/// Whether a SIP URI names its transport: `sips:`, or a `transport=` parameter.
pub fn uri_names_transport(uri: &str) -> bool {
    let uri = uri.trim();
    uri.get(..5)
        .is_some_and(|s| s.eq_ignore_ascii_case("sips:"))
        || uri_has_transport_param(uri)
}

/// The Record-Route entries of a message, in order (each header may list several): a UAS's
/// route set as it is, a UAC's reversed (RFC 3261 §12.1).
pub fn record_route(headers: &rsipstack::sip::Headers) -> Vec<String> {
    header_values(headers, "Record-Route")
        .iter()
        .flat_map(|v| split_list(v).into_iter().map(str::to_string))
        .collect()
}

/// Whether a route's URI has the `lr` parameter (RFC 3261 §19.1.1): a loose router.
pub fn uri_is_loose_router(uri: &str) -> bool {
    uri_param(uri, "lr").is_some()
}

/// A SIP URI parameter's value (RFC 3261 §19.1.1; names compared in any case): `Some("")` for
/// a flag such as `lr`, `None` when absent. The user part's own `;` parameters and the headers
/// after `?` are not looked at.
pub fn uri_param<'a>(uri: &'a str, name: &str) -> Option<&'a str> {
    let uri = uri.trim();
    let rest = uri.split_once(':').map_or(uri, |(_, r)| r);
    let rest = rest.find('@').map_or(rest, |i| &rest[i + 1..]);
    let rest = rest.split('?').next().unwrap_or("");
    rest.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Whether a SIP URI has a `transport=` parameter.
pub fn uri_has_transport_param(uri: &str) -> bool {
    uri_param(uri, "transport").is_some()
}

/// Host and port of a SIP URI, and its transport parameter (`udp` when absent).
pub fn uri_target(uri: &str) -> Option<(String, Option<u16>, Transport)> {
    let uri = uri.trim();
    let (secure, rest) = if let Some(r) = uri.strip_prefix("sips:") {
        (true, r)
    } else {
        (false, uri.strip_prefix("sip:")?)
    };
    let rest = match rest.find('@') {
        Some(i) => &rest[i + 1..],
        None => rest,
    };
    let hostport = rest.split(';').next()?.split('?').next()?;
    let transport = match uri_param(uri, "transport").map(str::to_ascii_lowercase) {
        Some(t) if t == "tcp" => Transport::Tcp,
        Some(t) if t == "tls" => Transport::Tls,
        Some(_) => Transport::Udp,
        None if secure => Transport::Tls,
        None => Transport::Udp,
    };
    let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
        let (h, rest) = h.split_once(']')?;
        let port = rest.strip_prefix(':').and_then(|p| p.parse().ok());
        (h.to_string(), port)
    } else if let Some((h, p)) = hostport.rsplit_once(':') {
        (h.to_string(), Some(p.parse().ok()?))
    } else {
        (hostport.to_string(), None)
    };
    if host.is_empty() {
        return None;
    }
    Some((host, port, transport))
}

/// Resolves a SIP URI to a socket address. Only IP literals are resolved here: trunk host names
/// (ADR 0020, 0021), the names of a dialog's next hop and those of redirect targets (ADR 0023)
/// are looked up by the gateway.
pub fn uri_socket(uri: &str) -> Option<(SocketAddr, Transport)> {
    let (host, port, transport) = uri_target(uri)?;
    let ip: std::net::IpAddr = host.parse().ok()?;
    Some((
        SocketAddr::new(ip, port.unwrap_or(transport.default_port())),
        transport,
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// The port a URI without one means (RFC 3261 §19.1.2): 5061 for TLS, 5060 otherwise.
    pub fn default_port(self) -> u16 {
        if self == Transport::Tls {
            5061
        } else {
            5060
        }
    }

    pub fn via_name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }
    pub fn is_reliable(self) -> bool {
        self != Transport::Udp
    }
}

/// Best-effort 400 (or other status) for a message that failed to parse: built from the raw
/// lines when Via, From, To, Call-ID and CSeq can be found. Responses never get a reply.
fn bad(bytes: &[u8], code: u16, reason: &str) -> BadMessage {
    let reply = if looks_like_request(bytes) {
        raw_reply(bytes, code, reason)
    } else {
        None
    };
    BadMessage {
        reason: reason.to_string(),
        reply,
    }
}

fn raw_reply(bytes: &[u8], code: u16, reason: &str) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let head = text.split("\r\n\r\n").next()?;
    let mut lines = head.split("\r\n");
    let start = lines.next()?;
    // A request line is METHOD SP URI SP SIP/2.0; anything else is not worth answering.
    if !start.ends_with("SIP/2.0") {
        return None;
    }
    let mut vias = Vec::new();
    let (mut from, mut to, mut call_id, mut cseq) = (None, None, None, None);
    for l in lines {
        let Some((n, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match n.trim().to_ascii_lowercase().as_str() {
            "via" | "v" => vias.push(v),
            "from" | "f" => from = Some(v),
            "to" | "t" => to = Some(v),
            "call-id" | "i" => call_id = Some(v),
            "cseq" => cseq = Some(v),
            _ => {}
        }
    }
    if vias.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(512);
    let _ = write!(out, "SIP/2.0 {code} {reason}\r\n");
    for v in vias {
        let _ = write!(out, "Via: {v}\r\n");
    }
    let _ = write!(
        out,
        "From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {}\r\nServer: {USER_AGENT}\r\nContent-Length: 0\r\n\r\n",
        from?, to?, call_id?, cseq?
    );
    Some(out.into_bytes())
}

/// A Warning header value (RFC 3261 §20.43, code 399) for `text`. The text often quotes what a
/// peer sent (an SDP error, a codec name), so quotes, backslashes and control characters are
/// dropped to keep the quoted-string well-formed.
pub fn warning(text: &str) -> String {
    let text: String = text
        .chars()
        .filter(|c| !c.is_control() && *c != '"' && *c != '\\')
        .take(160)
        .collect();
    format!("399 riptide \"{text}\"")
}

/// Extra headers and body for a built message.
#[derive(Debug, Default, Clone)]
pub struct Extra<'a> {
    pub headers: Vec<(&'a str, String)>,
    /// Content-Type and body.
    pub body: Option<(&'a str, &'a [u8])>,
}

impl<'a> Extra<'a> {
    pub fn none() -> Self {
        Extra::default()
    }
    /// A header line; CR and LF in the value are replaced so that no value, whatever its
    /// origin, can end the header early.
    pub fn header(mut self, name: &'a str, value: impl Into<String>) -> Self {
        let mut v: String = value.into();
        if v.contains(['\r', '\n']) {
            v = v.replace(['\r', '\n'], " ");
        }
        self.headers.push((name, v));
        self
    }
    pub fn sdp(mut self, sdp: &'a [u8]) -> Self {
        self.body = Some(("application/sdp", sdp));
        self
    }
}

/// A response to `req`: Via (with `received`/`rport` filled per RFC 3581), From, To (with our
/// tag added when given and absent), Call-ID and CSeq copied from the request.
pub fn response(
    req: &Request,
    src: SocketAddr,
    code: u16,
    reason: &str,
    to_tag: Option<&str>,
    extra: &Extra<'_>,
) -> Vec<u8> {
    let mut out = String::with_capacity(768);
    let reason = reason.replace(['\r', '\n'], " ");
    let _ = write!(out, "SIP/2.0 {code} {reason}\r\n");
    // One pass over the request's headers, in their order; Via first-in-list gets rport.
    let mut first_via = true;
    let (mut from, mut to, mut call_id, mut cseq) = (None, None, None, None);
    for h in req.headers.iter() {
        match h {
            Header::Via(v) => {
                for one in split_list(v.value()) {
                    if first_via {
                        let _ = write!(out, "Via: {}\r\n", fill_rport(one, src));
                        first_via = false;
                    } else {
                        let _ = write!(out, "Via: {one}\r\n");
                    }
                }
            }
            Header::From(v) if from.is_none() => from = Some(v.value()),
            Header::To(v) if to.is_none() => to = Some(v.value()),
            Header::CallId(v) if call_id.is_none() => call_id = Some(v.value()),
            Header::CSeq(v) if cseq.is_none() => cseq = Some(v.value()),
            _ => {}
        }
    }
    if let Some(v) = from {
        let _ = write!(out, "From: {v}\r\n");
    }
    if let Some(to) = to {
        match to_tag {
            Some(tag) if param(to, "tag").is_none() => {
                let _ = write!(out, "To: {to};tag={tag}\r\n");
            }
            _ => {
                let _ = write!(out, "To: {to}\r\n");
            }
        }
    }
    if let Some(v) = call_id {
        let _ = write!(out, "Call-ID: {v}\r\n");
    }
    if let Some(v) = cseq {
        let _ = write!(out, "CSeq: {v}\r\n");
    }
    finish(out, extra)
}

fn finish(mut out: String, extra: &Extra<'_>) -> Vec<u8> {
    for (n, v) in &extra.headers {
        let _ = write!(out, "{n}: {v}\r\n");
    }
    let _ = write!(out, "Server: {USER_AGENT}\r\n");
    let mut bytes = match extra.body {
        Some((ct, body)) => {
            let _ = write!(
                out,
                "Content-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let mut b = out.into_bytes();
            b.extend_from_slice(body);
            return b;
        }
        None => {
            out.push_str("Content-Length: 0\r\n\r\n");
            out.into_bytes()
        }
    };
    bytes.shrink_to_fit();
    bytes
}

/// RFC 3581: fill `rport` with the source port and add `received` with the source address.
fn fill_rport(via: &str, src: SocketAddr) -> String {
    let mut out = String::with_capacity(via.len() + 40);
    let mut has_rport = false;
    for (i, p) in via.split(';').enumerate() {
        if i > 0 {
            out.push(';');
        }
        let (k, _) = p.split_once('=').unwrap_or((p, ""));
        let k = k.trim();
        if i > 0 && k.eq_ignore_ascii_case("rport") {
            has_rport = true;
            let _ = write!(out, "rport={}", src.port());
        } else if i > 0 && k.eq_ignore_ascii_case("received") {
            // Replaced below with the address we actually saw.
            out.pop();
        } else {
            out.push_str(p);
        }
    }
    let _ = write!(out, ";received={}", src.ip());
    let _ = has_rport;
    out
}

/// Everything needed to write a request.
#[derive(Debug, Clone)]
pub struct RequestSpec<'a> {
    pub method: &'a str,
    pub uri: &'a str,
    /// Our Via sent-by, `host:port`.
    pub via_host: &'a str,
    pub transport: Transport,
    pub branch: &'a str,
    /// Full From value including our tag.
    pub from: &'a str,
    /// Full To value (with the remote tag inside a dialog).
    pub to: &'a str,
    pub call_id: &'a str,
    pub cseq: u32,
    /// The CSeq method when it differs from `method` (never: kept for clarity of ACK/CANCEL).
    pub contact: Option<&'a str>,
    pub routes: &'a [String],
    pub max_forwards: u32,
}

pub fn request(spec: &RequestSpec<'_>, extra: &Extra<'_>) -> Vec<u8> {
    let mut out = String::with_capacity(768);
    let _ = write!(
        out,
        "{} {} SIP/2.0\r\nVia: SIP/2.0/{} {};branch={};rport\r\nMax-Forwards: {}\r\n",
        spec.method,
        spec.uri,
        spec.transport.via_name(),
        spec.via_host,
        spec.branch,
        spec.max_forwards
    );
    for r in spec.routes {
        let _ = write!(out, "Route: {r}\r\n");
    }
    let _ = write!(
        out,
        "From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} {}\r\n",
        spec.from, spec.to, spec.call_id, spec.cseq, spec.method
    );
    if let Some(c) = spec.contact {
        let _ = write!(out, "Contact: {c}\r\n");
    }
    let _ = write!(out, "User-Agent: {USER_AGENT}\r\n");
    // finish() writes Server; requests carry User-Agent instead.
    let mut bytes = finish_request(out, extra);
    bytes.shrink_to_fit();
    bytes
}

fn finish_request(mut out: String, extra: &Extra<'_>) -> Vec<u8> {
    for (n, v) in &extra.headers {
        let _ = write!(out, "{n}: {v}\r\n");
    }
    match extra.body {
        Some((ct, body)) => {
            let _ = write!(
                out,
                "Content-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let mut b = out.into_bytes();
            b.extend_from_slice(body);
            b
        }
        None => {
            out.push_str("Content-Length: 0\r\n\r\n");
            out.into_bytes()
        }
    }
}

/// Status code and reason phrase of a response.
pub fn status(resp: &Response) -> (u16, String) {
    (
        resp.status_code.code(),
        resp.reason_phrase()
            .map(|s| s.to_string())
            .unwrap_or_else(|| resp.status_code.text().to_string()),
    )
}

/// Random token for tags, branches and Call-IDs.
pub fn token(len: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// A new RFC 3261 branch.
pub fn branch() -> String {
    format!("z9hG4bK{}", token(16))
}

/// True when a `Request` is one of ours to keep in `Request` form; helper for matching.
pub fn method_of(msg: &SipMessage) -> Option<&Method> {
    match msg {
        SipMessage::Request(r) => Some(&r.method),
        SipMessage::Response(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uri_names_its_transport_by_scheme_or_parameter_only() {
        for named in [
            "sips:pbx.example",
            "SIPS:pbx.example",
            "sip:pbx.example;transport=tcp",
            "sip:u@pbx.example:5070;lr;Transport=UDP",
        ] {
            assert!(uri_names_transport(named), "{named}");
        }
        for not in [
            "sip:pbx.example",
            "sip:transport=tcp@pbx.example",
            "sip:pbx.example;lr",
            "sip:pbx.example?transport=tcp",
        ] {
            assert!(!uri_names_transport(not), "{not}");
        }
    }

    #[test]
    fn the_transport_parameter_and_lr_are_read_in_any_case() {
        for (uri, t) in [
            ("sip:pbx.example;transport=tcp", Transport::Tcp),
            ("sip:pbx.example;Transport=TCP", Transport::Tcp),
            ("sip:pbx.example;TRANSPORT=tls", Transport::Tls),
            ("sip:pbx.example;transport=udp", Transport::Udp),
            ("sip:pbx.example", Transport::Udp),
            ("sips:pbx.example", Transport::Tls),
        ] {
            assert_eq!(uri_target(uri).map(|(_, _, t)| t), Some(t), "{uri}");
        }
        assert!(uri_is_loose_router("sip:p.example;lr"));
        assert!(uri_is_loose_router("sip:p.example;LR=on;transport=tcp"));
        assert!(!uri_is_loose_router("sip:p.example"));
        assert!(!uri_is_loose_router("sip:lr@p.example;maddr=x"));
    }

    const INVITE: &str = "INVITE sip:answer@127.0.0.1:5070 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1;rport\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-0\r\n\
Max-Forwards: 70\r\n\
From: \"Alice\" <sip:+12155551212@127.0.0.1:5061>;tag=abc\r\n\
To: <sip:answer@127.0.0.1:5070>\r\n\
Call-ID: 1-2@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:alice@127.0.0.1:5061>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\r\nv=0\n";

    #[test]
    fn parses_and_extracts_info() {
        let (msg, info) = parse(INVITE.as_bytes()).expect("valid INVITE");
        assert!(msg.is_request());
        assert_eq!(info.call_id, "1-2@127.0.0.1");
        assert_eq!(info.cseq, 1);
        assert_eq!(info.cseq_method, Method::Invite);
        assert_eq!(info.from_tag.as_deref(), Some("abc"));
        assert_eq!(info.to_tag, None);
        assert_eq!(info.branch, "z9hG4bK-1");
        assert_eq!(info.via_sent_by, "127.0.0.1:5061");
        assert_eq!(info.max_forwards, Some(70));
    }

    #[test]
    fn compact_forms_are_understood() {
        let m =
            "OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nv: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKc\r\n\
f: <sip:a@b>;tag=1\r\nt: <sip:x@127.0.0.1>\r\ni: cid\r\nCSeq: 7 OPTIONS\r\nl: 0\r\n\r\n";
        let (_, info) = parse(m.as_bytes()).expect("compact form");
        assert_eq!(info.call_id, "cid");
        assert_eq!(info.cseq, 7);
    }

    #[test]
    fn bad_cseq_gets_400_with_reason() {
        let m = INVITE.replace("CSeq: 1 INVITE", "CSeq: one INVITE");
        let err = parse(m.as_bytes()).expect_err("bad CSeq");
        assert!(err.reason.contains("CSeq"), "{}", err.reason);
        let reply = String::from_utf8(err.reply.expect("a 400 can be addressed")).unwrap();
        assert!(reply.starts_with("SIP/2.0 400 Bad Request"), "{reply}");
        assert!(reply.contains("Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1"));
        assert!(reply.contains("Call-ID: 1-2@127.0.0.1"));
    }

    #[test]
    fn content_length_mismatch_is_rejected() {
        let m = INVITE.replace("Content-Length: 4", "Content-Length: 40");
        let err = parse(m.as_bytes()).expect_err("short body");
        assert!(err.reason.contains("Content-Length"), "{}", err.reason);
    }

    #[test]
    fn garbage_gets_no_reply() {
        let err = parse(b"\x00\x01hello world\r\n\r\n").expect_err("garbage");
        assert!(err.reply.is_none());
        let err = parse(b"SIP/2.0 200 OK\r\n\r\n").expect_err("response without headers");
        assert!(err.reply.is_none());
    }

    #[test]
    fn cseq_method_mismatch_is_rejected() {
        let m = INVITE.replace("CSeq: 1 INVITE", "CSeq: 1 BYE");
        assert!(parse(m.as_bytes()).is_err());
    }

    #[test]
    fn response_fills_rport_and_received_and_adds_tag() {
        let (msg, _) = parse(INVITE.as_bytes()).unwrap();
        let SipMessage::Request(req) = msg else {
            panic!("request expected")
        };
        let src: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let r = response(&req, src, 180, "Ringing", Some("xyz"), &Extra::none());
        let r = String::from_utf8(r).unwrap();
        assert!(r.contains("Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1;rport=40000;received=127.0.0.1\r\n"), "{r}");
        assert!(r.contains("Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-0\r\n"));
        assert!(r.contains("To: <sip:answer@127.0.0.1:5070>;tag=xyz\r\n"));
        let (parsed, info) = parse(r.as_bytes()).expect("our response parses");
        assert!(parsed.is_response());
        assert_eq!(info.to_tag.as_deref(), Some("xyz"));
    }

    #[test]
    fn warning_text_from_a_peer_stays_one_quoted_string() {
        assert_eq!(
            warning("no common codec"),
            "399 riptide \"no common codec\""
        );
        assert_eq!(
            warning("bad \"SDP\"\r\nX: 1 \\"),
            "399 riptide \"bad SDPX: 1 \""
        );
    }

    #[test]
    fn uri_helpers() {
        assert_eq!(
            uri_user("sip:+12155551213@127.0.0.1:5070"),
            Some("+12155551213")
        );
        assert_eq!(
            uri_user("tel:+12155551213;phone-context=x"),
            Some("+12155551213")
        );
        assert_eq!(uri_user("sip:127.0.0.1"), None);
        assert_eq!(
            uri_socket("sip:127.0.0.1:5080;transport=udp"),
            Some(("127.0.0.1:5080".parse().unwrap(), Transport::Udp))
        );
        assert_eq!(
            uri_socket("sip:bob@127.0.0.1;transport=TCP"),
            Some(("127.0.0.1:5060".parse().unwrap(), Transport::Tcp))
        );
        assert_eq!(addr_uri("\"A, B\" <sip:a@b;lr>;tag=1"), "sip:a@b;lr");
        assert_eq!(
            param("\"A\" <sip:a@b;tag=no>;tag=yes", "tag").as_deref(),
            Some("yes")
        );
        assert_eq!(
            split_list("<sip:a,b>, <sip:c>"),
            vec!["<sip:a,b>", "<sip:c>"]
        );
    }

    #[test]
    fn built_request_parses() {
        let spec = RequestSpec {
            method: "INVITE",
            uri: "sip:answer@127.0.0.1:5080",
            via_host: "127.0.0.1:5072",
            transport: Transport::Udp,
            branch: "z9hG4bKtest",
            from: "<sip:+1215@127.0.0.1:5072>;tag=t1",
            to: "<sip:answer@127.0.0.1:5080>",
            call_id: "cid-1",
            cseq: 1,
            contact: Some("<sip:riptide@127.0.0.1:5072>"),
            routes: &["<sip:127.0.0.1:5090;lr>".to_string()],
            max_forwards: 70,
        };
        let b = request(&spec, &Extra::none().sdp(b"v=0\r\n"));
        let (msg, info) = parse(&b).expect("our INVITE parses");
        assert_eq!(info.branch, "z9hG4bKtest");
        let SipMessage::Request(r) = msg else {
            panic!("request expected")
        };
        assert_eq!(r.body, b"v=0\r\n");
        assert_eq!(
            header_values(&r.headers, "Route"),
            vec!["<sip:127.0.0.1:5090;lr>"]
        );
    }
}
