//! Per-node progress of `cluster up` on machine backends: booting, SSH up, agent ready. A bar
//! per node on a terminal; plain timestamped lines otherwise (logs, CI). Both on stderr, so
//! scripted stdout stays clean.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

pub const BOOTING: u64 = 1;
pub const SSH_UP: u64 = 2;
pub const AGENT_READY: u64 = 3;

pub struct NodeProgress {
    start: Instant,
    bars: Option<(MultiProgress, BTreeMap<String, ProgressBar>)>,
}

impl NodeProgress {
    pub fn new(nodes: &[String], start: Instant) -> Self {
        if !std::io::stderr().is_terminal() {
            return NodeProgress { start, bars: None };
        }
        let multi = MultiProgress::new();
        let style = ProgressStyle::with_template("{prefix:>8} [{bar:3}] {msg:<20} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("#>-");
        let bars = nodes
            .iter()
            .map(|n| {
                let b = multi.add(ProgressBar::new(AGENT_READY));
                b.set_style(style.clone());
                b.set_prefix(n.clone());
                b.set_message("starting");
                b.enable_steady_tick(Duration::from_millis(200));
                (n.clone(), b)
            })
            .collect();
        NodeProgress {
            start,
            bars: Some((multi, bars)),
        }
    }

    pub fn step(&self, node: &str, pos: u64, what: &str) {
        match &self.bars {
            Some((_, bars)) => {
                if let Some(b) = bars.get(node) {
                    b.set_position(pos);
                    b.set_message(what.to_string());
                    if pos >= AGENT_READY {
                        b.finish();
                    }
                }
            }
            None => eprintln!(
                "{:>6.2}s  {node:<8} {what}",
                self.start.elapsed().as_secs_f64()
            ),
        }
    }

    /// A line that is not about one node (the image, the accelerator).
    pub fn note(&self, line: &str) {
        let text = format!("{:>6.2}s  {line}", self.start.elapsed().as_secs_f64());
        match &self.bars {
            Some((multi, _)) => {
                let _ = multi.println(text);
            }
            None => eprintln!("{text}"),
        }
    }
}

impl Drop for NodeProgress {
    fn drop(&mut self) {
        if let Some((_, bars)) = &self.bars {
            for b in bars.values() {
                if !b.is_finished() {
                    b.abandon();
                }
            }
        }
    }
}
