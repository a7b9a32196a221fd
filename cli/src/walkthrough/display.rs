//! The live transcript. On a terminal a progress bar (commands done / total, current command)
//! stays under the scrolling transcript; elsewhere (pipes, CI=true) only plain lines are
//! written, so logs stay readable.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

pub struct Display {
    bar: Option<ProgressBar>,
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

impl Display {
    pub fn new(total: usize) -> Display {
        let bar = (std::io::stdout().is_terminal() && !in_ci()).then(|| {
            let bar = ProgressBar::new(total as u64);
            if let Ok(style) =
                ProgressStyle::with_template("{spinner} [{pos}/{len}] {elapsed} {wide_msg}")
            {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Display { bar }
    }

    pub fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => println!("{text}"),
        }
    }

    pub fn start(&self, prompt: &str, command: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{prompt} $ {command}"));
        }
        self.line(&format!("[{prompt}] $ {command}"));
    }

    pub fn step_done(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
