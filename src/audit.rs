//! The audit log: one line per request — who, what, which decision, why.
//!
//! Lines are handed to a writer thread over a bounded channel so a slow
//! disk or terminal never stalls the request path; if the channel is full
//! the line is dropped and counted. A record never contains a token, a
//! secret, a query string or a body.

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::model::{AuditTarget, LogFormat};

/// Lines that may wait for the writer before new ones are dropped.
const QUEUE: usize = 65_536;

/// One request, as the audit log records it.
#[derive(Debug, Serialize)]
pub struct AuditRecord<'a> {
    pub time: String,
    pub request_id: &'a str,
    pub route: &'a str,
    pub method: &'a str,
    /// The path without its query string.
    pub path: &'a str,
    pub client_id: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub client_ip: Option<String>,
    pub decision: &'static str,
    pub reason: Option<&'a str>,
    pub status: u16,
    pub duration_ms: f64,
    pub upstream_latency_ms: Option<f64>,
    /// Members removed from the answer by `[routes.response] redact`.
    pub redacted: usize,
}

pub struct AuditLog {
    tx: Option<SyncSender<Vec<u8>>>,
    format: LogFormat,
    pub dropped: AtomicU64,
}

impl AuditLog {
    /// A log that writes nothing.
    pub fn off() -> AuditLog {
        AuditLog {
            tx: None,
            format: LogFormat::Json,
            dropped: AtomicU64::new(0),
        }
    }

    pub fn new(target: &AuditTarget, format: LogFormat) -> std::io::Result<AuditLog> {
        let out: Box<dyn Write + Send> = match target {
            AuditTarget::Off => return Ok(AuditLog::off()),
            AuditTarget::Stdout => Box::new(std::io::stdout()),
            AuditTarget::File(path) => Box::new(open_append(path)?),
        };
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("portcullis-audit".into())
            .spawn(move || write_lines(rx, out))?;
        Ok(AuditLog {
            tx: Some(tx),
            format,
            dropped: AtomicU64::new(0),
        })
    }

    /// Whether lines are written at all (callers skip building records otherwise).
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn write(&self, record: &AuditRecord<'_>) {
        let Some(tx) = &self.tx else { return };
        let mut line = match self.format {
            LogFormat::Json => serde_json::to_vec(record).unwrap_or_default(),
            LogFormat::Text => text_line(record).into_bytes(),
        };
        line.push(b'\n');
        match tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

fn write_lines(rx: Receiver<Vec<u8>>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::new(out);
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(&line);
        // Drain what is queued, then flush once: one syscall per burst.
        while let Ok(more) = rx.try_recv() {
            let _ = out.write_all(&more);
        }
        let _ = out.flush();
    }
}

fn text_line(r: &AuditRecord<'_>) -> String {
    // `redacted=N` only when something was removed: existing lines keep their shape.
    let redacted = if r.redacted > 0 {
        format!(" redacted={}", r.redacted)
    } else {
        String::new()
    };
    format!(
        "{} {} {} {} {} {} {} route={} client={} subject={} ip={} {:.3}ms{redacted}",
        r.time,
        r.request_id,
        r.method,
        r.path,
        r.status,
        r.decision,
        r.reason.unwrap_or("-"),
        r.route,
        TextField(r.client_id),
        TextField(r.subject),
        r.client_ip.as_deref().unwrap_or("-"),
        r.duration_ms
    )
}

/// A token-supplied value in a text audit line: one field that cannot forge
/// another. Plain visible ASCII other than `"`, `\\` and `=` is written as
/// it is; anything else is written as a quoted string with `\\`, `\"`, and
/// `\xNN` escapes (so a newline or ` ip=` in a `sub` claim stays inside
/// its field). Absent or empty values are `-`.
struct TextField<'a>(Option<&'a str>);

impl fmt::Display for TextField<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = match self.0 {
            None | Some("") => return f.write_str("-"),
            Some(v) => v,
        };
        let plain = |b: u8| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\' | b'=');
        if value != "-" && value.bytes().all(plain) {
            return f.write_str(value);
        }
        f.write_str("\"")?;
        for b in value.bytes() {
            match b {
                b'"' => f.write_str("\\\"")?,
                b'\\' => f.write_str("\\\\")?,
                b' ' | b'=' => write!(f, "{}", b as char)?,
                b if b.is_ascii_graphic() => write!(f, "{}", b as char)?,
                b => write!(f, "\\x{b:02x}")?,
            }
        }
        f.write_str("\"")
    }
}

/// RFC 3339 UTC timestamp with milliseconds, without a date-time crate.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn token_supplied_text_fields_cannot_forge_others() {
        let show = |v| TextField(v).to_string();
        assert_eq!(show(Some("client-1")), "client-1");
        assert_eq!(show(None), "-");
        assert_eq!(show(Some("")), "-");
        assert_eq!(show(Some("-")), "\"-\"");
        assert_eq!(
            show(Some("x ip=10.0.0.1\nGET / 200")),
            "\"x ip=10.0.0.1\\x0aGET / 200\""
        );
        assert_eq!(show(Some("a\"b\\c")), "\"a\\\"b\\\\c\"");
        assert_eq!(show(Some("é")), "\"\\xc3\\xa9\"");
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_439_331_123);
        assert_eq!(rfc3339(t), "2026-11-23T13:08:51.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
