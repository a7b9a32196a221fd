//! Embeds the walkthroughs (`../testplans/*.md`) and their snapshots (`../snapshots/*.snap`)
//! so an installed `swarmkit walkthrough` works from any directory. Listing the directories
//! here, rather than naming files in the source, lets a new plan or snapshot need no code change.

use std::fmt::Write as _;
use std::path::Path;

fn entries(dir: &Path, ext: &str) -> Vec<(String, String)> {
    println!("cargo:rerun-if-changed={}", dir.display());
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(String, String)> = read
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .filter_map(|p| {
            let stem = p.file_stem()?.to_str()?.to_string();
            (stem != "README").then(|| (stem, p.display().to_string()))
        })
        .collect();
    found.sort();
    found
}

fn table(name: &str, items: &[(String, String)]) -> String {
    let mut out = format!("pub const {name}: &[(&str, &str)] = &[\n");
    for (stem, path) in items {
        let _ = writeln!(out, "    ({stem:?}, include_str!({path:?})),");
    }
    out.push_str("];\n");
    out
}

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = Path::new(&manifest).join("..");
    let plans = entries(&root.join("testplans"), "md");
    let snaps = entries(&root.join("snapshots"), "snap");
    let code = table("PLANS", &plans) + &table("SNAPSHOTS", &snaps);
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    std::fs::write(Path::new(&out).join("walkthrough_embedded.rs"), code)
        .expect("OUT_DIR is writable");
}
