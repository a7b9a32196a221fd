//! Replaying a parsed walkthrough against a running cluster: run each command, show it live,
//! check it against the Markdown, the snapshot and the block's assertions.

use std::time::{Duration, Instant};

use testbed::Backend;

use super::display::Display;
use super::exec::{self, Runner};
use super::normalize::{compare_keys, matches_expected, normalize};
use super::plan::{Block, Command, Plan};
use super::snapshot::{Entry, unified_diff};

/// How long to wait between attempts of a `retry=` block.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

pub struct Report {
    pub commands: usize,
    /// Every failure: the Markdown's expectations, assertions, timeouts, the snapshot.
    pub mismatches: usize,
    /// The part of `mismatches` that only the snapshot saw.
    pub snapshot_mismatches: usize,
    /// The new transcript, in snapshot form.
    pub entries: Vec<Entry>,
}

pub struct Session<'a> {
    pub plan: &'a Plan,
    pub runner: &'a Runner,
    pub display: &'a Display,
    /// The accepted snapshot, when there is one.
    pub snapshot: Option<&'a [Entry]>,
    /// The cluster's backend, for blocks that run only on some (`backend=`).
    pub backend: Backend,
}

struct Ran {
    raw: String,
    transcript: Vec<String>,
    elapsed: Duration,
    timed_out: bool,
    doc_ok: bool,
    normalised: Vec<String>,
}

impl Session<'_> {
    pub async fn run(&self) -> anyhow::Result<Report> {
        let mut report = Report {
            commands: 0,
            mismatches: 0,
            snapshot_mismatches: 0,
            entries: Vec::new(),
        };
        // Position in the snapshot: it also counts the commands of skipped blocks.
        let mut index = 0;
        for block in &self.plan.blocks {
            if !block.runs_on(self.backend) {
                index += block.commands.len();
                self.display.line(&format!(
                    "  skipped: block {} runs on the {} backend only",
                    block.number,
                    block.backend_names()
                ));
                continue;
            }
            let mut raw_outputs = Vec::new();
            for command in &block.commands {
                let ran = self.run_command(block, command).await?;
                let entry = Entry {
                    block: block.number,
                    target: block.target.to_string(),
                    command: command.line.clone(),
                    output: ran.transcript.clone(),
                };
                let (own, snap) = self.check(block, command, &ran, &entry, index);
                index += 1;
                report.mismatches += own + snap;
                report.snapshot_mismatches += snap;
                report.commands += 1;
                report.entries.push(entry);
                raw_outputs.push(ran.raw);
                self.display.step_done();
            }
            for assertion in &block.assertions {
                match assertion.check(&raw_outputs) {
                    Ok(()) => self
                        .display
                        .line(&format!("  ok: block {} expects {assertion}", block.number)),
                    Err(why) => {
                        report.mismatches += 1;
                        self.display.line(&format!(
                            "MISMATCH block {} ({}): expect {assertion}: {why}",
                            block.number,
                            block.target.label()
                        ));
                    }
                }
            }
        }
        let snapshot_len = self.snapshot.map_or(0, <[Entry]>::len);
        if snapshot_len > index {
            report.mismatches += 1;
            report.snapshot_mismatches += 1;
            self.display.line(&format!(
                "MISMATCH: the snapshot has {} commands, the walkthrough ran {}; \
                 run with --update if the walkthrough changed",
                snapshot_len, index
            ));
        }
        Ok(report)
    }

    async fn run_command(&self, block: &Block, command: &Command) -> anyhow::Result<Ran> {
        let mut patterns = block.patterns.clone();
        patterns.extend(command.patterns.iter().cloned());
        let expected = compare_keys(&normalize(&command.expected.join("\n"), &patterns)?);
        let retry_until = block
            .retry_secs
            .map(|s| Instant::now() + Duration::from_secs(s));
        let timeout = Duration::from_secs(block.timeout_secs);
        self.display.start(block.target.label(), &command.line);
        loop {
            // Made for each attempt: where it goes (the manager that answers) may change
            // between attempts, as managers fail over.
            let invocation = self.runner.invocation(&block.target, &command.line);
            let outcome = exec::run(&invocation, timeout, |l| self.display.line(l)).await?;
            let normalised = normalize(&outcome.output, &patterns)?;
            let doc_ok = block.nocheck || matches_expected(&expected, &compare_keys(&normalised));
            let again = !doc_ok && retry_until.is_some_and(|t| Instant::now() + RETRY_PAUSE < t);
            if again {
                self.display
                    .line("  (output does not match the walkthrough yet; retrying)");
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
            let mut transcript = normalised.clone();
            match (outcome.status, outcome.timed_out) {
                (_, true) => transcript.push(format!("[timed out after {}s]", block.timeout_secs)),
                (Some(0), _) => {}
                (Some(code), _) => transcript.push(format!("[exit {code}]")),
                (None, _) => transcript.push("[killed by a signal]".into()),
            }
            return Ok(Ran {
                raw: outcome.output,
                transcript,
                elapsed: outcome.elapsed,
                timed_out: outcome.timed_out,
                doc_ok,
                normalised,
            });
        }
    }

    /// Reports every way this command's result differs from what was expected; returns the
    /// mismatches the walkthrough itself found and those only the snapshot found.
    fn check(
        &self,
        block: &Block,
        command: &Command,
        ran: &Ran,
        entry: &Entry,
        index: usize,
    ) -> (usize, usize) {
        let where_ = format!(
            "block {} ({}) `{}`, {:.2}s",
            block.number,
            block.target.label(),
            command.line,
            ran.elapsed.as_secs_f64()
        );
        let mut mismatches = 0;
        if ran.timed_out {
            self.display.line(&format!(
                "MISMATCH {where_}: no answer within {}s",
                block.timeout_secs
            ));
            return (1, 0);
        }
        if !ran.doc_ok {
            mismatches += 1;
            let mut patterns = block.patterns.clone();
            patterns.extend(command.patterns.iter().cloned());
            let expected = normalize(&command.expected.join("\n"), &patterns).unwrap_or_default();
            self.display.line(&format!(
                "MISMATCH {where_}: output differs from the walkthrough (line {})\n{}",
                command.source_line,
                unified_diff(
                    &compare_keys(&expected),
                    &compare_keys(&ran.normalised),
                    "walkthrough",
                    "actual"
                )
            ));
        }
        let Some(snapshot) = self.snapshot else {
            return (mismatches, 0);
        };
        let own = mismatches;
        let mut mismatches = 0;
        match snapshot.get(index) {
            Some(old) if old.command == entry.command && old.target == entry.target => {
                let (a, b) = (compare_keys(&old.output), compare_keys(&entry.output));
                if a != b {
                    mismatches += 1;
                    self.display.line(&format!(
                        "MISMATCH {where_}: output differs from the snapshot\n{}",
                        unified_diff(&a, &b, "snapshot", "actual")
                    ));
                }
            }
            Some(old) => {
                mismatches += 1;
                self.display.line(&format!(
                    "MISMATCH {where_}: the snapshot has `{}` ({}) here; \
                     run with --update if the walkthrough changed",
                    old.command, old.target
                ));
            }
            None => {
                mismatches += 1;
                self.display.line(&format!(
                    "MISMATCH {where_}: not in the snapshot; run with --update if the \
                     walkthrough changed"
                ));
            }
        }
        (own, mismatches)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::walkthrough::plan::Client;
    use crate::walkthrough::{plan, snapshot};

    /// A stand-in for the swarmkit binary: `node exec N -- CMD...` runs CMD here, and
    /// `service ls NAME` prints a one-row table for NAME.
    const FAKE: &str = "#!/bin/sh\nshift 2\ncase \"$1\" in\n\
        node) shift 4; exec \"$@\" ;;\n\
        service) printf 'ID             NAME   MODE\\nab12cd34ef56   %s   replicated\\n' \"$3\" ;;\n\
        esac\n";

    const PLAN: &str = "# Fake\n\n```console node=node1\n$ docker service ls psql\n\
        ID    NAME   MODE\n<id>  psql   replicated\n$ printf 'x\\n'\nx\n```\n\
        <!-- expect: lines '^x$' 1 -->\n";

    async fn run_plan(markdown: &str, snap: Option<&[Entry]>, tag: &str) -> Report {
        let dir = std::env::temp_dir().join(format!("sk-walk-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let exe = dir.join("swarmkit");
        std::fs::write(&exe, FAKE).expect("write fake");
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let runner = Runner {
            exe,
            cluster: "fake".into(),
            client: Client::Swarmkit,
            lab_nodes: None,
        };
        let plan = plan::parse("fake", markdown).expect("plan parses");
        let display = Display::new(plan.command_count());
        let session = Session {
            plan: &plan,
            runner: &runner,
            display: &display,
            snapshot: snap,
            backend: Backend::Netns,
        };
        let report = session.run().await;
        let _ = std::fs::remove_dir_all(&dir);
        report.expect("runs")
    }

    #[tokio::test]
    async fn passes_then_matches_its_own_snapshot() {
        let first = run_plan(PLAN, None, "a").await;
        assert_eq!((first.commands, first.mismatches), (2, 0));
        assert_eq!(
            first.entries[0].output,
            vec!["ID             NAME   MODE", "<id>   psql   replicated"]
        );
        let snap = snapshot::parse(&snapshot::render("fake", &first.entries)).expect("parses");
        let again = run_plan(PLAN, Some(&snap), "b").await;
        assert_eq!((again.mismatches, again.snapshot_mismatches), (0, 0));
    }

    #[tokio::test]
    async fn snapshot_differences_are_counted_apart() {
        let first = run_plan(PLAN, None, "c").await;
        let mut snap = first.entries.clone();
        // Padding alone is not a difference; a changed word is.
        snap[0].output[1] = "<id>      psql        replicated".into();
        let same = run_plan(PLAN, Some(&snap), "d").await;
        assert_eq!(same.mismatches, 0);
        snap[0].output[1] = "<id>   psql   global".into();
        let changed = run_plan(PLAN, Some(&snap), "e").await;
        assert_eq!((changed.mismatches, changed.snapshot_mismatches), (1, 1));
        let longer = [snap.clone(), snap].concat();
        let extra = run_plan(PLAN, Some(&longer), "f").await;
        assert_eq!(extra.snapshot_mismatches, 2);
    }

    #[tokio::test]
    async fn markdown_and_assertion_failures_are_the_walkthroughs_own() {
        let wrong = PLAN.replace("<id>  psql   replicated", "<id>  psql   global");
        let r = run_plan(&wrong, None, "g").await;
        assert_eq!((r.mismatches, r.snapshot_mismatches), (1, 0));
        let failing = PLAN.replace("'^x$' 1", "'^y$' 1");
        let r = run_plan(&failing, None, "h").await;
        assert_eq!((r.mismatches, r.snapshot_mismatches), (1, 0));
    }

    #[tokio::test]
    async fn blocks_for_other_backends_are_skipped_and_keep_their_snapshot_place() {
        // A qemu-only block first: skipped here, its snapshot entry passed over, not compared
        // with the next block's command.
        let plan = format!("```console node=node1 backend=qemu\n$ printf 'q\\n'\nq\n```\n{PLAN}");
        let full = run_plan(&plan.replace("backend=qemu", "backend=netns"), None, "i").await;
        assert_eq!((full.commands, full.mismatches), (3, 0));
        let r = run_plan(&plan, Some(&full.entries), "j").await;
        assert_eq!((r.commands, r.mismatches, r.snapshot_mismatches), (2, 0, 0));
        let mut changed = full.entries.clone();
        changed[2].output = vec!["y".into()];
        let r = run_plan(&plan, Some(&changed), "k").await;
        assert_eq!(r.snapshot_mismatches, 1);
    }
}
