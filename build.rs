//! Build script of the `allot` binary:
//! - checks that `migrations/` is a gap-free, forward-only sequence `V1__name.sql`, `V2__…`
//!   (a renumbered, missing or duplicate version fails the build, not a deployment), and
//! - stamps the binary with the git commit it was built from (`allot --version`).

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=.git/HEAD");
    if let Err(problem) = check_migrations(Path::new("migrations")) {
        panic!("migrations/: {problem}");
    }
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=ALLOT_GIT_COMMIT={commit}");
}

/// Every file is `V<n>__<snake_case>.sql`, versions run 1..=N without gaps or repeats.
fn check_migrations(dir: &Path) -> Result<(), String> {
    let mut versions = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| e.to_string())? {
        let name = entry.map_err(|e| e.to_string())?.file_name().to_string_lossy().into_owned();
        let stem = name.strip_suffix(".sql").ok_or_else(|| format!("{name}: only .sql files belong here"))?;
        let (version, label) =
            stem.strip_prefix('V').and_then(|rest| rest.split_once("__")).ok_or_else(|| format!("{name}: expected V<number>__<name>.sql"))?;
        let version: u32 = version.parse().map_err(|_| format!("{name}: version is not a number"))?;
        if label.is_empty() || !label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(format!("{name}: the name must be snake_case"));
        }
        let sql = std::fs::read_to_string(dir.join(&name)).map_err(|e| e.to_string())?;
        if sql.trim().is_empty() {
            return Err(format!("{name}: empty migration"));
        }
        versions.push(version);
    }
    versions.sort_unstable();
    for (expected, version) in (1u32..).zip(&versions) {
        if *version != expected {
            return Err(format!("expected version {expected}, found {version}: versions must run from 1 without gaps or repeats"));
        }
    }
    Ok(())
}
