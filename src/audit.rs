//! The audit log: one line per request — who, what, which decision, why.
//!
//! Lines are handed to a writer thread over a bounded channel so a slow
//! disk or terminal never stalls the request path; if the channel is full
//! the line is dropped and counted. The writer is never woken by a request:
//! it wakes every [`WRITE_EVERY`], takes whatever queued and writes it in
//! one batch, so a busy gateway makes one `write` per tick instead of a
//! futex wake and a `write` per request. [`AuditLog::close`] writes what
//! is left when the server stops. A record never contains a token, a
//! secret, a query string or a body.

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::model::{AuditTarget, LogFormat};

/// Lines that may wait for the writer before new ones are dropped (over
/// three million a second at one batch per tick).
const QUEUE: usize = 65_536;
/// How often the writer writes what queued.
pub const WRITE_EVERY: Duration = Duration::from_millis(20);

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
    /// Tells the writer to write what is left and stop.
    closing: Arc<AtomicBool>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl AuditLog {
    /// A log that writes nothing.
    pub fn off() -> AuditLog {
        AuditLog {
            tx: None,
            format: LogFormat::Json,
            dropped: AtomicU64::new(0),
            closing: Arc::new(AtomicBool::new(false)),
            writer: Mutex::new(None),
        }
    }

    pub fn new(target: &AuditTarget, format: LogFormat) -> std::io::Result<AuditLog> {
        let out: Box<dyn Write + Send> = match target {
            AuditTarget::Off => return Ok(AuditLog::off()),
            AuditTarget::Stdout => Box::new(std::io::stdout()),
            AuditTarget::File(path) => Box::new(open_append(path)?),
        };
        let (tx, rx) = sync_channel(QUEUE);
        let closing = Arc::new(AtomicBool::new(false));
        let stop = closing.clone();
        let writer = std::thread::Builder::new()
            .name("portcullis-audit".into())
            .spawn(move || write_lines(rx, out, &stop))?;
        Ok(AuditLog {
            tx: Some(tx),
            format,
            dropped: AtomicU64::new(0),
            closing,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Write every line queued so far and stop the writer (at most one tick).
    /// Lines written after this are dropped.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
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

fn write_lines(rx: Receiver<Vec<u8>>, out: Box<dyn Write + Send>, closing: &AtomicBool) {
    let mut out = std::io::BufWriter::with_capacity(1 << 16, out);
    loop {
        // Read before draining: a line queued before `close` is written.
        let last = closing.load(Ordering::Acquire);
        let mut wrote = false;
        let gone = loop {
            match rx.try_recv() {
                Ok(line) => {
                    let _ = out.write_all(&line);
                    wrote = true;
                }
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        if wrote {
            let _ = out.flush();
        }
        if last || gone {
            return;
        }
        std::thread::sleep(WRITE_EVERY);
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

    fn record(id: &str) -> AuditRecord<'_> {
        AuditRecord {
            time: rfc3339(UNIX_EPOCH),
            request_id: id,
            route: "r",
            method: "GET",
            path: "/x",
            client_id: None,
            subject: None,
            client_ip: None,
            decision: "allow",
            reason: None,
            status: 200,
            duration_ms: 0.1,
            upstream_latency_ms: None,
            redacted: 0,
        }
    }

    #[test]
    fn lines_are_written_in_batches_and_close_writes_the_rest() {
        let dir = std::env::temp_dir().join(format!("portcullis-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.log");
        let log = AuditLog::new(&AuditTarget::File(path.clone()), LogFormat::Json).unwrap();
        for i in 0..1000 {
            log.write(&record(&format!("req-{i}")));
        }
        // Written within a tick or two, without waiting for `close`.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(&path).unwrap().lines().count() < 1000 {
            assert!(std::time::Instant::now() < deadline, "lines not written");
            std::thread::sleep(Duration::from_millis(5));
        }
        log.write(&record("last"));
        log.close();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1001);
        assert!(text.lines().last().unwrap().contains("\"last\""));
        log.write(&record("after-close"));
        std::thread::sleep(WRITE_EVERY * 3);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().lines().count(),
            1001
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

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
