//! Task output on its way from an agent to the manager: lines as the task printed them, with
//! the stream and the node's time of reading.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Agents POST a LogPush here (after the agents' PREFIX and their node ID).
pub const PUSH_PATH: &str = "logs";

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
