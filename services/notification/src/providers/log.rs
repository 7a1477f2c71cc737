//! The file/log provider: each message as one JSON line, with the address
//! masked. The embedded default sends through it so a new user can watch
//! messages leave without any gateway.

use std::io::Write;
use std::sync::Mutex;

use huitou_runtime::auth::BoxFuture;

use super::{Outgoing, Provider, SendError};

/// Writes messages to a file or the log.
pub struct LogProvider {
    name: String,
    file: Option<Mutex<std::fs::File>>,
}

impl LogProvider {
    /// A provider writing to `path` (created, appended), or to the log when
    /// `path` is empty.
    pub fn new(name: &str, path: &str) -> Result<Self, String> {
        let file = if path.is_empty() {
            None
        } else {
            if let Some(dir) = std::path::Path::new(path).parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(|e| format!("{path}: {e}"))?;
            }
            Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("{path}: {e}"))?,
            ))
        };
        Ok(Self {
            name: name.to_owned(),
            file,
        })
    }
}

/// An address as logs may show it: the ends kept, the middle starred.
pub fn mask(address: &str) -> String {
    let chars: Vec<char> = address.chars().collect();
    let n = chars.len();
    if n <= 4 {
        return "*".repeat(n);
    }
    let keep = if n >= 11 { 3 } else { 1 };
    let tail = if n >= 11 { 4 } else { 1 };
    let mut s: String = chars[..keep].iter().collect();
    s.push_str(&"*".repeat(n - keep - tail));
    s.extend(&chars[n - tail..]);
    s
}

impl Provider for LogProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, message: &'a Outgoing) -> BoxFuture<'a, Result<String, SendError>> {
        Box::pin(async move {
            let mut shown = message.clone();
            shown.to = mask(&message.to);
            let line = serde_json::to_string(&shown)
                .map_err(|e| SendError::Permanent(format!("cannot encode: {e}")))?;
            match &self.file {
                Some(file) => {
                    let mut f = file
                        .lock()
                        .map_err(|_| SendError::Transient("log file lock poisoned".into()))?;
                    writeln!(f, "{line}").map_err(|e| SendError::Transient(e.to_string()))?;
                }
                None => {
                    tracing::info!(provider = %self.name, message = %line, "message sent to the log")
                }
            }
            Ok(format!("{}:{}", self.name, message.id))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::mask;

    #[test]
    fn addresses_are_masked() {
        assert_eq!(mask("13812345678"), "138****5678");
        assert_eq!(mask("tb_wang88"), "t*******8");
        assert_eq!(mask("abc"), "***");
    }
}
