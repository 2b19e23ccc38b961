//! The artifact store: deterministic packing, content addressing with a TTL
//! in a real Redis, and unpacking that refuses hostile archives.

#![allow(clippy::unwrap_used)]

use agent_sdk::artifacts::{ArtifactLimits, pack_dir, sha256_hex, unpack_archive};
use agent_sdk::testing::TestRedis;
use agent_sdk::{Client, Error};
use std::io::Write;
use std::path::Path;

fn write(root: &Path, rel: &str, body: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, body).unwrap();
}

fn project(root: &Path) {
    write(root, "Cargo.toml", "[package]\nname = \"demo\"\n");
    write(root, "src/lib.rs", "pub fn answer() -> u32 { 42 }\n");
    write(root, "tests/it.rs", "#[test] fn t() {}\n");
    write(root, "scripts/run.sh", "#!/bin/sh\necho hi\n");
    std::fs::create_dir_all(root.join("empty")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            root.join("scripts/run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    }
}

#[tokio::test]
async fn trees_round_trip_and_the_same_tree_gets_the_same_name() {
    let redis = TestRedis::start();
    let client = Client::connect(&redis.url(), "art").await.unwrap();
    let store = client.artifacts();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    project(a.path());
    project(b.path());
    let ra = store.put_dir(a.path()).await.unwrap();
    let rb = store.put_dir(b.path()).await.unwrap();
    assert_eq!(ra, rb, "same files, other place and time: same artifact");
    assert_eq!(ra.files, 4);
    assert_eq!(ra.sha256.len(), 64);
    write(b.path(), "src/lib.rs", "pub fn answer() -> u32 { 43 }\n");
    let rc = store.put_dir(b.path()).await.unwrap();
    assert_ne!(rc.sha256, ra.sha256);

    // Stored once under its digest, with a TTL.
    let mut c = redis.connection();
    let key = client.keys().artifact(&ra.sha256).unwrap();
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut c).unwrap();
    assert!(
        ttl > 0 && ttl <= ArtifactLimits::default().ttl.as_millis() as i64,
        "{ttl}"
    );

    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("tree");
    let u = store.unpack(&ra.sha256, &target).await.unwrap().unwrap();
    let sizes: u64 = ["Cargo.toml", "src/lib.rs", "tests/it.rs", "scripts/run.sh"]
        .iter()
        .map(|r| std::fs::metadata(a.path().join(r)).unwrap().len())
        .sum();
    assert_eq!((u.files, u.bytes), (4, sizes));
    for rel in ["Cargo.toml", "src/lib.rs", "tests/it.rs", "scripts/run.sh"] {
        assert_eq!(
            std::fs::read(a.path().join(rel)).unwrap(),
            std::fs::read(target.join(rel)).unwrap(),
            "{rel}"
        );
    }
    assert!(target.join("empty").is_dir());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o111;
        assert_ne!(
            mode(&target.join("scripts/run.sh")),
            0,
            "the executable bit survives"
        );
        assert_eq!(mode(&target.join("src/lib.rs")), 0);
    }

    // Unknown, malformed and tampered references.
    let unknown = "0".repeat(64);
    assert_eq!(store.get(&unknown).await.unwrap(), None);
    assert!(
        store
            .unpack(&unknown, &out.path().join("x"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.get("../../etc/passwd").await.is_err());
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("tampered")
        .query(&mut c)
        .unwrap();
    let e = store.get(&ra.sha256).await.unwrap_err().to_string();
    assert!(e.contains("does not match"), "{e}");
    // A non-empty target is refused.
    let e = store
        .unpack(&rc.sha256, &target)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not empty"), "{e}");
}

#[tokio::test]
async fn packing_refuses_links_and_oversized_trees() {
    let redis = TestRedis::start();
    let client = Client::connect(&redis.url(), "art").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    project(dir.path());
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("passwd")).unwrap();
        let e = client
            .artifacts()
            .put_dir(dir.path())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("symbolic link"), "{e}");
        std::fs::remove_file(dir.path().join("passwd")).unwrap();
    }
    let small = ArtifactLimits {
        max_tree_bytes: 50,
        ..ArtifactLimits::default()
    };
    let e = client
        .artifacts()
        .with_limits(small)
        .put_dir(dir.path())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Artifact(_)), "{e}");
    let few = ArtifactLimits {
        max_entries: 3,
        ..ArtifactLimits::default()
    };
    assert!(pack_dir(dir.path(), &few).is_err());
    let tiny = ArtifactLimits {
        max_archive_bytes: 64,
        ..ArtifactLimits::default()
    };
    assert!(
        client
            .artifacts()
            .with_limits(tiny)
            .put_dir(dir.path())
            .await
            .is_err()
    );
    assert!(
        client
            .artifacts()
            .with_limits(tiny)
            .put_archive(&[0u8; 65])
            .await
            .is_err()
    );
}

/// A tar header written byte by byte: the tar crate refuses to build
/// hostile paths, attackers do not.
fn raw_header(name: &str, kind: tar::EntryType, link: &str, size: u64) -> tar::Header {
    let mut h = tar::Header::new_old();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    h
}

fn archive(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut b = tar::Builder::new(gz);
    for (name, kind, link, data) in entries {
        b.append(&raw_header(name, *kind, link, data.len() as u64), *data)
            .unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn refused(bytes: &[u8], limits: &ArtifactLimits, needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("t");
    let e = unpack_archive(bytes, &target, limits)
        .unwrap_err()
        .to_string();
    assert!(e.contains(needle), "expected {needle:?} in {e:?}");
    // Nothing landed beside the target.
    let outside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        outside.iter().all(|n| n == "t"),
        "wrote outside the target: {outside:?}"
    );
}

#[test]
fn hostile_archives_are_refused_before_anything_escapes() {
    use tar::EntryType::{Block, Directory, Fifo, Link, Regular, Symlink};
    let d = ArtifactLimits::default();
    refused(
        &archive(&[("../evil", Regular, "", b"x")]),
        &d,
        "climbs out",
    );
    refused(
        &archive(&[("ok/../../evil", Regular, "", b"x")]),
        &d,
        "climbs out",
    );
    refused(
        &archive(&[("/tmp/evil", Regular, "", b"x")]),
        &d,
        "absolute",
    );
    refused(
        &archive(&[("link", Symlink, "/etc/passwd", b"")]),
        &d,
        "is a link",
    );
    refused(
        &archive(&[
            ("dir", Directory, "", b""),
            ("dir/up", Symlink, "../..", b""),
        ]),
        &d,
        "is a link",
    );
    refused(
        &archive(&[("hard", Link, "/etc/passwd", b"")]),
        &d,
        "is a link",
    );
    refused(&archive(&[("fifo", Fifo, "", b"")]), &d, "Fifo");
    refused(&archive(&[("dev", Block, "", b"")]), &d, "Block");
    // Sizes: one file over the tree limit, many files, a big archive, a bomb.
    let small = ArtifactLimits {
        max_tree_bytes: 1000,
        ..d
    };
    refused(
        &archive(&[("big", Regular, "", &[b'a'; 2000])]),
        &small,
        "more than 1000 bytes",
    );
    let few = ArtifactLimits {
        max_entries: 3,
        ..d
    };
    let many: Vec<(String, Vec<u8>)> = (0..5).map(|i| (format!("f{i}"), vec![b'x'])).collect();
    let many: Vec<_> = many
        .iter()
        .map(|(n, b)| (n.as_str(), Regular, "", b.as_slice()))
        .collect();
    refused(&archive(&many), &few, "more than 3 entries");
    let bomb = archive(&[("zeros", Regular, "", &vec![0u8; 8 * 1024 * 1024])]);
    assert!(
        bomb.len() < 64 * 1024,
        "a bomb: {} bytes compressed",
        bomb.len()
    );
    refused(
        &bomb,
        &ArtifactLimits {
            max_tree_bytes: 1024 * 1024,
            ..d
        },
        "more than 1048576 bytes",
    );
    let tiny = ArtifactLimits {
        max_archive_bytes: 100,
        ..d
    };
    // Incompressible bytes (a simple LCG), so the archive itself is large.
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    refused(
        &archive(&[("a", Regular, "", &noise)]),
        &tiny,
        "over the limit",
    );
    // Not an archive at all; a duplicate name.
    let dir = tempfile::tempdir().unwrap();
    assert!(unpack_archive(b"definitely not gzip", &dir.path().join("t"), &d).is_err());
    refused(
        &archive(&[("same", Regular, "", b"1"), ("same", Regular, "", b"2")]),
        &d,
        "same",
    );
    // And a well-formed one passes, with its digest stable.
    let fine = archive(&[
        ("dir", Directory, "", b""),
        ("dir/a.txt", Regular, "", b"hello"),
    ]);
    assert_eq!(sha256_hex(&fine), sha256_hex(&fine.clone()));
    let out = tempfile::tempdir().unwrap();
    let u = unpack_archive(&fine, &out.path().join("t"), &d).unwrap();
    assert_eq!((u.files, u.bytes), (1, 5));
    let mut f = std::fs::File::open(out.path().join("t/dir/a.txt")).unwrap();
    let mut s = String::new();
    std::io::Read::read_to_string(&mut f, &mut s).unwrap();
    assert_eq!(s, "hello");
    let _ = f.flush();
}

#[test]
fn option_shaped_and_git_shaped_names_are_refused_at_unpack_naming_the_file() {
    use agent_sdk::artifacts::refused_names;
    use tar::EntryType::{Directory, Regular};
    let d = ArtifactLimits::default();
    for (name, kind, rule) in [
        ("--require=evil.js", Regular, "starting with '-'"),
        ("src/-e", Regular, "starting with '-'"),
        (".git", Directory, "git's own"),
        (".git/config", Regular, "git's own"),
        ("vendor/dep/.git", Regular, "git's own"),
        ("sub/.GIT/HEAD", Regular, "git's own"),
        (".gitattributes", Regular, "git's own"),
        ("docs/.gitattributes", Regular, "git's own"),
        (".gitmodules", Regular, "git's own"),
        (".gitconfig", Regular, "git's own"),
        ("hooks/pre-commit", Regular, "git hook"),
        (".husky/pre-push", Regular, "git hook"),
    ] {
        let bytes = archive(&[("README.md", Regular, "", b"fine"), (name, kind, "", b"")]);
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t");
        let e = unpack_archive(&bytes, &target, &d).unwrap_err().to_string();
        assert!(
            e.contains(&format!("{name:?}")) && e.contains(rule),
            "{name}: {e}"
        );
        // Nothing of the refused entry was written.
        let top = name.split('/').next().unwrap();
        assert!(!target.join(top).exists(), "{name} written");
        let found = refused_names(&bytes, &d).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, name);
        assert!(found[0].why.contains(rule), "{found:?}");
    }
    // All of an archive's refused names are listed, the rest are not.
    let bytes = archive(&[
        ("a.txt", Regular, "", b"1"),
        ("-x", Regular, "", b"2"),
        ("b/.gitmodules", Regular, "", b"3"),
    ]);
    let names: Vec<String> = refused_names(&bytes, &d)
        .unwrap()
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(names, ["-x", "b/.gitmodules"]);
    assert!(refused_names(b"not gzip", &d).is_err());
}

#[test]
fn packing_refuses_git_shaped_and_option_shaped_names() {
    let d = ArtifactLimits::default();
    for name in [
        ".git/HEAD",
        "sub/.gitattributes",
        "--help",
        "hooks/post-checkout",
    ] {
        let dir = tempfile::tempdir().unwrap();
        project(dir.path());
        write(dir.path(), name, "x");
        let e = pack_dir(dir.path(), &d).unwrap_err().to_string();
        assert!(e.contains("project file path"), "{name}: {e}");
        assert!(
            e.contains(&name.split('/').next().unwrap().to_string()),
            "{name}: {e}"
        );
    }
}

#[cfg(unix)]
#[test]
fn setuid_and_setgid_bits_never_survive_unpacking() {
    use std::os::unix::fs::PermissionsExt;
    let mut h = raw_header("suid", tar::EntryType::Regular, "", 2);
    h.set_mode(0o6755);
    h.set_cksum();
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut b = tar::Builder::new(gz);
    b.append(&h, &b"#!"[..]).unwrap();
    let bytes = b.into_inner().unwrap().finish().unwrap();
    let out = tempfile::tempdir().unwrap();
    unpack_archive(&bytes, &out.path().join("t"), &ArtifactLimits::default()).unwrap();
    let mode = std::fs::metadata(out.path().join("t/suid"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7000, 0, "mode {mode:o}");
    assert_ne!(mode & 0o111, 0, "the executable bit is kept");
}
