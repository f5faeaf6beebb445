//! Key store behaviour on a real filesystem (a temp dir; no root needed).

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt as _, PermissionsExt as _};
use std::path::Path;

use wgcable_keys::{FormatProblem, KeyError, KeyStore, PrivateKey, SymlinkProblem, KEY_FILE_NAME};

/// `wg genkey | tee /dev/stderr | wg pubkey`
const WG_PRIVATE: &str = "WBDGH20HSpAgYOEGOTBcw5a0DS5qKMK9rP8WJcQrV2o=";
const WG_PUBLIC: &str = "b98wRzVxljvjDMk9tpg4DKZtbSE/V/iyLBPXQhjn6Bo=";

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

fn write_key_file(path: &Path, content: &str, mode: u32) {
    fs::write(path, content).expect("write key file");
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Asserts the error names the path and contains none of the secret.
fn assert_safe_message(err: &KeyError, path: &Path, secret: &str) -> String {
    let msg = err.to_string();
    let debug = format!("{err:?}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert_eq!(err.path(), Some(path));
    for shown in [&msg, &debug] {
        assert!(!shown.contains(secret), "secret leaked: {shown}");
        assert!(
            !shown.contains(&secret[..16]),
            "secret prefix leaked: {shown}"
        );
    }
    msg
}

#[test]
fn creates_then_reloads_the_same_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("state").join("wgcable");
    let store = KeyStore::new(&dir);
    assert_eq!(store.path(), dir.join(KEY_FILE_NAME));
    assert!(store.load().expect("load missing").is_none());
    assert!(!dir.exists(), "load must not create anything");

    let (key, created) = store.load_or_create().expect("create");
    assert!(created);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(store.path()), 0o600);

    // Same format as `wg genkey > file`.
    let content = fs::read_to_string(store.path()).expect("read");
    assert_eq!(content, format!("{}\n", key.to_base64().as_str()));

    let (again, created) = store.load_or_create().expect("reload");
    assert!(!created);
    assert_eq!(again, key);
    assert_eq!(store.load().expect("load").expect("present"), key);

    // Atomic write: nothing but the key file is left behind.
    assert_eq!(dir_entries(&dir), vec![KEY_FILE_NAME.to_string()]);
}

#[test]
fn reads_a_key_written_by_wg_genkey() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = KeyStore::new(tmp.path());
    write_key_file(store.path(), &format!("{WG_PRIVATE}\n"), 0o600);
    let (key, created) = store.load_or_create().expect("load");
    assert!(!created);
    assert_eq!(key.public_key().to_string(), WG_PUBLIC);
    // Read-only for the owner is fine too, and CRLF/extra whitespace is tolerated.
    write_key_file(store.path(), &format!("  {WG_PRIVATE}\r\n\n"), 0o400);
    assert_eq!(store.load().expect("load").expect("present"), key);
}

#[test]
fn refuses_group_or_world_accessible_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = KeyStore::new(tmp.path());
    for bad_mode in [0o644, 0o640, 0o604, 0o660, 0o620] {
        write_key_file(store.path(), &format!("{WG_PRIVATE}\n"), bad_mode);
        for result in [store.load().map(|_| ()), store.load_or_create().map(|_| ())] {
            let err = result.expect_err("insecure mode must be refused");
            assert!(
                matches!(err, KeyError::InsecurePermissions { mode, .. } if mode & 0o777 == bad_mode),
                "{err:?}"
            );
            assert!(err.is_refused_key_file());
            let msg = assert_safe_message(&err, store.path(), WG_PRIVATE);
            assert!(
                msg.contains(&format!("chmod 600 {}", store.path().display())),
                "{msg}"
            );
            assert!(msg.contains(&format!("{:04o}", bad_mode)), "{msg}");
        }
        // Never overwritten.
        assert_eq!(
            fs::read_to_string(store.path()).expect("read"),
            format!("{WG_PRIVATE}\n")
        );
        assert_eq!(mode(store.path()), bad_mode);
    }
}

#[test]
fn refuses_a_symlink_leading_out_of_the_directory_even_to_a_good_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let target = tmp.path().join("elsewhere.key");
    write_key_file(&target, &format!("{WG_PRIVATE}\n"), 0o600);
    let dir = tmp.path().join("state");
    fs::create_dir(&dir).expect("mkdir");
    let store = KeyStore::new(&dir);
    // Absolute, relative with `..`, and through an intermediate link inside the directory.
    let links: [(&str, &Path); 3] = [
        (KEY_FILE_NAME, &target),
        (KEY_FILE_NAME, Path::new("../elsewhere.key")),
        ("..data", Path::new("..")),
    ];
    for (name, to) in links {
        let _ = fs::remove_file(dir.join(KEY_FILE_NAME));
        let _ = fs::remove_file(dir.join("..data"));
        symlink(to, dir.join(name)).expect("symlink");
        if name != KEY_FILE_NAME {
            symlink("..data/elsewhere.key", store.path()).expect("symlink");
        }
        for result in [store.load().map(|_| ()), store.load_or_create().map(|_| ())] {
            let err = result.expect_err("a link out of the directory is refused");
            assert!(
                matches!(
                    err,
                    KeyError::Symlink {
                        problem: SymlinkProblem::LeadsOutside,
                        ..
                    }
                ),
                "{name} -> {to:?}: {err:?}"
            );
            assert!(err.is_refused_key_file());
            let msg = assert_safe_message(&err, store.path(), WG_PRIVATE);
            assert!(msg.contains("only links that stay inside"), "{msg}");
        }
        // The link and its target are untouched.
        assert!(fs::symlink_metadata(store.path())
            .expect("lstat")
            .file_type()
            .is_symlink());
        assert_eq!(
            fs::read_to_string(&target).expect("read"),
            format!("{WG_PRIVATE}\n")
        );
    }

    // A dangling symlink is refused too, rather than followed to create a file elsewhere.
    let dangling_dir = tmp.path().join("dangling");
    fs::create_dir(&dangling_dir).expect("mkdir");
    let store = KeyStore::new(&dangling_dir);
    for to in [tmp.path().join("nowhere"), "..data/private.key".into()] {
        let _ = fs::remove_file(store.path());
        symlink(&to, store.path()).expect("symlink");
        let err = store
            .load_or_create()
            .expect_err("dangling symlink refused");
        assert!(
            matches!(
                err,
                KeyError::Symlink {
                    problem: SymlinkProblem::Dangling | SymlinkProblem::LeadsOutside,
                    ..
                }
            ),
            "{to:?}: {err:?}"
        );
        assert!(!tmp.path().join("nowhere").exists());
        assert_eq!(dir_entries(&dangling_dir), vec![KEY_FILE_NAME.to_string()]);
    }
    // A loop of links inside the directory.
    let _ = fs::remove_file(store.path());
    symlink("loop-b", store.path()).expect("symlink");
    symlink(KEY_FILE_NAME, dangling_dir.join("loop-b")).expect("symlink");
    let err = store.load().expect_err("loop refused");
    assert!(
        matches!(
            err,
            KeyError::Symlink {
                problem: SymlinkProblem::TooManyLinks,
                ..
            }
        ),
        "{err:?}"
    );
}

/// Lays `dir` out as the kubelet mounts a Secret with one key, `private.key`:
/// `private.key -> ..data/private.key`, `..data -> ..<version>`, the file in `..<version>/`.
fn secret_volume(dir: &Path, version: &str, content: &str, mode: u32) {
    let data = dir.join(format!("..{version}"));
    fs::create_dir_all(&data).expect("mkdir");
    write_key_file(&data.join(KEY_FILE_NAME), content, mode);
    let tmp_link = dir.join("..data_tmp");
    symlink(format!("..{version}"), &tmp_link).expect("symlink");
    fs::rename(&tmp_link, dir.join("..data")).expect("swap ..data");
    if fs::symlink_metadata(dir.join(KEY_FILE_NAME)).is_err() {
        symlink(format!("..data/{KEY_FILE_NAME}"), dir.join(KEY_FILE_NAME)).expect("symlink");
    }
}

#[test]
fn reads_a_key_from_a_kubernetes_secret_volume_and_never_writes_there() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("secret");
    secret_volume(
        &dir,
        "2026_01_01_00_00_00.1",
        &format!("{WG_PRIVATE}\n"),
        0o400,
    );
    let before = dir_entries(&dir);
    for store in [KeyStore::read_only(&dir), KeyStore::new(&dir)] {
        let (key, created) = store.load_or_create().expect("the link chain is followed");
        assert!(!created);
        assert_eq!(key.public_key().to_string(), WG_PUBLIC);
        assert_eq!(dir_entries(&dir), before, "nothing written");
    }
    assert!(KeyStore::read_only(&dir).is_read_only());

    // An update of the Secret swaps `..data`; the new key is read.
    let (other, _) = KeyStore::new(tmp.path().join("other"))
        .load_or_create()
        .expect("create");
    secret_volume(
        &dir,
        "2026_01_02_00_00_00.1",
        &format!("{}\n", other.to_base64().as_str()),
        0o400,
    );
    assert_eq!(KeyStore::read_only(&dir).load().expect("load"), Some(other));

    // Every other check still applies to the file the chain ends at.
    secret_volume(
        &dir,
        "2026_01_03_00_00_00.1",
        &format!("{WG_PRIVATE}\n"),
        0o644,
    );
    let err = KeyStore::read_only(&dir).load().expect_err("0644 refused");
    assert!(
        matches!(err, KeyError::InsecurePermissions { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("defaultMode: 0400"), "{err}");
    secret_volume(&dir, "2026_01_04_00_00_00.1", "not a key\n", 0o400);
    let err = KeyStore::read_only(&dir)
        .load()
        .expect_err("corrupt refused");
    assert!(matches!(err, KeyError::Corrupt { .. }), "{err:?}");
    fs::remove_file(dir.join("..2026_01_04_00_00_00.1").join(KEY_FILE_NAME)).expect("rm");
    fs::create_dir(dir.join("..2026_01_04_00_00_00.1").join(KEY_FILE_NAME)).expect("mkdir");
    let err = KeyStore::read_only(&dir)
        .load()
        .expect_err("directory refused");
    assert!(
        matches!(
            err,
            KeyError::NotRegularFile {
                found: "a directory",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_read_only_store_without_a_key_says_how_to_provide_one_and_creates_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = KeyStore::read_only(tmp.path());
    let err = store.load_or_create().expect_err("missing key");
    assert!(matches!(err, KeyError::MissingReadOnly { .. }), "{err:?}");
    assert!(err.to_string().contains("wg genkey"), "{err}");
    assert_eq!(err.path(), Some(store.path()));
    assert!(dir_entries(tmp.path()).is_empty());
    // A missing directory is the same error, and is not created either.
    let absent = tmp.path().join("absent");
    let err = KeyStore::read_only(&absent)
        .load_or_create()
        .expect_err("missing");
    assert!(matches!(err, KeyError::MissingReadOnly { .. }), "{err:?}");
    assert!(!absent.exists());
}

#[test]
fn refuses_a_key_file_of_another_user() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_, _) = KeyStore::new(tmp.path()).load_or_create().expect("create");
    let mine = fs::metadata(tmp.path().join(KEY_FILE_NAME))
        .expect("stat")
        .uid();
    let store = KeyStore::new(tmp.path()).expecting_owner(mine.wrapping_add(1));
    let err = store.load_or_create().expect_err("wrong owner");
    assert!(
        matches!(err, KeyError::WrongOwner { owner, expected, .. } if owner == mine && expected == mine.wrapping_add(1)),
        "{err:?}"
    );
    assert!(err.is_refused_key_file());
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("chown {}", mine.wrapping_add(1))),
        "{msg}"
    );
    // The store's default is the process's own user, which created the file.
    KeyStore::new(tmp.path())
        .load()
        .expect("own file")
        .expect("present");
}

#[test]
fn refuses_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = KeyStore::new(tmp.path());
    fs::create_dir(store.path()).expect("mkdir");
    let err = store.load_or_create().expect_err("dir refused");
    assert!(
        matches!(err, KeyError::NotRegularFile { found, .. } if found == "a directory"),
        "{err:?}"
    );
    assert!(err
        .to_string()
        .contains("is a directory, not a regular file"));
}

#[test]
fn refuses_corrupt_content_without_echoing_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = KeyStore::new(tmp.path());
    let huge = "A".repeat(5000);
    let cases: Vec<(String, FormatProblem)> = vec![
        (String::new(), FormatProblem::Empty),
        ("\n".into(), FormatProblem::Empty),
        (
            format!("{}\n", &WG_PRIVATE[..43]),
            FormatProblem::MissingPadding,
        ),
        (
            format!("{}#{}\n", &WG_PRIVATE[..7], &WG_PRIVATE[8..]),
            FormatProblem::InvalidCharacter { offset: 7 },
        ),
        (
            format!("{WG_PRIVATE}{WG_PRIVATE}\n"),
            FormatProblem::WrongLength { found: 88 },
        ),
        (huge, FormatProblem::FileTooLarge { bytes: 5000 }),
    ];
    for (content, want) in cases {
        write_key_file(store.path(), &content, 0o600);
        let err = store.load_or_create().expect_err("corrupt refused");
        match &err {
            KeyError::Corrupt { problem, .. } => assert_eq!(*problem, want, "{content:?}"),
            other => panic!("expected Corrupt for {content:?}, got {other:?}"),
        }
        let msg = assert_safe_message(&err, store.path(), WG_PRIVATE);
        assert!(
            msg.contains(&format!("remove {}", store.path().display())),
            "{msg}"
        );
        assert!(msg.contains("peers will need the new public key"), "{msg}");
        // Never overwritten.
        assert_eq!(fs::read_to_string(store.path()).expect("read"), content);
    }
    // Non-UTF-8 bytes are just bad characters.
    fs::write(store.path(), b"\xff\xfe garbage").expect("write");
    let err = store.load().expect_err("binary refused");
    assert!(matches!(err, KeyError::Corrupt { .. }), "{err:?}");
}

#[test]
fn created_key_never_leaks_in_messages() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = KeyStore::new(tmp.path());
    let (key, _) = store.load_or_create().expect("create");
    let secret = key.to_base64();
    fs::set_permissions(store.path(), fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = store.load().expect_err("insecure");
    assert_safe_message(&err, store.path(), secret.as_str());
    assert!(!format!("{store:?}").contains(secret.as_str()));
    assert!(!format!("{key:?} {key}").contains(secret.as_str()));
}

#[test]
fn unreadable_state_dir_is_an_error_naming_the_path() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // A regular file where the state directory should be.
    let not_a_dir = tmp.path().join("file");
    fs::write(&not_a_dir, "x").expect("write");
    let store = KeyStore::new(&not_a_dir);
    let err = store
        .load_or_create()
        .expect_err("cannot use a file as a dir");
    assert!(err.path().is_some(), "{err:?}");
    assert!(
        err.to_string().contains(&not_a_dir.display().to_string()),
        "{err}"
    );
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn generated_key_file_round_trips_through_private_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = KeyStore::new(tmp.path());
    let (key, _) = store.load_or_create().expect("create");
    let text = fs::read_to_string(store.path()).expect("read");
    let parsed: PrivateKey = text.trim_end().parse().expect("file holds wg base64");
    assert_eq!(parsed, key);
}
