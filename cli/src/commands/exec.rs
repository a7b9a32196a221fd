//! `swarmkit exec TASK -- CMD...`: run a command inside a task's namespaces.

use clap::Args;

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Task ID, ID prefix or name (e.g. `search.1`)
    task: String,
    /// Command and arguments to run
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

pub async fn run(cluster: &str, args: ExecArgs) -> anyhow::Result<i32> {
    Ok(::testbed::lifecycle::task_exec(cluster, &args.task, &args.command).await?)
}
