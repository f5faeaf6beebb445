//! Writes `deploy/crds.yaml` from the Rust types: `cargo run -p wgcable-k8s --example gen-deploy`.

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let path = root.join("crds.yaml");
    let yaml = wgcable_k8s::crd::crds_yaml()?;
    std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
