//! Key store behaviour on a real filesystem (a temp dir; no root needed).

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt as _};
use std::path::Path;

use wgcable_keys::{FormatProblem, KeyError, KeyStore, PrivateKey, KEY_FILE_NAME};

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
fn refuses_symlink_even_to_a_good_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let target = tmp.path().join("elsewhere.key");
    write_key_file(&target, &format!("{WG_PRIVATE}\n"), 0o600);
    let dir = tmp.path().join("state");
    fs::create_dir(&dir).expect("mkdir");
    let store = KeyStore::new(&dir);
    symlink(&target, store.path()).expect("symlink");

    let err = store.load_or_create().expect_err("symlink refused");
    assert!(
        matches!(err, KeyError::NotRegularFile { found, .. } if found == "a symbolic link"),
        "{err:?}"
    );
    let msg = assert_safe_message(&err, store.path(), WG_PRIVATE);
    assert!(msg.contains("remove"), "{msg}");
    // The link and its target are untouched.
    assert!(fs::symlink_metadata(store.path())
        .expect("lstat")
        .file_type()
        .is_symlink());
    assert_eq!(
        fs::read_to_string(&target).expect("read"),
        format!("{WG_PRIVATE}\n")
    );

    // A dangling symlink is refused too, rather than followed to create a file elsewhere.
    let dangling_dir = tmp.path().join("dangling");
    fs::create_dir(&dangling_dir).expect("mkdir");
    let store = KeyStore::new(&dangling_dir);
    symlink(tmp.path().join("nowhere"), store.path()).expect("symlink");
    let err = store
        .load_or_create()
        .expect_err("dangling symlink refused");
    assert!(matches!(err, KeyError::NotRegularFile { .. }), "{err:?}");
    assert!(!tmp.path().join("nowhere").exists());
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
