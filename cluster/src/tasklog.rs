//! Task output on its way from an agent to the manager: lines as the task printed them, with
//! the stream and the node's time of reading.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The most one push weighs encoded, as the manager reads it: well under its body limit,
/// which a push over it would hit and be refused at again and again.
pub const PUSH_BATCH_MAX: usize = 256 * 1024;

/// What a `LogPush` with no record weighs encoded: `{"records":[]}`.
pub const PUSH_ENVELOPE: usize = 14;

/// Docker's stream numbers in the multiplexed format.
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LogRecord {
    pub task_id: String,
    /// STDOUT or STDERR.
    pub stream: u8,
    pub time: DateTime<Utc>,
    /// One line without its newline (a very long line arrives in pieces).
    pub line: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LogPush {
    pub records: Vec<LogRecord>,
}

/// What a record weighs in a push: its JSON, in which a control character is six bytes
/// (`\u0000`) and a quote two, so a line's own length says little.
pub fn encoded_len(r: &LogRecord) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    match serde_json::to_writer(&mut c, r) {
        Ok(()) => c.0,
        // Strings, a number and a time cannot fail to encode; were it to, the worst case.
        Err(_) => 6 * (r.line.len() + r.task_id.len()) + 128,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_len_is_what_serde_writes() {
        let r = LogRecord {
            task_id: "t".into(),
            stream: STDOUT,
            time: Utc::now(),
            line: "a\0\"b\u{1f}é".into(),
        };
        assert_eq!(encoded_len(&r), serde_json::to_vec(&r).unwrap().len());
        let empty = serde_json::to_vec(&LogPush::default()).unwrap();
        assert_eq!(empty.len(), PUSH_ENVELOPE);
    }
}
