//! The access log: one line per request, formatted straight into the worker thread's buffer
//! (no `fmt` machinery, no allocation, no system call) and written by [`LogBuffer`]'s
//! background thread. The line keeps the layout of the `tracing` lines around it (text or
//! JSON), so log pipelines read both alike.
//!
//! Never logged: hosts (a signed preview host is a credential), queries, tokens, cookies.

use std::cell::RefCell;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method};

use crate::base::log_buffer::{Full, LogBuffer, Output};
use crate::config::server::{AccessOutput, LogConfig, Overflow};
use crate::metrics::{metrics, RouteKind};

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
}

pub struct AccessLog {
    buffer: LogBuffer,
    json: bool,
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
            json: config.format == "json",
            overflow: config.access_overflow,
        })
    }

    /// Buffers `line`. In `wait` mode, when the buffer is full, gives the formatted line back:
    /// the caller awaits [`AccessLog::wait_for_room`] with it. In `drop` mode it is counted.
    pub fn record(&self, line: &Line<'_>) -> Option<Vec<u8>> {
        let format = |out: &mut Vec<u8>| match self.json {
            true => json_line(out, line),
            false => text_line(out, line),
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
    out.extend_from_slice(b"\"},\"target\":\"sandgate::access\"}\n");
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
/// some readers split lines on), as JSON string escapes (valid in both formats).
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
    let mut rest = text;
    while let Some((&b, tail)) = rest.split_first() {
        let separator = match rest {
            [0xc2, 0x85, ..] => Some((b"\\u0085", 2)),
            [0xe2, 0x80, 0xa8, ..] => Some((b"\\u2028", 3)),
            [0xe2, 0x80, 0xa9, ..] => Some((b"\\u2029", 3)),
            _ => None,
        };
        if let Some((escape, len)) = separator {
            out.extend_from_slice(escape);
            rest = &rest[len..];
            continue;
        }
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b if b < 0x20 || b == 0x7f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
            }
            b => out.push(b),
        }
        rest = tail;
    }
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
        }
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
