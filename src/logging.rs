//! Logs as lager JSON lines in the form GrootFS writes them (RFC 3339 timestamp, the level as a
//! word, source, message, data), which Garden re-logs write by write: every line leaves in one
//! write(2), and has a `data` object (a line without one crashes gdn).

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

/// lager's levels; GrootFS's default logs fatal errors only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug = 0,
    Info = 1,
    Error = 2,
    Fatal = 3,
}

impl Level {
    fn word(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Error => "error",
            Level::Fatal => "fatal",
        }
    }
}

impl std::str::FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Level, String> {
        match s.to_ascii_lowercase().as_str() {
            "debug" => Ok(Level::Debug),
            "info" => Ok(Level::Info),
            "error" => Ok(Level::Error),
            "fatal" => Ok(Level::Fatal),
            _ => Err(format!(
                "invalid log level {s:?}: use debug, info, error or fatal"
            )),
        }
    }
}

struct Sink {
    min: Level,
    out: Mutex<Box<dyn Write + Send>>,
}

/// A lager session: messages are `<session>.<name>`, e.g. `nestfs.create.pulling`.
#[derive(Clone)]
pub struct Logger {
    sink: Arc<Sink>,
    session: String,
}

impl Logger {
    /// Logs at `min` and above to `file`, or to stderr.
    pub fn new(min: Level, file: Option<&Path>) -> std::io::Result<Logger> {
        let out: Box<dyn Write + Send> = match file {
            Some(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
            None => Box::new(std::io::stderr()),
        };
        Ok(Logger {
            sink: Arc::new(Sink {
                min,
                out: Mutex::new(out),
            }),
            session: "nestfs".into(),
        })
    }

    /// The same session and level, logging to `file` instead.
    pub fn to_file(&self, file: &Path) -> std::io::Result<Logger> {
        let mut other = Logger::new(self.sink.min, Some(file))?;
        other.session = self.session.clone();
        Ok(other)
    }

    pub fn session(&self, name: &str) -> Logger {
        Logger {
            sink: self.sink.clone(),
            session: format!("{}.{name}", self.session),
        }
    }

    pub fn log(&self, level: Level, msg: &str, data: Value) {
        if level < self.sink.min {
            return;
        }
        let data = if data.is_object() {
            data
        } else {
            json!({ "value": data })
        };
        let line = json!({
            "timestamp": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.9fZ").to_string(),
            "level": level.word(),
            "source": "nestfs",
            "message": format!("{}.{msg}", self.session),
            "data": data,
        });
        // One buffer, one write: Garden takes each write for a line.
        let mut buf = serde_json::to_vec(&line).unwrap_or_default();
        buf.push(b'\n');
        let mut out = self.sink.out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = out.write_all(&buf);
    }

    pub fn debug(&self, msg: &str, data: Value) {
        self.log(Level::Debug, msg, data);
    }

    pub fn info(&self, msg: &str, data: Value) {
        self.log(Level::Info, msg, data);
    }

    pub fn error(&self, msg: &str, data: Value) {
        self.log(Level::Error, msg, data);
    }
}
