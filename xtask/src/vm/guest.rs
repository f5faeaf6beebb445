//! Preparing the guest: Debian's own kernel (which ships wireguard.ko, unlike the kernel these
//! machines run), its uncompressed `vmlinux` for a PVH boot, and a small initramfs of static
//! busybox plus the modules that mount the host's root over virtio-9p. Both files are cached
//! in `target/vm/` under a name that changes with their inputs.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};

use crate::cmd::{self, cmd};

/// The Debian packages the VM test bed needs (CI installs them through `.ci/run`).
pub const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "linux-image-amd64",
    "busybox-static",
    "xz-utils",
];

/// Modules the initramfs loads, in this order (each after what it depends on): virtio over
/// PCI, 9p over virtio, overlayfs. Everything else (wireguard, tun, veth, ...) is loaded from
/// the host's /lib/modules once the guest runs on the host's root.
const MODULES: &[&str] = &[
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
    "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
    "kernel/drivers/virtio/virtio_pci.ko",
    "kernel/fs/netfs/netfs.ko",
    "kernel/fs/fscache/fscache.ko",
    "kernel/net/9p/9pnet.ko",
    "kernel/net/9p/9pnet_virtio.ko",
    "kernel/fs/9p/9p.ko",
    "kernel/fs/overlayfs/overlay.ko",
];

/// 9p tags of the two shares.
pub const ROOT_TAG: &str = "hostroot";
pub const RESULTS_TAG: &str = "results";
/// Where the results share is mounted in the guest's root.
pub const RESULTS_MOUNT: &str = "/mnt/vm-results";

/// The guest's first stage (`/init` of the initramfs): load the modules, mount the host's root
/// read-only over 9p with a tmpfs overlay on top, mount the results share, and `switch_root`
/// into it (with chroot instead, module autoloading fails: `ip link add` then says "Unknown
/// device type"). Any failure says why on the console and powers off, so the host reports an
/// infrastructure failure at once instead of waiting for its watchdog.
fn init_script() -> String {
    let modules: Vec<String> = MODULES
        .iter()
        .map(|m| format!("/lib/modules/{}", file_name(m)))
        .collect();
    format!(
        r#"#!/bin/busybox sh
export PATH=/bin
fail() {{ echo "vm-init: $*"; busybox poweroff -f; }}
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t devtmpfs devtmpfs /dev
for m in {modules}; do insmod "$m" || fail "insmod $m"; done
mkdir -p /mnt/host /mnt/rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose {ROOT_TAG} /mnt/host || fail "mounting the host root"
mount -t tmpfs -o size=60% tmpfs /mnt/rw || fail "mounting the overlay's tmpfs"
mkdir -p /mnt/rw/upper /mnt/rw/work
mount -t overlay -o lowerdir=/mnt/host,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work overlay /newroot || fail "mounting the overlay"
mkdir -p /newroot{RESULTS_MOUNT}
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 {RESULTS_TAG} /newroot{RESULTS_MOUNT} || fail "mounting the results share"
[ -f /newroot{RESULTS_MOUNT}/stage2.sh ] || fail "no stage2.sh on the results share"
mount --move /dev /newroot/dev || fail "moving /dev"
umount /proc
exec switch_root /newroot /bin/sh {RESULTS_MOUNT}/stage2.sh
fail "switch_root"
"#,
        modules = modules.join(" "),
    )
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// What to boot.
#[derive(Debug)]
pub struct Guest {
    pub version: String,
    /// `vmlinux` (PVH boot) when it could be extracted, else the compressed `vmlinuz`.
    pub kernel: PathBuf,
    pub pvh: bool,
    pub initramfs: PathBuf,
}

/// Whether the packages are installed (`dpkg-query`); the missing ones otherwise.
pub fn missing_packages() -> Vec<&'static str> {
    PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !cmd::output(&mut cmd(
                "dpkg-query",
                ["--show", "--showformat=${Status}", p],
            ))
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect()
}

/// Installs what is missing (as root), or says what to install.
pub fn ensure_packages() -> Result<()> {
    let missing = missing_packages();
    if missing.is_empty() {
        return Ok(());
    }
    ensure!(
        nix::unistd::geteuid().is_root(),
        "the VM needs the packages {}: apt-get install -y {}",
        missing.join(", "),
        missing.join(" ")
    );
    eprintln!(
        "xtask: installing {} (the kernel package only adds files under /boot and /lib/modules; the running kernel is untouched)",
        missing.join(" ")
    );
    let mut c = cmd(
        "apt-get",
        ["install", "-y", "-qq", "--no-install-recommends"],
    );
    c.args(&missing).env("DEBIAN_FRONTEND", "noninteractive");
    cmd::run(&mut c)
}

/// The newest installed Debian kernel that has WireGuard, and its modules.
fn find_kernel() -> Result<(String, PathBuf)> {
    let mut versions: Vec<String> = fs::read_dir("/boot")
        .context("reading /boot")?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(str::to_owned)
        })
        .filter(|v| {
            Path::new("/lib/modules")
                .join(v)
                .join("kernel/drivers/net/wireguard/wireguard.ko")
                .is_file()
        })
        .collect();
    versions.sort();
    let Some(version) = versions.pop() else {
        bail!("no kernel in /boot with a wireguard module: apt-get install -y linux-image-amd64");
    };
    let image = PathBuf::from(format!("/boot/vmlinuz-{version}"));
    Ok((version, image))
}

/// Builds (or reuses) the guest's kernel and initramfs in `dir`.
pub fn prepare(dir: &Path) -> Result<Guest> {
    ensure_packages()?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (version, image) = find_kernel()?;
    let busybox = Path::new("/bin/busybox");
    ensure!(
        busybox.is_file(),
        "/bin/busybox is missing: apt-get install -y busybox-static"
    );
    let modules_dir = PathBuf::from(format!("/lib/modules/{version}"));

    // The cache key: everything that goes into the initramfs.
    let mut hash = Sha256::new();
    let init = init_script();
    hash.update(init.as_bytes());
    hash.update(fs::read(busybox).context("reading /bin/busybox")?);
    let mut modules = Vec::new();
    for m in MODULES {
        let path = modules_dir.join(m);
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        hash.update(&bytes);
        modules.push((file_name(m).to_owned(), bytes));
    }
    let key: String = hash.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let initramfs = dir.join(format!("initramfs-{version}-{key}.cpio"));
    if !initramfs.is_file() {
        eprintln!("xtask: building {}", initramfs.display());
        let mut archive = Cpio::default();
        for d in ["bin", "dev", "proc", "sys", "mnt", "lib", "lib/modules"] {
            archive.dir(d);
        }
        archive.char_device("dev/console", 5, 1);
        archive.file("init", 0o755, init.as_bytes());
        archive.file(
            "bin/busybox",
            0o755,
            &fs::read(busybox).context("reading /bin/busybox")?,
        );
        for (name, bytes) in &modules {
            archive.file(&format!("lib/modules/{name}"), 0o644, bytes);
        }
        write_atomic(&initramfs, &archive.finish())?;
    }

    let vmlinux = dir.join(format!("vmlinux-{version}"));
    // XTASK_VM_KERNEL=bzimage boots the compressed image instead (to measure what PVH saves).
    let want_pvh = std::env::var("XTASK_VM_KERNEL").map_or(true, |v| v != "bzimage");
    let pvh = want_pvh && (vmlinux.is_file() || extract_vmlinux(&image, &vmlinux).is_ok());
    let kernel = if pvh { vmlinux } else { image };
    Ok(Guest {
        version,
        kernel,
        pvh,
        initramfs,
    })
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = PathBuf::from(format!("{}.tmp{}", path.display(), std::process::id()));
    fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// The uncompressed kernel inside a bzImage: Debian compresses it with xz, so the first xz
/// stream in the file is the kernel (what the kernel's own scripts/extract-vmlinux does). PVH
/// boots it directly, skipping the BIOS and the decompressor (seconds under TCG).
fn extract_vmlinux(image: &Path, out: &Path) -> Result<()> {
    const XZ_MAGIC: &[u8] = &[0xFD, b'7', b'z', b'X', b'Z', 0x00];
    let bytes = fs::read(image).with_context(|| format!("reading {}", image.display()))?;
    let start = bytes
        .windows(XZ_MAGIC.len())
        .position(|w| w == XZ_MAGIC)
        .context("no xz stream in the kernel image")?;
    let tmp = PathBuf::from(format!("{}.xz{}", out.display(), std::process::id()));
    fs::write(&tmp, &bytes[start..]).with_context(|| format!("writing {}", tmp.display()))?;
    let mut c = cmd(
        "xz",
        ["--decompress", "--stdout", "--single-stream", "--quiet"],
    );
    c.arg(&tmp);
    let result = cmd::output(&mut c);
    let _ = fs::remove_file(&tmp);
    let elf = result?.stdout;
    // xz exits non-zero over the trailing bytes after the stream; what matters is the ELF.
    ensure!(
        elf.starts_with(b"\x7fELF") && elf.len() > 1 << 20,
        "the kernel image's xz stream is not an ELF kernel"
    );
    write_atomic(out, &elf)
}

/// A newc cpio archive (the initramfs format), written by hand: a few dozen lines, no
/// dependency, and byte-for-byte reproducible (all times are zero).
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, (0, 0), data);
    }

    fn char_device(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, (major, minor), &[]);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_entries_are_newc_and_aligned() {
        let mut c = Cpio::default();
        c.file("init", 0o755, b"#!/bin/sh\n");
        let out = c.finish();
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 4, 0);
        // mode of the first entry: a regular file, 0755.
        assert_eq!(&out[14..22], b"000081ed");
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn the_init_script_loads_every_module_before_mounting() {
        let init = init_script();
        let insmod = init.find("insmod").expect("insmod");
        let mount = init.find("-t 9p").expect("9p");
        assert!(insmod < mount);
        for m in MODULES {
            assert!(init.contains(file_name(m)), "{m}");
        }
        assert!(init.contains("switch_root"));
    }
}
