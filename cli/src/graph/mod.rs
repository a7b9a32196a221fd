//! `swarmkit graph`: the cluster drawn from its live state.

pub mod model;
pub mod svg;
#[cfg(test)]
mod tests;
pub mod text;

use std::path::PathBuf;

use clap::{Args, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GraphFormat {
    Text,
    Dot,
    Mermaid,
    Svg,
}

#[derive(Args, Debug)]
pub struct GraphArgs {
    /// Output format
    #[arg(long, value_enum, default_value = "text")]
    pub format: GraphFormat,
    /// Write to FILE instead of stdout
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub swarm: crate::reach::SwarmArgs,
}

pub fn render(t: &model::Topology, format: GraphFormat) -> String {
    match format {
        GraphFormat::Text => text::text(t),
        GraphFormat::Dot => text::dot(t),
        GraphFormat::Mermaid => text::mermaid(t),
        GraphFormat::Svg => svg::render(t, None),
    }
}

/// Writes `body` to `path` atomically (a temporary file renamed into place), or to stdout.
pub fn emit(body: &str, path: Option<&std::path::Path>) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    match path {
        None => {
            std::io::stdout().write_all(body.as_bytes())?;
            Ok(())
        }
        Some(path) => {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => std::path::Path::new("."),
            };
            let name = path
                .file_name()
                .with_context(|| format!("{} is not a file name", path.display()))?;
            let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
            let mut f = std::fs::File::create(&tmp).with_context(|| {
                format!("cannot write {}: does its directory exist?", path.display())
            })?;
            f.write_all(body.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
                .with_context(|| format!("moving {} into place", path.display()))?;
            Ok(())
        }
    }
}

pub async fn run(cluster: &str, args: GraphArgs) -> anyhow::Result<i32> {
    let (t, _) = model::open(cluster, &args.swarm).await?;
    emit(&render(&t, args.format), args.output.as_deref())?;
    Ok(0)
}
