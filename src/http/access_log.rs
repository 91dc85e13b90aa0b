//! The access log: one line per request, formatted straight into the worker thread's buffer
//! (no `fmt` machinery, no allocation, no system call) and written by [`LogBuffer`]'s
//! background thread. `log.access_format` picks the layout: `text` and `json` keep the layout
//! of the `tracing` lines around them, so log pipelines read both alike; `combined` is Apache's
//! combined format with nginx-style `rt=`/`urt=` fields at the end.
//!
//! Never logged: hosts (a signed preview host is a credential), queries, tokens, cookies, the
//! referer (it may name a signed preview host: `combined` prints `-`).

use std::cell::RefCell;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, Version};

use crate::base::log_buffer::{Full, LogBuffer, Output};
use crate::config::server::{AccessFormat, AccessOutput, LogConfig, Overflow};
use crate::http::route::TOOLBOX_PORT;
use crate::metrics::{metrics, RouteKind};
use crate::registry::{SandboxRecord, Upstream};

/// What one request line says.
pub struct Line<'a> {
    pub method: &'a Method,
    pub kind: RouteKind,
    pub path: &'a str,
    pub status: u16,
    pub elapsed: Duration,
    /// The response body's length when known up front (`-` otherwise: streamed).
    pub bytes: Option<u64>,
    pub sandbox: Option<&'a str>,
    pub request_id: Option<&'a HeaderValue>,
    /// The client's address as text when it is the TCP peer's (pre-rendered per connection).
    pub peer_text: Option<&'a [u8]>,
    pub client_ip: IpAddr,
    /// The request's HTTP version (the combined format's request line).
    pub version: Version,
    pub user_agent: Option<&'a HeaderValue>,
    /// The sandbox the request was forwarded to, with its preview port (`None`: toolbox).
    pub upstream: Option<(&'a SandboxRecord, Option<u16>)>,
    /// From sending upstream to the response head; absent when no answer came.
    pub upstream_time: Option<Duration>,
}

pub struct AccessLog {
    buffer: LogBuffer,
    format: AccessFormat,
    overflow: Overflow,
}

impl AccessLog {
    /// Opens the output and starts the writer, with one buffer per CPU.
    pub fn start(config: &LogConfig) -> std::io::Result<AccessLog> {
        let output = match &config.access_output {
            AccessOutput::Stdout => Output::Stdout,
            AccessOutput::Stderr => Output::Stderr,
            AccessOutput::File(path) => Output::File(path.clone()),
        };
        let shards = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(AccessLog {
            buffer: LogBuffer::start(output, shards, config.access_buffer, config.access_flush)?,
            format: config.access_format(),
            overflow: config.access_overflow,
        })
    }

    /// Buffers `line`. In `wait` mode, when the buffer is full, gives the formatted line back:
    /// the caller awaits [`AccessLog::wait_for_room`] with it. In `drop` mode it is counted.
    pub fn record(&self, line: &Line<'_>) -> Option<Vec<u8>> {
        let format = |out: &mut Vec<u8>| match self.format {
            AccessFormat::Text => text_line(out, line),
            AccessFormat::Json => json_line(out, line),
            AccessFormat::Combined => combined_line(out, line),
        };
        match self.buffer.append(format) {
            Ok(()) => None,
            Err(Full) if self.overflow == Overflow::Drop => {
                metrics().access_log_dropped.inc();
                None
            }
            Err(Full) => {
                let mut owned = Vec::with_capacity(256);
                format(&mut owned);
                Some(owned)
            }
        }
    }

    pub async fn wait_for_room(&self, line: Vec<u8>) {
        self.buffer.append_waiting(&line).await;
    }

    /// Has a file output reopened (SIGUSR1, after logrotate moved the file).
    pub fn reopen(&self) {
        self.buffer.reopen();
    }

    /// Writes out what is buffered and stops the writer; `false` if that took longer than
    /// `within` (a stuck output).
    pub async fn close(&self, within: std::time::Duration) -> bool {
        self.buffer.close(within).await
    }
}

/// `2026-12-01T17:20:00.123456Z  INFO sandgate::access: method=GET kind=preview path="/" …`
fn text_line(out: &mut Vec<u8>, line: &Line<'_>) {
    timestamp(out);
    out.extend_from_slice(b"  INFO sandgate::access: method=");
    escaped(out, line.method.as_str().as_bytes());
    out.extend_from_slice(b" kind=");
    out.extend_from_slice(line.kind.name().as_bytes());
    out.extend_from_slice(b" path=\"");
    escaped(out, line.path.as_bytes());
    out.extend_from_slice(b"\" status=");
    number(out, line.status as u64);
    out.extend_from_slice(b" micros=");
    number(out, line.elapsed.as_micros() as u64);
    out.extend_from_slice(b" bytes=");
    match line.bytes {
        Some(bytes) => number(out, bytes),
        None => out.push(b'-'),
    }
    if let Some(sandbox) = line.sandbox {
        out.extend_from_slice(b" sandbox=\"");
        escaped(out, sandbox.as_bytes());
        out.push(b'"');
    }
    if let Some(id) = line.request_id {
        out.extend_from_slice(b" request_id=\"");
        escaped(out, id.as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(b" peer=");
    peer(out, line);
    if let Some((sandbox, port)) = line.upstream {
        out.extend_from_slice(b" upstream=\"");
        upstream_address(out, sandbox, port);
        out.push(b'"');
    }
    if let Some(time) = line.upstream_time {
        out.extend_from_slice(b" upstream_micros=");
        number(out, time.as_micros() as u64);
    }
    if let Some(agent) = line.user_agent {
        out.extend_from_slice(b" user_agent=\"");
        escaped(out, agent.as_bytes());
        out.push(b'"');
    }
    out.push(b'\n');
}

/// The shape of `tracing`'s JSON lines: `{"timestamp":…,"level":"INFO","fields":{…},"target":…}`.
fn json_line(out: &mut Vec<u8>, line: &Line<'_>) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(out);
    out.extend_from_slice(b"\",\"level\":\"INFO\",\"fields\":{\"method\":\"");
    escaped(out, line.method.as_str().as_bytes());
    out.extend_from_slice(b"\",\"kind\":\"");
    out.extend_from_slice(line.kind.name().as_bytes());
    out.extend_from_slice(b"\",\"path\":\"");
    escaped(out, line.path.as_bytes());
    out.extend_from_slice(b"\",\"status\":");
    number(out, line.status as u64);
    out.extend_from_slice(b",\"micros\":");
    number(out, line.elapsed.as_micros() as u64);
    out.extend_from_slice(b",\"bytes\":");
    match line.bytes {
        Some(bytes) => number(out, bytes),
        None => out.extend_from_slice(b"null"),
    }
    if let Some(sandbox) = line.sandbox {
        out.extend_from_slice(b",\"sandbox\":\"");
        escaped(out, sandbox.as_bytes());
        out.push(b'"');
    }
    if let Some(id) = line.request_id {
        out.extend_from_slice(b",\"request_id\":\"");
        escaped(out, id.as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(b",\"peer\":\"");
    peer(out, line);
    out.push(b'"');
    if let Some((sandbox, port)) = line.upstream {
        out.extend_from_slice(b",\"upstream\":\"");
        upstream_address(out, sandbox, port);
        out.push(b'"');
    }
    if let Some(time) = line.upstream_time {
        out.extend_from_slice(b",\"upstream_micros\":");
        number(out, time.as_micros() as u64);
    }
    if let Some(agent) = line.user_agent {
        out.extend_from_slice(b",\"user_agent\":\"");
        escaped(out, agent.as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(b"},\"target\":\"sandgate::access\"}\n");
}

/// Apache's combined format, then nginx-style timings and sandgate's own fields:
/// `10.0.0.7 - - [01/Dec/2026:17:20:00 +0000] "GET /a HTTP/1.1" 200 5 "-" "curl/8" rt=0.001
/// urt=0.001 upstream="10.0.0.5:3003" sandbox="sbx-1" request_id="…"`. The request line has the
/// path without the query; the referer is always `-` (see the module's note).
fn combined_line(out: &mut Vec<u8>, line: &Line<'_>) {
    peer(out, line);
    out.extend_from_slice(b" - - [");
    combined_timestamp(out);
    out.extend_from_slice(b"] \"");
    escaped(out, line.method.as_str().as_bytes());
    out.push(b' ');
    escaped(out, line.path.as_bytes());
    out.push(b' ');
    out.extend_from_slice(version_name(line.version).as_bytes());
    out.extend_from_slice(b"\" ");
    number(out, line.status as u64);
    out.push(b' ');
    match line.bytes {
        Some(bytes) if bytes > 0 => number(out, bytes),
        _ => out.push(b'-'),
    }
    out.extend_from_slice(b" \"-\" \"");
    match line.user_agent {
        Some(agent) => escaped(out, agent.as_bytes()),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b"\" rt=");
    seconds(out, line.elapsed);
    out.extend_from_slice(b" urt=");
    match line.upstream_time {
        Some(time) => seconds(out, time),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" upstream=");
    match line.upstream {
        Some((sandbox, port)) => {
            out.push(b'"');
            upstream_address(out, sandbox, port);
            out.push(b'"');
        }
        None => out.push(b'-'),
    }
    if let Some(sandbox) = line.sandbox {
        out.extend_from_slice(b" sandbox=\"");
        escaped(out, sandbox.as_bytes());
        out.push(b'"');
    }
    if let Some(id) = line.request_id {
        out.extend_from_slice(b" request_id=\"");
        escaped(out, id.as_bytes());
        out.push(b'"');
    }
    out.push(b'\n');
}

fn version_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// `12.345`: seconds with milliseconds, as nginx's `$request_time`.
fn seconds(out: &mut Vec<u8>, time: Duration) {
    number(out, time.as_secs());
    let mut millis = *b".000";
    put_digits(&mut millis[1..], u64::from(time.subsec_millis()));
    out.extend_from_slice(&millis);
}

/// `host:port` the proxy connects to for `sandbox`: its runner's, or the sandbox's own address
/// with the preview port (`port` `None`: the toolbox port). Also used by the failure log line.
pub fn upstream_address(out: &mut Vec<u8>, sandbox: &SandboxRecord, port: Option<u16>) {
    match &sandbox.upstream {
        Upstream::Runner(runner) => escaped(out, runner.authority.as_bytes()),
        Upstream::Direct { address } => {
            let v6 = address.contains(':');
            if v6 {
                out.push(b'[');
            }
            escaped(out, address.as_bytes());
            if v6 {
                out.push(b']');
            }
            out.push(b':');
            number(out, u64::from(port.unwrap_or(TOOLBOX_PORT)));
        }
    }
}

fn peer(out: &mut Vec<u8>, line: &Line<'_>) {
    match line.peer_text {
        Some(text) => out.extend_from_slice(text),
        // A client named by a trusted proxy: rarer, and IP text has nothing to escape.
        None => {
            use std::io::Write;
            let _ = write!(out, "{}", line.client_ip);
        }
    }
}

fn number(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Copies `text`, escaping what would let a client forge a field or a line: quotes,
/// backslashes, control bytes and the Unicode line separators (U+0085, U+2028, U+2029, which
/// some readers split lines on), as JSON string escapes (valid in both formats). A byte that is
/// not UTF-8 (hyper passes 0x80-0xFF in header values) is written as `\u00XX`, so every line
/// stays valid UTF-8 and valid JSON.
fn escaped(out: &mut Vec<u8>, text: &[u8]) {
    // Without an early exit this check vectorises (16 bytes per step); any non-ASCII byte takes
    // the careful path.
    let clean = !text
        .iter()
        .map(|&b| !(0x20..0x7f).contains(&b) || b == b'"' || b == b'\\')
        .fold(false, |any, needs| any | needs);
    if clean {
        out.extend_from_slice(text);
        return;
    }
    for chunk in text.utf8_chunks() {
        escaped_str(out, chunk.valid());
        for &b in chunk.invalid() {
            byte_escape(out, b);
        }
    }
}

fn escaped_str(out: &mut Vec<u8>, text: &str) {
    for c in text.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{85}' => out.extend_from_slice(b"\\u0085"),
            '\u{2028}' => out.extend_from_slice(b"\\u2028"),
            '\u{2029}' => out.extend_from_slice(b"\\u2029"),
            c if c < ' ' || c == '\u{7f}' => byte_escape(out, c as u8),
            c => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
}

/// `\u00XX` for one byte.
fn byte_escape(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(b"\\u00");
    out.push(HEX[(b >> 4) as usize]);
    out.push(HEX[(b & 0xf) as usize]);
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC). The part up to the seconds is rendered once per second
/// per thread.
fn timestamp(out: &mut Vec<u8>) {
    thread_local! {
        static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            *cached = (secs, render_second(secs));
        }
        out.extend_from_slice(&cached.1);
    });
    let micros = now.subsec_micros();
    let mut fraction = *b".000000Z";
    put_digits(&mut fraction[1..7], micros as u64);
    out.extend_from_slice(&fraction);
}

/// `01/Dec/2026:17:20:00 +0000` (UTC), rendered once per second per thread.
fn combined_timestamp(out: &mut Vec<u8>) {
    thread_local! {
        static SECOND: RefCell<(u64, [u8; 26])> = const { RefCell::new((u64::MAX, [0; 26])) };
    }
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            *cached = (secs, render_combined_second(secs));
        }
        out.extend_from_slice(&cached.1);
    });
}

fn render_combined_second(secs: u64) -> [u8; 26] {
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let of_day = secs % 86_400;
    let mut text = *b"00/Jan/0000:00:00:00 +0000";
    put_digits(&mut text[0..2], day as u64);
    text[3..6].copy_from_slice(MONTHS[(month as usize).saturating_sub(1) % 12]);
    put_digits(&mut text[7..11], year.max(0) as u64);
    put_digits(&mut text[12..14], of_day / 3600);
    put_digits(&mut text[15..17], of_day / 60 % 60);
    put_digits(&mut text[18..20], of_day % 60);
    text
}

fn render_second(secs: u64) -> [u8; 19] {
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let of_day = secs % 86_400;
    let mut text = *b"0000-00-00T00:00:00";
    put_digits(&mut text[0..4], year.max(0) as u64);
    put_digits(&mut text[5..7], month as u64);
    put_digits(&mut text[8..10], day as u64);
    put_digits(&mut text[11..13], of_day / 3600);
    put_digits(&mut text[14..16], of_day / 60 % 60);
    put_digits(&mut text[17..19], of_day % 60);
    text
}

/// Writes the low `out.len()` decimal digits of `value`, zero-padded.
fn put_digits(out: &mut [u8], mut value: u64) {
    for digit in out.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(path: &'a str, sandbox: Option<&'a str>, id: Option<&'a HeaderValue>) -> Line<'a> {
        Line {
            method: &Method::GET,
            kind: RouteKind::Preview,
            path,
            status: 200,
            elapsed: Duration::from_micros(1234),
            bytes: Some(5),
            sandbox,
            request_id: id,
            peer_text: Some(b"10.0.0.7"),
            client_ip: IpAddr::from([10, 0, 0, 7]),
            version: Version::HTTP_11,
            user_agent: None,
            upstream: None,
            upstream_time: None,
        }
    }

    fn direct(address: &str) -> SandboxRecord {
        let upstream = Upstream::Direct {
            address: address.into(),
        };
        SandboxRecord::new("sbx-1", upstream, false, "started", None)
    }

    fn text(line: &Line<'_>) -> String {
        let mut out = Vec::new();
        text_line(&mut out, line);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn text_lines_read_like_tracing_lines() {
        let id = HeaderValue::from_static("req-1");
        let text = text(&line("/a/b", Some("sbx-1"), Some(&id)));
        let (time, rest) = text.split_at(27);
        assert!(
            time.len() == 27 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
            "{time}"
        );
        assert_eq!(
            rest,
            "  INFO sandgate::access: method=GET kind=preview path=\"/a/b\" status=200 \
             micros=1234 bytes=5 sandbox=\"sbx-1\" request_id=\"req-1\" peer=10.0.0.7\n"
        );
    }

    #[test]
    fn json_lines_parse_and_carry_every_field() {
        let id = HeaderValue::from_static("a\"b\\c");
        let mut out = Vec::new();
        let mut l = line("/x\"y", Some("sbx\u{1}"), Some(&id));
        l.bytes = None;
        l.peer_text = None;
        l.client_ip = "2001:db8::1".parse().unwrap();
        json_line(&mut out, &l);
        assert_eq!(out.last(), Some(&b'\n'));
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["target"], "sandgate::access");
        assert_eq!(value["level"], "INFO");
        let fields = &value["fields"];
        assert_eq!(fields["path"], "/x\"y");
        assert_eq!(fields["sandbox"], "sbx\u{1}");
        assert_eq!(fields["request_id"], "a\"b\\c");
        assert_eq!(fields["bytes"], serde_json::Value::Null);
        assert_eq!(fields["peer"], "2001:db8::1");
        assert_eq!(fields["status"], 200);
    }

    /// A client cannot end a line or a field early: every quote, backslash and control byte of
    /// what it chose (path, request id; the sandbox id comes from the registry) is escaped.
    #[test]
    fn client_text_cannot_forge_fields_or_lines() {
        let id = HeaderValue::from_static("x\" status=500 peer=\"1.2.3.4");
        let text = text(&line("/p\"\\", None, Some(&id)));
        assert_eq!(text.matches('\n').count(), 1);
        assert_eq!(
            keys_outside_quotes(&text),
            [
                "method",
                "kind",
                "path",
                "status",
                "micros",
                "bytes",
                "request_id",
                "peer"
            ],
            "{text}"
        );
        assert!(text.contains(r#"path="/p\"\\""#), "{text}");
    }

    /// The `key=` names of a text line, as a logfmt reader sees them (quoted values skipped).
    fn keys_outside_quotes(line: &str) -> Vec<String> {
        let fields = &line[line.find(": ").unwrap() + 2..];
        let (mut keys, mut word, mut quoted, mut escaped) = (vec![], String::new(), false, false);
        for c in fields.chars() {
            match (quoted, escaped, c) {
                (true, true, _) => escaped = false,
                (true, false, '\\') => escaped = true,
                (true, false, '"') => quoted = false,
                (true, false, _) => {}
                (false, _, '"') => quoted = true,
                (false, _, '=') => keys.push(std::mem::take(&mut word)),
                (false, _, ' ') => word.clear(),
                (false, _, c) => word.push(c),
            }
        }
        keys
    }

    #[test]
    fn unicode_line_separators_are_escaped_and_other_text_kept() {
        let mut out = Vec::new();
        escaped(&mut out, "/a\u{85}b\u{2028}c\u{2029}d/é€".as_bytes());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "/a\\u0085b\\u2028c\\u2029d/é€"
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_are_escaped() {
        for (input, want) in [
            (&b"\xff"[..], "\\u00ff"),
            (b"a\xffb", "a\\u00ffb"),
            (b"\xc3", "\\u00c3"),
            (b"\xc3\xa9\xe2\x80", "\u{e9}\\u00e2\\u0080"),
            (b"\xe2\x80\xa8\x80\"", "\\u2028\\u0080\\\""),
            (b"\x01\xfe", "\\u0001\\u00fe"),
        ] {
            let mut out = Vec::new();
            escaped(&mut out, input);
            assert_eq!(String::from_utf8(out).as_deref(), Ok(want), "{input:?}");
        }
    }

    #[test]
    fn every_format_carries_user_agent_upstream_and_its_time() {
        let agent = HeaderValue::from_static("curl/8.5 \"x\"");
        let sandbox = direct("10.1.2.3");
        let mut l = line("/a", Some("sbx-1"), None);
        l.user_agent = Some(&agent);
        l.upstream = Some((&sandbox, Some(3000)));
        l.upstream_time = Some(Duration::from_micros(2500));
        let text = text(&l);
        assert!(
            text.ends_with(
                " peer=10.0.0.7 upstream=\"10.1.2.3:3000\" upstream_micros=2500 \
                 user_agent=\"curl/8.5 \\\"x\\\"\"\n"
            ),
            "{text}"
        );
        let mut out = Vec::new();
        json_line(&mut out, &l);
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["fields"]["user_agent"], "curl/8.5 \"x\"");
        assert_eq!(value["fields"]["upstream"], "10.1.2.3:3000");
        assert_eq!(value["fields"]["upstream_micros"], 2500);
        let mut out = Vec::new();
        combined_line(&mut out, &l);
        let combined = String::from_utf8(out).unwrap();
        let (start, rest) = combined.split_once(" [").unwrap();
        assert_eq!(start, "10.0.0.7 - -");
        let (_, rest) = rest.split_once("] ").unwrap();
        assert_eq!(
            rest,
            "\"GET /a HTTP/1.1\" 200 5 \"-\" \"curl/8.5 \\\"x\\\"\" rt=0.001 urt=0.002 \
             upstream=\"10.1.2.3:3000\" sandbox=\"sbx-1\"\n"
        );
    }

    #[test]
    fn upstream_addresses_bracket_ipv6_and_default_to_the_toolbox_port() {
        for (address, port, expected) in [
            ("10.0.0.5", Some(8080), "10.0.0.5:8080"),
            ("fd00::5", Some(8080), "[fd00::5]:8080"),
            ("10.0.0.5", None, "10.0.0.5:2280"),
        ] {
            let mut out = Vec::new();
            upstream_address(&mut out, &direct(address), port);
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
    }

    #[test]
    fn combined_timestamps_match_the_calendar() {
        for (secs, expected) in [
            (0, "01/Jan/1970:00:00:00 +0000"),
            (951_782_400, "29/Feb/2000:00:00:00 +0000"),
            (1_798_824_605, "01/Jan/2027:17:30:05 +0000"),
        ] {
            let rendered = render_combined_second(secs);
            assert_eq!(std::str::from_utf8(&rendered).unwrap(), expected);
        }
    }

    #[test]
    fn timestamps_match_the_calendar() {
        for (secs, expected) in [
            (0, "1970-01-01T00:00:00"),
            (951_782_400, "2000-02-29T00:00:00"),
            (1_798_824_605, "2027-01-01T17:30:05"),
            (4_107_542_399, "2100-02-28T23:59:59"),
        ] {
            assert_eq!(std::str::from_utf8(&render_second(secs)).unwrap(), expected);
        }
    }
}
