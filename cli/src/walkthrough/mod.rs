//! Placeholder; the walkthrough lands from its own branch.

#[derive(clap::Args, Debug)]
pub struct WalkthroughArgs {
    /// Walkthrough steps to run
    pub steps: Vec<String>,
}

pub async fn run(_cluster: &str, _args: WalkthroughArgs) -> anyhow::Result<i32> {
    anyhow::bail!("the walkthrough is not built into this binary yet")
}
