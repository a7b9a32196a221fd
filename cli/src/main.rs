//! Placeholder entry point for the walkthrough branch only: the CLI helper's main.rs replaces
//! it and calls `walkthrough::run(cluster, args)` from its `walkthrough` subcommand.

mod walkthrough;

use clap::Parser;

#[derive(Parser)]
#[command(name = "swarmkit")]
struct Cli {
    #[arg(long, global = true, default_value = "default")]
    cluster: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    #[command(hide = true)]
    Walkthrough(walkthrough::WalkthroughArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Walkthrough(args) => walkthrough::run(&cli.cluster, args).await?,
    };
    std::process::exit(code)
}
