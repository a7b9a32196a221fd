//! Named normalisation patterns, applied to actual and expected output alike before they are
//! compared, so that what legitimately changes between runs (IDs, clocks, random names,
//! allocator choices) does not count as a difference. Defaults always apply; a block or a line
//! opts into the others by name (`normalize=ip`, `# normalize: ip`).

use std::sync::OnceLock;

use regex::Regex;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NormalizeError {
    #[error("unknown normalisation pattern {0:?} (known: {known})", known = known_names())]
    Unknown(String),
}

enum Rule {
    Regex(&'static str, &'static str),
    Func(fn(&str) -> String),
}

pub struct Pattern {
    pub name: &'static str,
    /// Applied to every command, or only when asked for by name.
    pub default: bool,
    pub about: &'static str,
    rule: Rule,
}

/// The meter's two header lines, then any number of records `%3d SIZE %3d SIZE %3d SIZE
/// SPEED SPEED TIME TIME TIME SPEED`, each starting with CR.
const CURL_METER: &str = concat!(
    r"(?m)^ +% Total +% Received % Xferd .*\n +Dload +Upload .*\n|",
    r"\r? *\d+ +\d+(?:\.\d+)?[kMGTP]? +\d+ +\d+(?:\.\d+)?[kMGTP]? +\d+ +\d+(?:\.\d+)?[kMGTP]?",
    r" +\d+(?:\.\d+)?[kMGTP]? +\d+(?:\.\d+)?[kMGTP]?",
    r" +(?:--:--:--|\d+:\d\d:\d\d) +(?:--:--:--|\d+:\d\d:\d\d) +(?:--:--:--|\d+:\d\d:\d\d) +\d+(?:\.\d+)?[kMGTP]?\n?",
);

/// Applied in this order. Opt-in address patterns come before `overlay-host`, which would
/// otherwise have rewritten the addresses they look for.
pub const PATTERNS: &[Pattern] = &[
    Pattern {
        name: "curl-meter",
        default: true,
        about: "drop curl's progress meter, which it writes to stderr when stdout is not a \
                terminal (the walkthrough's pipe) and a reader's terminal never shows",
        rule: Rule::Regex(CURL_METER, ""),
    },
    Pattern {
        name: "terminal",
        default: true,
        about: "drop ANSI escapes and CRs; a line redrawn with CR keeps its last state",
        rule: Rule::Func(terminal),
    },
    Pattern {
        name: "service-progress",
        default: true,
        about: "keep only the final `overall progress` and `verify:` lines of `service create` \
                (the docker CLI prints no task bars when not on a terminal)",
        rule: Rule::Func(service_progress),
    },
    Pattern {
        name: "id25",
        default: true,
        about: "25-character base36 object IDs -> <id>",
        rule: Rule::Regex(r"\b[0-9a-z]{25}\b", "<id>"),
    },
    Pattern {
        name: "id12",
        default: true,
        about: "12-character ID prefixes in a table's first column -> <id>",
        rule: Rule::Regex(r"(?m)^[0-9a-z]{12}(\s|$)", "<id>$1"),
    },
    Pattern {
        name: "when",
        default: true,
        about: "relative times (`27 seconds ago`, `About a minute ago`) -> <when>",
        rule: Rule::Regex(
            r"(?i)\b(?:Less than a second|About an? (?:minute|hour)|\d+ (?:second|minute|hour|day|week|month|year)s?) ago\b",
            "<when>",
        ),
    },
    Pattern {
        name: "timestamp",
        default: true,
        about: "RFC 3339 timestamps (`2026-11-26T07:25:43.052894240Z`) -> <timestamp>",
        rule: Rule::Regex(
            r"\b\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})",
            "<timestamp>",
        ),
    },
    Pattern {
        name: "version-index",
        default: true,
        about: "object versions (`\"Index\": 9`) -> <index>: they count every write in the cluster",
        rule: Rule::Regex(r#""Index": \d+"#, r#""Index": <index>"#),
    },
    Pattern {
        name: "hostname",
        default: true,
        about: "a task's hostname, its 12-character ID prefix (`Hostname: 4284kpdg4v6b`) -> <id>",
        rule: Rule::Regex(r"(?m)^Hostname: [0-9a-z]{12}$", "Hostname: <id>"),
    },
    Pattern {
        name: "client-port",
        default: true,
        about: "the client's ephemeral port in whoami's `RemoteAddr: 10.0.0.5:50328` -> :<port>",
        rule: Rule::Regex(r"(?m)^(RemoteAddr: [0-9.]+):\d+$", "$1:<port>"),
    },
    Pattern {
        name: "http-date",
        default: true,
        about: "HTTP `Date:` header -> Date: <date>",
        rule: Rule::Regex(r"(?m)^Date: .*$", "Date: <date>"),
    },
    Pattern {
        name: "es-name",
        default: true,
        about: "elasticsearch node name -> \"name\" : \"<name>\"",
        rule: Rule::Regex(r#""name"(\s*):(\s*)"[^"]*""#, r#""name"$1:$2"<name>""#),
    },
    Pattern {
        name: "es-uuid",
        default: true,
        about: "elasticsearch cluster_uuid -> \"cluster_uuid\" : \"<uuid>\"",
        rule: Rule::Regex(
            r#""cluster_uuid"(\s*):(\s*)"[^"]*""#,
            r#""cluster_uuid"$1:$2"<uuid>""#,
        ),
    },
    Pattern {
        name: "ip",
        default: false,
        about: "any IPv4 address -> <ip> (for addresses whose subnet is not fixed either)",
        rule: Rule::Regex(r"\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b", "<ip>"),
    },
    Pattern {
        name: "mac",
        default: false,
        about: "MAC addresses -> <mac>",
        rule: Rule::Regex(r"\b(?:[0-9a-f]{2}:){5}[0-9a-f]{2}\b", "<mac>"),
    },
    Pattern {
        name: "node",
        default: false,
        about: "node names (`node2`) -> <node>, where the scheduler may pick any node",
        rule: Rule::Regex(r"\bnode\d+\b", "<node>"),
    },
    Pattern {
        name: "slot",
        default: false,
        about: "task names' slots (`search.2`) -> search.<slot>, where the scheduler picks \
                which slot lands on which node",
        rule: Rule::Regex(r"\b([a-z][a-z0-9_-]*)\.[1-9]\d*\b", "$1.<slot>"),
    },
    Pattern {
        name: "sandbox",
        default: false,
        about: "names made from a network's ID: sandboxes (`1-72eabnq9ed`) -> 1-<id>, \
                devices (`vx-001000-72eab`) -> vx-001000-<id>",
        rule: Rule::Regex(r"\b(1|(?:vx|ov)-[0-9a-f]{6})-[a-z0-9]{5,10}\b", "$1-<id>"),
    },
    Pattern {
        name: "packets",
        default: false,
        about: "interface packet counts (`6 packets sent`) -> <n> packets",
        rule: Rule::Regex(r"\b\d+ packets\b", "<n> packets"),
    },
    Pattern {
        name: "lab",
        default: true,
        about: "a Docker lab's name in its namespaces' names (`doctor-wt4242-n2`, and any \
                `netns NAME-n2`) and directory (`/run/swarm-labs/doctor-wt4242/`) -> <lab>",
        rule: Rule::Func(lab),
    },
    Pattern {
        name: "overlay-host",
        default: true,
        about: "host part of 10.x.y.z addresses -> 10.x.y.<n>: the subnet is fixed, \
                the allocator's order is not",
        rule: Rule::Regex(r"\b10\.(\d{1,3})\.(\d{1,3})\.\d{1,3}\b", "10.$1.$2.<n>"),
    },
    Pattern {
        name: "doctor-pairs",
        default: false,
        about: "sort the task pairs doctor lists under one finding (`    task A on N is \
                unreachable ... from task B on M`), which follow the API's task order; \
                applied last, to the normalised lines",
        rule: Rule::Func(doctor_pairs),
    },
];

fn known_names() -> String {
    PATTERNS
        .iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn check_names(names: &[String]) -> Result<(), NormalizeError> {
    match names
        .iter()
        .find(|n| !PATTERNS.iter().any(|p| p.name == n.as_str()))
    {
        Some(n) => Err(NormalizeError::Unknown(n.clone())),
        None => Ok(()),
    }
}

fn compiled() -> &'static [Option<Regex>] {
    static COMPILED: OnceLock<Vec<Option<Regex>>> = OnceLock::new();
    COMPILED.get_or_init(|| {
        PATTERNS
            .iter()
            .map(|p| match p.rule {
                // The table is fixed at compile time and covered by tests, so a pattern that
                // does not compile is a programming error caught before release.
                Rule::Regex(re, _) => Some(Regex::new(re).expect("pattern table compiles")),
                Rule::Func(_) => None,
            })
            .collect()
    })
}

/// Applies the default patterns plus the named extras; returns the lines, right-trimmed,
/// without leading or trailing blank lines.
pub fn normalize(text: &str, extra: &[String]) -> Result<Vec<String>, NormalizeError> {
    check_names(extra)?;
    let mut out = text.to_string();
    for (p, re) in PATTERNS.iter().zip(compiled()) {
        if !(p.default || extra.iter().any(|e| e == p.name)) {
            continue;
        }
        out = match (&p.rule, re) {
            (Rule::Regex(_, with), Some(re)) => re.replace_all(&out, *with).into_owned(),
            (Rule::Func(f), _) => f(&out),
            (Rule::Regex(..), None) => out,
        };
    }
    let mut lines: Vec<String> = out.lines().map(|l| l.trim_end().to_string()).collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let first = lines
        .iter()
        .position(|l| !l.is_empty())
        .unwrap_or(lines.len());
    Ok(lines.split_off(first))
}

/// The form two lines are compared in: column padding (runs of 2+ blanks after the first
/// visible character) becomes one fixed separator, so tables whose widths moved because a
/// name or a normalised ID changed length still compare equal. Indentation is kept.
pub fn compare_key(line: &str) -> String {
    let body = line.trim_start();
    let indent = &line[..line.len() - body.len()];
    let mut out = String::from(indent);
    let mut blanks = 0;
    for c in body.trim_end().chars() {
        if c == ' ' || c == '\t' {
            blanks += 1;
            continue;
        }
        match blanks {
            0 => {}
            1 => out.push(' '),
            _ => out.push_str("  "),
        }
        blanks = 0;
        out.push(c);
    }
    out
}

pub fn compare_keys(lines: &[String]) -> Vec<String> {
    lines.iter().map(|l| compare_key(l)).collect()
}

/// Whether actual lines match the expected ones; an expected line that is just `...` stands
/// for any number of lines (the Markdown may show an excerpt, as the tutorial does).
pub fn matches_expected(expected: &[String], actual: &[String]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((first, rest)) if first.trim() == "..." => {
            (0..=actual.len()).any(|skip| matches_expected(rest, &actual[skip..]))
        }
        Some((first, rest)) => actual
            .split_first()
            .is_some_and(|(a, more)| a == first && matches_expected(rest, more)),
    }
}

fn lab(text: &str) -> String {
    static RUN: OnceLock<Regex> = OnceLock::new();
    static NETNS: OnceLock<Regex> = OnceLock::new();
    let run = RUN.get_or_init(|| {
        Regex::new(r"\b(?:[a-z0-9][a-z0-9-]*-)?wt\d+(-(?:n\d+|ul)\b|/)").expect("lab regex")
    });
    let netns = NETNS.get_or_init(|| {
        Regex::new(r"\b(netns[: ]+)[a-z0-9][a-z0-9-]*?-(n\d+|ul)\b").expect("netns regex")
    });
    let text = run.replace_all(text, "<lab>$1");
    netns.replace_all(&text, "$1<lab>-$2").into_owned()
}

fn doctor_pairs(text: &str) -> String {
    let is_pair = |l: &str| l.starts_with("    task ");
    let mut out: Vec<&str> = Vec::new();
    let mut run: Vec<&str> = Vec::new();
    for line in text.split('\n') {
        if is_pair(line) {
            run.push(line);
            continue;
        }
        run.sort_unstable();
        out.append(&mut run);
        out.push(line);
    }
    run.sort_unstable();
    out.append(&mut run);
    out.join("\n")
}

fn terminal(text: &str) -> String {
    static ANSI: OnceLock<Regex> = OnceLock::new();
    let ansi = ANSI.get_or_init(|| Regex::new(r"\x1b\[[0-9;?]*[A-Za-z]").expect("ansi regex"));
    let clean = ansi.replace_all(text, "");
    clean
        .split('\n')
        .map(|l| {
            let l = l.trim_end_matches('\r');
            l.rsplit('\r').next().unwrap_or(l)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn service_progress(text: &str) -> String {
    static TASK_BAR: OnceLock<Regex> = OnceLock::new();
    let task_bar = TASK_BAR.get_or_init(|| Regex::new(r"^\d+/\d+: ").expect("task bar regex"));
    if !text.lines().any(|l| l.starts_with("overall progress:")) {
        return text.to_string();
    }
    let is_progress = |l: &str| {
        l.starts_with("overall progress:") || l.starts_with("verify:") || task_bar.is_match(l)
    };
    let last = |prefix: &str| text.lines().rfind(|l| l.starts_with(prefix));
    let mut summary: Vec<String> = last("overall progress:")
        .into_iter()
        .map(String::from)
        .collect();
    if let Some(v) = last("verify:") {
        // Newer docker CLIs name the service here; older ones and swarmkit do not.
        let v = match (
            v.strip_prefix("verify: Service "),
            v.ends_with(" converged"),
        ) {
            (Some(_), true) => "verify: Service converged".to_string(),
            _ => v.to_string(),
        };
        summary.push(v);
    }
    let mut out = Vec::new();
    let mut placed = false;
    for line in text.lines() {
        if is_progress(line) {
            if !placed {
                out.append(&mut summary);
                placed = true;
            }
        } else {
            out.push(line.to_string());
        }
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(text: &str, extra: &[&str]) -> String {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        normalize(text, &extra).expect("known patterns").join("\n")
    }

    #[test]
    fn a_walkthroughs_lab_is_named_alike_in_every_run() {
        assert_eq!(
            norm(
                "read through netns default-wt4242-n2; /run/swarm-labs/default-wt4242/n1",
                &[]
            ),
            "read through netns <lab>-n2; /run/swarm-labs/<lab>/n1"
        );
        assert_eq!(
            norm("wt7-ul and sk-c.node1", &[]),
            "<lab>-ul and sk-c.node1"
        );
        assert_eq!(
            norm("node2=netns:demo-n2, read through netns my-lab-n1", &[]),
            "node2=netns:<lab>-n2, read through netns <lab>-n1"
        );
    }

    #[test]
    fn doctor_pairs_are_sorted_within_their_finding_only() {
        let text = "x\n    task b on n2\n    task a on n1\n    fix: y\n    task d\n    task c";
        assert_eq!(
            norm(text, &["doctor-pairs"]),
            "x\n    task a on n1\n    task b on n2\n    fix: y\n    task c\n    task d"
        );
    }

    #[test]
    fn every_regex_compiles() {
        assert_eq!(compiled().len(), PATTERNS.len());
    }

    #[test]
    fn id25() {
        assert_eq!(norm("lh4w98i3ck5454z9boaa9xs95", &[]), "<id>");
        assert_eq!(
            norm(r#""NetworkID": "76sdz5r0hwwhgzttckuxpett8","#, &[]),
            r#""NetworkID": "<id>","#
        );
        // 40-hex build hashes are not IDs.
        let hash = r#""build_hash" : "5376dca9f70f3abef96a77f4bb22720ace8240fd","#;
        assert_eq!(norm(hash, &[]), hash);
    }

    #[test]
    fn id12_only_in_first_column() {
        assert_eq!(
            norm("lh4w98i3ck54        psql      replicated", &[]),
            "<id>        psql      replicated"
        );
        assert_eq!(norm("cb21ea2c730e", &[]), "<id>");
        assert_eq!(
            norm("Status: distribution unchanged", &[]),
            "Status: distribution unchanged"
        );
    }

    #[test]
    fn when() {
        for t in [
            "27 seconds ago",
            "1 second ago",
            "Less than a second ago",
            "less than a second ago",
            "About a minute ago",
            "About an hour ago",
            "4 minutes ago",
            "2 days ago",
        ] {
            assert_eq!(norm(&format!("Running {t}  x"), &[]), "Running <when>  x");
        }
    }

    #[test]
    fn http_date_and_crlf() {
        assert_eq!(
            norm(
                "HTTP/1.1 302 Found\r\nDate: Wed, 29 Apr 2020 04:46:09 GMT\r\n",
                &[]
            ),
            "HTTP/1.1 302 Found\nDate: <date>"
        );
    }

    #[test]
    fn elasticsearch_name_and_uuid() {
        assert_eq!(
            norm(
                "  \"name\" : \"Freedom Ring\",\n  \"cluster_uuid\" : \"VVZ_fiffQ529pIarveFLjw\",",
                &[]
            ),
            "  \"name\" : \"<name>\",\n  \"cluster_uuid\" : \"<uuid>\","
        );
    }

    #[test]
    fn overlay_host_keeps_subnet() {
        assert_eq!(
            norm(r#""Addr": "10.255.0.4/16""#, &[]),
            r#""Addr": "10.255.0.<n>/16""#
        );
        assert_eq!(
            norm("X-Powered-By: PHP/7.3.17", &[]),
            "X-Powered-By: PHP/7.3.17"
        );
    }

    #[test]
    fn opt_in_patterns() {
        assert_eq!(norm("10.0.1.7 api", &[]), "10.0.1.<n> api");
        assert_eq!(norm("10.0.1.7 api", &["ip"]), "<ip> api");
        assert_eq!(norm("ether 02:42:0a:00:00:05", &["mac"]), "ether <mac>");
        assert_eq!(norm("search.1  node3", &["node"]), "search.1  <node>");
        assert_eq!(norm("search.1  node3", &[]), "search.1  node3");
        assert_eq!(
            norm("search.12 elasticsearch:2 PHP/7.3.17", &["slot"]),
            "search.<slot> elasticsearch:2 PHP/7.3.17"
        );
        assert_eq!(
            norm("node3/1-72eabnq9ed VXLAN vx-001000-72eab", &["sandbox"]),
            "node3/1-<id> VXLAN vx-001000-<id>"
        );
        assert_eq!(
            norm("VNI 4096, 6 packets sent", &["packets"]),
            "VNI 4096, <n> packets sent"
        );
        assert_eq!(
            normalize("x", &["nope".to_string()]),
            Err(NormalizeError::Unknown("nope".into()))
        );
    }

    #[test]
    fn curl_meter_is_dropped() {
        let header = "  % Total    % Received % Xferd  Average Speed   Time    Time     Time  Current\n                                 Dload  Upload   Total   Spent    Left  Speed\n";
        let body = format!(
            "{header}\r  0     0    0     0    0     0      0      0 --:--:-- --:--:-- --:--:--     0\
             \r100    15  100    15    0     0   7774      0 --:--:-- --:--:-- --:--:--   789\n\
             {{\"name\" : \"x\"}}\n"
        );
        assert_eq!(norm(&body, &[]), "{\"name\" : \"<name>\"}");
        let head = format!(
            "{header}\r  0     0    0     0    0     0      0      0 --:--:-- --:--:-- --:--:--     0\
             \r  0    15    0     0    0     0      0      0  0:00:01 --:--:-- --:--:--  1.2M\n\
             HTTP/1.0 200 OK\r\nServer: x\r\n\r\n"
        );
        assert_eq!(norm(&head, &[]), "HTTP/1.0 200 OK\nServer: x");
    }

    #[test]
    fn terminal_escapes_and_redraws() {
        assert_eq!(
            norm("\x1b[1Kpartial\rfinal\x1b[K\nnext", &[]),
            "final\nnext"
        );
    }

    #[test]
    fn service_progress_tty_and_pipe_agree() {
        let tty = "lh4w98i3ck5454z9boaa9xs95\noverall progress: 1 out of 1 tasks\n\
                   1/1: running   [==================================================>]\n\
                   verify: Service converged\n";
        let piped = "lh4w98i3ck5454z9boaa9xs95\noverall progress: 0 out of 1 tasks\n\
                     overall progress: 1 out of 1 tasks\n\
                     verify: Waiting 5 seconds to verify that tasks are stable...\n\
                     verify: Service lh4w98i3ck5454z9boaa9xs95 converged\n";
        let want = "<id>\noverall progress: 1 out of 1 tasks\nverify: Service converged";
        assert_eq!(norm(tty, &[]), want);
        assert_eq!(norm(piped, &[]), want);
    }

    #[test]
    fn compare_key_collapses_padding_but_not_indent() {
        assert_eq!(
            compare_key("<id>        psql      replicated   1/1   "),
            "<id>  psql  replicated  1/1"
        );
        assert_eq!(
            compare_key("<id>  psql"),
            compare_key("<id>           psql")
        );
        assert_eq!(compare_key("    \"a\" : 1"), "    \"a\" : 1");
        assert_ne!(compare_key("a b"), compare_key("a  b"));
    }

    #[test]
    fn ellipsis_matches_any_lines() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(matches_expected(
            &v(&["a", "...", "d"]),
            &v(&["a", "b", "c", "d"])
        ));
        assert!(matches_expected(&v(&["a", "...", "d"]), &v(&["a", "d"])));
        assert!(matches_expected(&v(&["..."]), &v(&[])));
        assert!(!matches_expected(&v(&["a", "...", "d"]), &v(&["a", "b"])));
        assert!(!matches_expected(&v(&["a"]), &v(&["a", "b"])));
    }
}
