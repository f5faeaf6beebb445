//! Puts the git commit the binary is built from into `WGCABLE_GIT_COMMIT`, for `--version` and
//! the `wgcable_build_info` metric.
//!
//! A build from a source tarball (no `.git`, or no `git`) still works: the commit is then
//! `WGCABLE_GIT_COMMIT` from the build environment if a packager set it, else "unknown".

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=WGCABLE_GIT_COMMIT");
    println!("cargo:rerun-if-changed=build.rs");
    let commit = std::env::var("WGCABLE_GIT_COMMIT")
        .ok()
        .filter(|c| is_commit_like(c))
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=WGCABLE_GIT_COMMIT={commit}");
}

/// The short hash of HEAD, and the files whose change means HEAD moved (so cargo reruns this
/// script on a commit or checkout, and only then).
fn git_commit() -> Option<String> {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let commit = git(&dir, &["rev-parse", "--short=12", "HEAD"])?;
    if !is_commit_like(&commit) {
        return None;
    }
    // In a worktree the per-worktree HEAD lives in --git-dir and the branches in the common dir.
    let git_dir = git(&dir, &["rev-parse", "--absolute-git-dir"]).map(PathBuf::from);
    let common_dir = git(&dir, &["rev-parse", "--git-common-dir"]).map(|d| {
        let d = PathBuf::from(d);
        if d.is_absolute() {
            d
        } else {
            dir.join(d)
        }
    });
    let mut watched: Vec<PathBuf> = Vec::new();
    if let Some(git_dir) = &git_dir {
        watched.push(git_dir.join("HEAD"));
        if let Ok(head) = std::fs::read_to_string(git_dir.join("HEAD")) {
            if let Some(reference) = head.trim().strip_prefix("ref: ") {
                for base in [Some(git_dir), common_dir.as_ref()].into_iter().flatten() {
                    watched.push(base.join(reference));
                }
            }
        }
    }
    if let Some(common) = &common_dir {
        watched.push(common.join("packed-refs"));
    }
    // A path that does not exist would make cargo rerun the script on every build.
    for path in watched.iter().filter(|p| Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    Some(commit)
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    Some(text.trim().to_string())
}

fn is_commit_like(s: &str) -> bool {
    (7..=40).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}
