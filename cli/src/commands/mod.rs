//! The subcommands. Each talks to the cluster's manager through the Docker Engine API and
//! renders what it gets back; the manager does all validation.

pub mod cluster;
pub mod exec;
pub mod lab;
pub mod network;
pub mod node;
pub mod service;
pub mod stack;
pub mod trust;
pub mod vm;

use crate::api::ApiError;

/// Runs `op` for each name, printing what it returns and each error as docker does for
/// `rm` and friends: keep going, report every failure, exit 1 if any failed.
pub async fn for_each_name<F, Fut>(names: &[String], mut op: F) -> anyhow::Result<i32>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<String>>,
{
    let mut code = 0;
    for name in names {
        match op(name.clone()).await {
            Ok(line) => println!("{line}"),
            Err(err) => {
                crate::api::print_error(&err);
                code = 1;
            }
        }
    }
    Ok(code)
}

/// Prints an inspect array for the objects found and an error line for each name that was
/// not, like `docker inspect`.
pub fn print_inspect<T: serde::Serialize>(
    found: &[T],
    errors: Vec<ApiError>,
    format: &crate::template::Format,
) -> anyhow::Result<i32> {
    match format {
        crate::template::Format::Template { text, .. } => {
            for item in found {
                let line = crate::template::render(text, &serde_json::to_value(item)?)?;
                println!("{line}");
            }
        }
        _ => print!("{}", crate::render::inspect_json(found)?),
    }
    let code = if errors.is_empty() { 0 } else { 1 };
    for err in errors {
        crate::api::print_error(&err.into());
    }
    Ok(code)
}

/// One `--filter KEY=VALUE`; the manager checks the keys, as dockerd does.
pub fn parse_filter(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!(
            "bad format of filter {s:?} (expected name=value), e.g. --filter name=web"
        )),
    }
}

/// `--filter` flags as the API's `filters` parameter: values of one key are alternatives.
pub fn filters(
    list: &[(String, String)],
) -> Option<std::collections::HashMap<String, Vec<String>>> {
    let mut out: std::collections::HashMap<String, Vec<String>> = Default::default();
    for (k, v) in list {
        out.entry(k.clone()).or_default().push(v.clone());
    }
    (!out.is_empty()).then_some(out)
}
