//! Structured logging for the `ballast` binary, shaped like etcd's zap logs so the same log
//! pipelines can read both:
//!
//! ```text
//! {"level":"info","ts":"2025-03-01T04:34:10.336768Z","caller":"src/main.rs:42","msg":"...","key":"value"}
//! ```
//!
//! `--log-format=console` gives zap's console layout (`ts<TAB>level<TAB>caller<TAB>msg<TAB>{fields}`).
//! Outputs are etcd's `--log-outputs`: `default`/`stderr`, `stdout`, or file paths (appended to).
//! The level comes from `--log-level`; developers may override the filter with `BALLAST_LOG`
//! (an `EnvFilter` directive such as `debug,h2=info`).
//!
//! This module owns only the process-global subscriber; it must not decide configuration.

use std::fmt::{self, Write as _};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Environment variable that overrides the level filter (developer aid, not an etcd setting).
pub const FILTER_ENV: &str = "BALLAST_LOG";

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Console,
}

/// One `--log-outputs` target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogOutput {
    Stderr,
    Stdout,
    File(PathBuf),
}

/// The resolved logging settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub level: Level,
    pub format: LogFormat,
    pub outputs: Vec<LogOutput>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: Level::INFO,
            format: LogFormat::Json,
            outputs: vec![LogOutput::Stderr],
        }
    }
}

/// `--log-level`, with zap's names (`debug`, `info`, `warn`, `error`, `dpanic`, `panic`,
/// `fatal`; zap also accepts upper case and the empty string for info). Levels above error
/// map to error: Ballast never panics or exits because of a log call.
pub fn parse_level(s: &str) -> Result<Level, String> {
    match s {
        "debug" | "DEBUG" => Ok(Level::DEBUG),
        "info" | "INFO" | "" => Ok(Level::INFO),
        "warn" | "WARN" => Ok(Level::WARN),
        "error" | "ERROR" | "dpanic" | "DPANIC" | "panic" | "PANIC" | "fatal" | "FATAL" => {
            Ok(Level::ERROR)
        }
        other => Err(format!("unrecognized level: {other:?}")),
    }
}

/// `--log-format` (etcd's `logutil.ConvertToZapFormat`).
pub fn parse_format(s: &str) -> Result<LogFormat, String> {
    match s {
        "json" | "" => Ok(LogFormat::Json),
        "console" => Ok(LogFormat::Console),
        other => Err(format!(
            "unknown log format: {other}, supported values json, console"
        )),
    }
}

/// `--log-outputs`. Returns the outputs and whether `systemd/journal` was asked for (Ballast
/// writes to stderr instead, which journald captures for a systemd unit anyway).
pub fn parse_outputs(items: &[String]) -> Result<(Vec<LogOutput>, bool), String> {
    if items.len() > 1 && items.iter().any(|i| i == "default") {
        return Err("multi logoutput for \"default\" is not supported yet".into());
    }
    let mut journal = false;
    let mut outputs = Vec::new();
    for item in items {
        let out = match item.as_str() {
            "default" | "stderr" => LogOutput::Stderr,
            "stdout" => LogOutput::Stdout,
            "systemd/journal" => {
                journal = true;
                LogOutput::Stderr
            }
            path => LogOutput::File(PathBuf::from(path)),
        };
        if !outputs.contains(&out) {
            outputs.push(out);
        }
    }
    if outputs.is_empty() {
        outputs.push(LogOutput::Stderr);
    }
    Ok((outputs, journal))
}

/// Installs the global subscriber. Fails if an output file cannot be opened.
pub fn init(cfg: &LogConfig) -> Result<(), String> {
    let writer = Outputs::open(&cfg.outputs)?;
    let filter = match std::env::var(FILTER_ENV) {
        Ok(directives) if !directives.is_empty() => EnvFilter::try_new(&directives)
            .map_err(|e| format!("invalid {FILTER_ENV} filter {directives:?}: {e}"))?,
        _ => EnvFilter::new(cfg.level.as_str().to_ascii_lowercase()),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .event_format(EtcdFormat {
            console: cfg.format == LogFormat::Console,
        })
        .try_init()
        .map_err(|e| format!("cannot set up logging: {e}"))
}

/// Formats events like zap's production encoder (JSON) or console encoder.
#[derive(Debug, Clone, Copy, Default)]
pub struct EtcdFormat {
    pub console: bool,
}

impl<S, N> FormatEvent<S, N> for EtcdFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut ts = String::new();
        SystemTime.format_time(&mut Writer::new(&mut ts))?;
        let level = zap_level(meta.level());
        let caller = match (meta.file(), meta.line()) {
            (Some(file), Some(line)) => Some(format!("{}:{line}", short_caller(file))),
            _ => None,
        };
        let mut fields = Fields::default();
        event.record(&mut fields);

        let mut extra = String::new();
        for (i, (k, v)) in fields.fields.iter().enumerate() {
            let key = match k.as_str() {
                "level" | "ts" | "caller" | "msg" if !self.console => format!("fields.{k}"),
                _ => k.clone(),
            };
            let sep = if i == 0 && self.console { "" } else { "," };
            write!(extra, "{sep}{}:{v}", json_str(&key))?;
        }

        if self.console {
            write!(writer, "{ts}\t{level}\t")?;
            if let Some(c) = &caller {
                write!(writer, "{c}\t")?;
            }
            write!(writer, "{}", fields.msg)?;
            if !extra.is_empty() {
                write!(writer, "\t{{{extra}}}")?;
            }
            return writeln!(writer);
        }

        write!(
            writer,
            "{{\"level\":{},\"ts\":{}",
            json_str(level),
            json_str(&ts)
        )?;
        if let Some(c) = &caller {
            write!(writer, ",\"caller\":{}", json_str(c))?;
        }
        write!(writer, ",\"msg\":{}{extra}}}", json_str(&fields.msg))?;
        writeln!(writer)
    }
}

fn zap_level(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG | Level::TRACE => "debug",
    }
}

/// zap's short caller: the last directory and the file name.
fn short_caller(file: &str) -> &str {
    let mut cut = file.len();
    for _ in 0..2 {
        match file[..cut].rfind(['/', '\\']) {
            Some(i) => cut = i,
            None => return file,
        }
    }
    &file[cut + 1..]
}

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// Collects an event's message and fields as JSON values.
#[derive(Default)]
struct Fields {
    msg: String,
    fields: Vec<(String, serde_json::Value)>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: serde_json::Value) {
        let name = field.name();
        if name == "message" {
            self.msg = match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
        } else if !name.starts_with("log.") {
            self.fields.push((name.to_string(), value));
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, serde_json::Value::String(value.to_string()));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, serde_json::Value::Bool(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, serde_json::Value::String(value.to_string()));
    }
    /// `?value` fields: lists and maps whose `Debug` form is valid JSON (e.g. a `Vec<String>`)
    /// are embedded as JSON arrays/objects, like zap's `zap.Strings`; anything else is a string.
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        let json = if text.starts_with('[') || text.starts_with('{') {
            serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .filter(|v| v.is_array() || v.is_object())
        } else {
            None
        };
        self.put(field, json.unwrap_or(serde_json::Value::String(text)));
    }
}

/// The `--log-outputs` targets, written in order for every event.
#[derive(Clone)]
struct Outputs(Arc<Vec<Target>>);

enum Target {
    Stderr,
    Stdout,
    File(Mutex<File>),
}

impl Outputs {
    fn open(outputs: &[LogOutput]) -> Result<Self, String> {
        let mut targets = Vec::new();
        for out in outputs {
            targets.push(match out {
                LogOutput::Stderr => Target::Stderr,
                LogOutput::Stdout => Target::Stdout,
                LogOutput::File(path) => {
                    let file = OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(|e| format!("cannot open log output {}: {e}", path.display()))?;
                    Target::File(Mutex::new(file))
                }
            });
        }
        Ok(Outputs(Arc::new(targets)))
    }
}

impl<'a> MakeWriter<'a> for Outputs {
    type Writer = OutputsWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        OutputsWriter(&self.0)
    }
}

struct OutputsWriter<'a>(&'a [Target]);

impl Write for OutputsWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    /// One call per event: every target gets the whole line; the first error is reported
    /// after all targets were tried.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut result = Ok(());
        for target in self.0 {
            let r = match target {
                Target::Stderr => io::stderr().lock().write_all(buf),
                Target::Stdout => io::stdout().lock().write_all(buf),
                Target::File(f) => match f.lock() {
                    Ok(mut f) => f.write_all(buf),
                    Err(poisoned) => poisoned.into_inner().write_all(buf),
                },
            };
            if result.is_ok() {
                result = r;
            }
        }
        result
    }

    fn flush(&mut self) -> io::Result<()> {
        for target in self.0 {
            match target {
                Target::Stderr => io::stderr().flush()?,
                Target::Stdout => io::stdout().flush()?,
                Target::File(f) => match f.lock() {
                    Ok(mut f) => f.flush()?,
                    Err(poisoned) => poisoned.into_inner().flush()?,
                },
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captures formatted output in memory.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = CaptureWriter;
        fn make_writer(&'a self) -> CaptureWriter {
            CaptureWriter(self.0.clone())
        }
    }

    struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

    impl Write for CaptureWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn capture(console: bool, level: Level, f: impl FnOnce()) -> String {
        let cap = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_writer(cap.clone())
            .event_format(EtcdFormat { console })
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = cap.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn json_lines_look_like_zap() {
        let out = capture(false, Level::INFO, || {
            let urls = vec!["http://a:1".to_string(), "http://b:2".to_string()];
            tracing::warn!(
                flag = "max-wals",
                count = 3u64,
                ok = true,
                "listen-client-urls" = ?urls,
                dur = ?std::time::Duration::from_millis(5),
                "flag --max-wals is accepted but not active yet in Ballast"
            );
            tracing::debug!("filtered out");
        });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out}");
        let line = lines[0];
        assert!(line.starts_with("{\"level\":\"warn\",\"ts\":\""), "{line}");
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(
            v["msg"],
            "flag --max-wals is accepted but not active yet in Ballast"
        );
        assert_eq!(v["flag"], "max-wals");
        assert_eq!(v["count"], 3);
        assert_eq!(v["ok"], true);
        assert_eq!(
            v["listen-client-urls"],
            serde_json::json!(["http://a:1", "http://b:2"])
        );
        assert_eq!(v["dur"], "5ms");
        assert!(v["caller"].as_str().unwrap().starts_with("src/logging.rs:"));
        let ts = v["ts"].as_str().unwrap();
        assert!(ts.ends_with('Z') && ts.contains('T'), "{ts}");
    }

    #[test]
    fn reserved_field_names_do_not_clobber() {
        let out = capture(false, Level::INFO, || {
            tracing::info!(msg = "inner", level = 7u64, "outer");
        });
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["msg"], "outer");
        assert_eq!(v["level"], "info");
        assert_eq!(v["fields.msg"], "inner");
        assert_eq!(v["fields.level"], 7);
    }

    #[test]
    fn console_layout() {
        let out = capture(true, Level::DEBUG, || {
            tracing::debug!(key = "v", "hello");
        });
        let parts: Vec<&str> = out.trim_end().split('\t').collect();
        assert_eq!(parts.len(), 5, "{out}");
        assert_eq!(parts[1], "debug");
        assert_eq!(parts[3], "hello");
        assert_eq!(parts[4], "{\"key\":\"v\"}");
    }

    #[test]
    fn levels_formats_outputs() {
        assert_eq!(parse_level("debug"), Ok(Level::DEBUG));
        assert_eq!(parse_level("WARN"), Ok(Level::WARN));
        assert_eq!(parse_level("fatal"), Ok(Level::ERROR));
        assert_eq!(parse_level(""), Ok(Level::INFO));
        assert_eq!(
            parse_level("verbose"),
            Err("unrecognized level: \"verbose\"".into())
        );
        assert_eq!(parse_format("console"), Ok(LogFormat::Console));
        assert!(parse_format("xml").is_err());
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_outputs(&s(&["default"])).unwrap(),
            (vec![LogOutput::Stderr], false)
        );
        assert_eq!(
            parse_outputs(&s(&["stderr", "stdout", "/tmp/x.log"])).unwrap(),
            (
                vec![
                    LogOutput::Stderr,
                    LogOutput::Stdout,
                    LogOutput::File("/tmp/x.log".into())
                ],
                false
            )
        );
        assert_eq!(
            parse_outputs(&s(&["systemd/journal"])).unwrap(),
            (vec![LogOutput::Stderr], true)
        );
        assert_eq!(
            parse_outputs(&s(&["default", "stdout"])).unwrap_err(),
            "multi logoutput for \"default\" is not supported yet"
        );
    }

    #[test]
    fn file_outputs_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ballast.log");
        std::fs::write(&path, "existing\n").unwrap();
        let outs = Outputs::open(&[LogOutput::File(path.clone())]).unwrap();
        outs.make_writer().write_all(b"line\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "existing\nline\n");
        let err = Outputs::open(&[LogOutput::File(dir.path().join("no/such/dir/x.log"))])
            .err()
            .unwrap();
        assert!(err.starts_with("cannot open log output "), "{err}");
    }
}
