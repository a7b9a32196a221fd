//! The accepted transcript of a walkthrough: plain text, one section per command, normalised.
//!
//! ```text
//! @@ block 3 node=node1
//! $ docker service ls
//! ID             NAME      MODE         REPLICAS   IMAGE             PORTS
//! <id>           psql      replicated   1/1        postgres:latest
//! ```

use similar::TextDiff;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SnapshotError {
    #[error("snapshot line {line}: expected `$ command` after the `@@ block` line")]
    MissingCommand { line: usize },
    #[error("snapshot line {line}: text outside a `@@ block` section")]
    Stray { line: usize },
}

const SECTION: &str = "@@ block ";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub block: usize,
    /// `node=node1` or `task=web.1`.
    pub target: String,
    pub command: String,
    /// Normalised output, plus `[exit N]` when the command failed.
    pub output: Vec<String>,
}

impl Entry {
    pub fn header(&self) -> String {
        format!("{SECTION}{} {}", self.block, self.target)
    }
}

pub fn render(plan: &str, entries: &[Entry]) -> String {
    let mut out = format!(
        "# swarmkit walkthrough snapshot: {plan}\n\
         # Normalised transcript, accepted with `swarmkit walkthrough {plan} --update`.\n"
    );
    for e in entries {
        out.push('\n');
        out.push_str(&e.header());
        out.push_str(&format!("\n$ {}\n", e.command));
        for l in &e.output {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

pub fn parse(text: &str) -> Result<Vec<Entry>, SnapshotError> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l)).peekable();
    while let Some((n, line)) = lines.next() {
        if let Some(rest) = line.strip_prefix(SECTION) {
            let (block, target) = rest.split_once(' ').unwrap_or((rest, ""));
            let command = match lines.next() {
                Some((_, c)) if c.starts_with("$ ") => c[2..].to_string(),
                _ => return Err(SnapshotError::MissingCommand { line: n + 1 }),
            };
            let mut output = Vec::new();
            while let Some((_, l)) = lines.next_if(|(_, l)| !l.starts_with(SECTION)) {
                output.push(l.to_string());
            }
            while output.last().is_some_and(|l| l.is_empty()) {
                output.pop();
            }
            entries.push(Entry {
                block: block.parse().unwrap_or(0),
                target: target.to_string(),
                command,
                output,
            });
        } else if entries.is_empty() && (line.starts_with('#') || line.trim().is_empty()) {
            continue;
        } else {
            return Err(SnapshotError::Stray { line: n });
        }
    }
    Ok(entries)
}

/// A unified diff from `expected` to `actual`, both given as lines.
pub fn unified_diff(expected: &[String], actual: &[String], from: &str, to: &str) -> String {
    let join = |v: &[String]| v.iter().map(|l| format!("{l}\n")).collect::<String>();
    let (a, b) = (join(expected), join(actual));
    TextDiff::from_lines(&a, &b)
        .unified_diff()
        .context_radius(3)
        .header(from, to)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<Entry> {
        vec![
            Entry {
                block: 1,
                target: "node=node1".into(),
                command: "docker network create --driver overlay mydrupal".into(),
                output: vec!["<id>".into()],
            },
            Entry {
                block: 2,
                target: "task=web.1".into(),
                command: "getent hosts nothere".into(),
                output: vec!["[exit 2]".into()],
            },
            Entry {
                block: 2,
                target: "task=web.1".into(),
                command: "true".into(),
                output: vec![],
            },
        ]
    }

    #[test]
    fn render_then_parse_round_trips() {
        let text = render("routing", &entries());
        assert!(text.starts_with("# swarmkit walkthrough snapshot: routing\n"));
        assert!(text.contains("\n@@ block 1 node=node1\n$ docker network create"));
        assert_eq!(parse(&text), Ok(entries()));
    }

    #[test]
    fn parse_rejects_damaged_files() {
        assert_eq!(
            parse("@@ block 1 node=n\nno prompt\n"),
            Err(SnapshotError::MissingCommand { line: 2 })
        );
        assert_eq!(parse("junk\n"), Err(SnapshotError::Stray { line: 1 }));
    }

    #[test]
    fn diff_shows_changed_lines_with_headers() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let d = unified_diff(
            &v(&["ID  NAME", "<id>  psql", "<id>  drupal"]),
            &v(&["ID  NAME", "<id>  psql", "<id>  web"]),
            "snapshot",
            "actual",
        );
        assert!(d.starts_with("--- snapshot\n+++ actual\n"), "{d}");
        assert!(d.contains("\n-<id>  drupal\n+<id>  web\n"), "{d}");
        assert!(d.contains("\n ID  NAME\n"), "{d}");
    }
}
