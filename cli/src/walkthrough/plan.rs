//! Reading a walkthrough: a Markdown file that is documentation first. Runnable blocks are
//! fenced `console` blocks whose info string names where they run (`console node=node1`,
//! `console task=web.1`); GitHub renders them like any console block and ignores the rest of
//! the info string. Settings and assertions live in HTML comments, which do not render.

use testbed::Backend;

use super::assert::Assertion;

/// Nodes a plan's cluster gets when the plan does not say.
pub const DEFAULT_NODES: usize = 3;
/// Seconds one command may run before it is killed and counted as a mismatch.
pub const DEFAULT_TIMEOUT_SECS: u64 = 120;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{file}: no runnable block (a fenced block with info string `console node=NAME`)")]
    Empty { file: String },
}

/// Which CLI answers `docker ...` lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Client {
    /// swarmkit's own CLI: `docker service ls` runs as `swarmkit --cluster C service ls`.
    Swarmkit,
    /// The real docker CLI, pointed at the cluster's manager socket with DOCKER_HOST.
    Docker,
}

/// What the walkthrough runs on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Engine {
    /// A fresh swarmkit cluster (`swarmkit cluster up`).
    #[default]
    Swarmkit,
    /// A real Docker Swarm: a lab of docker.io's dockerds in namespaces (`swarmkit lab up`).
    Docker,
}

/// Where a block's non-docker commands run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Node(String),
    Task(String),
    /// This host, inside the cluster's underlay namespace: the wire between the nodes, where
    /// a capture shows what really crosses it (`console underlay`).
    Underlay,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Node(n) => write!(f, "node={n}"),
            Target::Task(t) => write!(f, "task={t}"),
            Target::Underlay => write!(f, "underlay"),
        }
    }
}

impl Target {
    /// The name shown in prompts: `node1`, `web.1`.
    pub fn label(&self) -> &str {
        match self {
            Target::Node(n) | Target::Task(n) => n,
            Target::Underlay => "underlay",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Command {
    /// The command as the reader types it, without the `$ ` prompt.
    pub line: String,
    /// Expected output written in the Markdown, one entry per line.
    pub expected: Vec<String>,
    /// Extra normalisation patterns for this line only (`# normalize: ip` at its end).
    pub patterns: Vec<String>,
    /// Line of the `$ ` in the Markdown file, for messages.
    pub source_line: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    /// 1-based number among the file's runnable blocks.
    pub number: usize,
    pub target: Target,
    /// The Markdown's expected output is illustration only; the snapshot still checks it.
    pub nocheck: bool,
    /// Extra normalisation patterns for every command of the block.
    pub patterns: Vec<String>,
    /// Re-run each command until its output matches the Markdown, for at most this long.
    pub retry_secs: Option<u64>,
    pub timeout_secs: u64,
    /// `backend=netns`: the block shows what only these backends have (say, the sandbox
    /// layout of the routing mesh); on any other it is skipped, its snapshot entries kept.
    pub backends: Vec<Backend>,
    pub commands: Vec<Command>,
    pub assertions: Vec<Assertion>,
}

impl Block {
    /// Whether the block runs on a cluster of `backend` (a block that names none runs on all).
    pub fn runs_on(&self, backend: Backend) -> bool {
        self.backends.is_empty() || self.backends.contains(&backend)
    }

    /// The backends the block is limited to, for messages: `netns, qemu`.
    pub fn backend_names(&self) -> String {
        let names: Vec<&str> = self.backends.iter().map(|b| b.as_str()).collect();
        names.join(", ")
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub name: String,
    pub title: String,
    pub nodes: usize,
    /// `managers=N`: managers replicating the cluster's state (`cluster up --managers`).
    pub managers: usize,
    /// `client=docker`: the plan needs the real docker CLI (e.g. for `docker stack`), whatever
    /// `--client` says.
    pub client: Option<Client>,
    /// `engine=docker`: a real Docker Swarm instead of a swarmkit cluster.
    pub engine: Engine,
    pub blocks: Vec<Block>,
}

impl Plan {
    pub fn command_count(&self) -> usize {
        self.blocks.iter().map(|b| b.commands.len()).sum()
    }
}

/// The first `# ` heading, for `walkthrough list`; parsing errors do not hide a plan there.
pub fn title_of(markdown: &str) -> String {
    markdown
        .lines()
        .find_map(|l| l.strip_prefix("# "))
        .map(|t| t.trim().to_string())
        .unwrap_or_default()
}

pub fn parse(name: &str, markdown: &str) -> Result<Plan, PlanError> {
    let file = format!("{name}.md");
    let err = |line: usize, message: String| PlanError::Syntax {
        file: file.clone(),
        line,
        message,
    };
    let mut nodes = DEFAULT_NODES;
    let mut managers = 1;
    let mut client = None;
    let mut engine = Engine::Swarmkit;
    let mut blocks: Vec<Block> = Vec::new();
    let mut lines = markdown.lines().enumerate().map(|(i, l)| (i + 1, l));

    while let Some((lineno, line)) = lines.next() {
        let trimmed = line.trim_start();
        if let Some(fence) = fence_of(trimmed) {
            let info = trimmed[fence.len()..].trim();
            let body = collect_fence(&mut lines, fence);
            if let Some(mut block) = block_header(info).map_err(|m| err(lineno, m))? {
                block.number = blocks.len() + 1;
                block.commands = parse_body(&body).map_err(|(l, m)| err(l, m))?;
                if block.commands.is_empty() {
                    return Err(err(lineno, "runnable block has no `$ ` command".into()));
                }
                blocks.push(block);
            }
            continue;
        }
        if let Some((kind, rest)) = directive(trimmed) {
            match kind {
                "swarmkit" => {
                    for word in rest.split_whitespace() {
                        match word.split_once('=') {
                            Some(("nodes", n)) => {
                                nodes =
                                    n.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                                        err(lineno, format!("bad node count {n:?}"))
                                    })?
                            }
                            Some(("managers", n)) => {
                                managers = n.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                                    err(lineno, format!("bad manager count {n:?}"))
                                })?
                            }
                            Some(("client", "docker")) => client = Some(Client::Docker),
                            Some(("engine", "docker")) => engine = Engine::Docker,
                            Some(("engine", "swarmkit")) => engine = Engine::Swarmkit,
                            _ => return Err(err(lineno, format!("unknown setting {word:?}"))),
                        }
                    }
                }
                "expect" => {
                    let assertion = Assertion::parse(rest).map_err(|m| err(lineno, m))?;
                    let block = blocks.last_mut().ok_or_else(|| {
                        err(lineno, "`expect:` must follow a runnable block".into())
                    })?;
                    block.assertions.push(assertion);
                }
                _ => {}
            }
        }
    }
    if blocks.is_empty() {
        return Err(PlanError::Empty { file });
    }
    Ok(Plan {
        name: name.to_string(),
        title: title_of(markdown),
        nodes,
        managers,
        client,
        engine,
        blocks,
    })
}

fn fence_of(line: &str) -> Option<&str> {
    ["````", "```", "~~~"]
        .into_iter()
        .find(|f| line.starts_with(f))
        .map(|f| &line[..f.len()])
}

fn collect_fence<'a>(
    lines: &mut impl Iterator<Item = (usize, &'a str)>,
    fence: &str,
) -> Vec<(usize, &'a str)> {
    let mut body = Vec::new();
    for (n, l) in lines.by_ref() {
        if l.trim_start().starts_with(fence) && l.trim().trim_start_matches(fence).is_empty() {
            break;
        }
        body.push((n, l));
    }
    body
}

/// `<!-- kind: rest -->` on one line.
fn directive(line: &str) -> Option<(&str, &str)> {
    let inner = line.strip_prefix("<!--")?.trim_end().strip_suffix("-->")?;
    let (kind, rest) = inner.trim().split_once(':')?;
    Some((kind.trim(), rest.trim()))
}

/// `console node=node1 nocheck normalize=ip retry=10 timeout=60`; None for blocks that are
/// not meant to run (other languages, or `console` with no target).
fn block_header(info: &str) -> Result<Option<Block>, String> {
    let mut words = info.split_whitespace();
    if words.next() != Some("console") {
        return Ok(None);
    }
    let mut target = None;
    let mut block = Block {
        number: 0,
        target: Target::Node(String::new()),
        nocheck: false,
        patterns: Vec::new(),
        retry_secs: None,
        timeout_secs: DEFAULT_TIMEOUT_SECS,
        backends: Vec::new(),
        commands: Vec::new(),
        assertions: Vec::new(),
    };
    let secs = |v: &str| v.parse::<u64>().map_err(|_| format!("bad seconds {v:?}"));
    for word in words {
        match word.split_once('=') {
            Some(("node", n)) if !n.is_empty() => target = Some(Target::Node(n.into())),
            Some(("task", t)) if !t.is_empty() => target = Some(Target::Task(t.into())),
            Some(("normalize", p)) => block.patterns = split_list(p),
            Some(("retry", v)) => block.retry_secs = Some(secs(v)?),
            Some(("timeout", v)) => block.timeout_secs = secs(v)?,
            Some(("backend", b)) => {
                block.backends = split_list(b)
                    .iter()
                    .map(|n| n.parse().map_err(|_| format!("unknown backend {n:?}")))
                    .collect::<Result<_, _>>()?
            }
            None if word == "nocheck" => block.nocheck = true,
            None if word == "underlay" => target = Some(Target::Underlay),
            _ => return Err(format!("unknown block attribute {word:?}")),
        }
    }
    Ok(target.map(|t| Block { target: t, ..block }))
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect()
}

fn parse_body(body: &[(usize, &str)]) -> Result<Vec<Command>, (usize, String)> {
    let mut commands: Vec<Command> = Vec::new();
    let mut iter = body.iter().copied();
    while let Some((n, line)) = iter.next() {
        if let Some(cmd) = line.strip_prefix("$ ") {
            let mut text = cmd.trim().to_string();
            // A trailing backslash continues the command on the next line, as in a shell.
            while let Some(head) = text.strip_suffix('\\') {
                let Some((_, next)) = iter.next() else {
                    return Err((n, "command continues past the end of the block".into()));
                };
                text = format!("{} {}", head.trim_end(), next.trim());
            }
            let patterns = text
                .rsplit_once("# normalize:")
                .map(|(_, p)| split_list(p))
                .unwrap_or_default();
            commands.push(Command {
                line: text,
                expected: Vec::new(),
                patterns,
                source_line: n,
            });
        } else if let Some(cmd) = commands.last_mut() {
            cmd.expected.push(line.to_string());
        } else if !line.trim().is_empty() {
            return Err((n, "output before the first `$ ` command".into()));
        }
    }
    for c in &mut commands {
        while c.expected.last().is_some_and(|l| l.trim().is_empty()) {
            c.expected.pop();
        }
    }
    Ok(commands)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"# Sample walk

<!-- swarmkit: nodes=2 -->

Text, then a plain block that does not run:
```bash
$ echo not run
```

```console node=node1
$ docker network ls
NETWORK ID   NAME
abc          bridge

$ curl -I localhost   # normalize: ip
HTTP/1.1 200 OK
```
<!-- expect: lines "^HTTP" 1 -->

```console task=web.1 nocheck normalize=ip,mac retry=5 timeout=9
$ getent hosts \
    api
10.0.0.2 api
```
"#;

    #[test]
    fn parses_blocks_targets_commands_and_output() {
        let plan = parse("sample", DOC).expect("parses");
        assert_eq!(plan.title, "Sample walk");
        assert_eq!(plan.nodes, 2);
        assert_eq!(plan.engine, Engine::Swarmkit);
        let docker = parse("d", &DOC.replace("nodes=2", "engine=docker nodes=2")).unwrap();
        assert_eq!((docker.engine, docker.nodes), (Engine::Docker, 2));
        assert_eq!(plan.managers, 1);
        let replicated = parse("m", &DOC.replace("nodes=2", "nodes=5 managers=3")).unwrap();
        assert_eq!((replicated.nodes, replicated.managers), (5, 3));
        assert!(parse("m", &DOC.replace("nodes=2", "managers=0")).is_err());
        assert_eq!(plan.blocks.len(), 2);
        let b1 = &plan.blocks[0];
        assert_eq!(b1.number, 1);
        assert_eq!(b1.target, Target::Node("node1".into()));
        assert_eq!(b1.commands.len(), 2);
        assert_eq!(b1.commands[0].line, "docker network ls");
        assert_eq!(
            b1.commands[0].expected,
            vec!["NETWORK ID   NAME", "abc          bridge"]
        );
        assert_eq!(b1.commands[1].patterns, vec!["ip"]);
        assert_eq!(b1.assertions.len(), 1);
        assert_eq!(plan.command_count(), 3);

        let b2 = &plan.blocks[1];
        assert_eq!(b2.target, Target::Task("web.1".into()));
        assert!(b2.nocheck);
        assert_eq!(b2.patterns, vec!["ip", "mac"]);
        assert_eq!(b2.retry_secs, Some(5));
        assert_eq!(b2.timeout_secs, 9);
        assert_eq!(b2.commands[0].line, "getent hosts api");
        assert_eq!(b2.commands[0].expected, vec!["10.0.0.2 api"]);
    }

    #[test]
    fn rejects_unknown_attributes_and_stray_output() {
        let e = parse("x", "```console node=n1 colour=red\n$ true\n```\n").unwrap_err();
        assert!(e.to_string().contains("colour=red"), "{e}");
        let e = parse("x", "```console node=n1\nhello\n$ true\n```\n").unwrap_err();
        assert!(e.to_string().contains("x.md:2"), "{e}");
        let e = parse("x", "<!-- expect: lines a 1 -->\n").unwrap_err();
        assert!(e.to_string().contains("must follow"), "{e}");
        assert_eq!(
            parse("x", "# t\n```console\n$ true\n```\n"),
            Err(PlanError::Empty {
                file: "x.md".into()
            })
        );
    }

    #[test]
    fn real_plans_parse() {
        for (name, text) in super::super::embedded::PLANS {
            let plan = parse(name, text).unwrap_or_else(|e| panic!("{e}"));
            assert!(!plan.title.is_empty(), "{name} has a title");
        }
    }
}
