//! The `orchestrator` binary's arguments and exit codes.

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(args)
        .env_clear()
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn check_validates_a_definition_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "name: d\nstages:\n  - {name: a, agent: x}\n  - {name: b, agent: x, depends_on: [a]}\n  - {name: c, agent: x, depends_on: [a]}\n").unwrap();
    let o = run(&["check", good.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("3 stages in 2 levels") && out.contains("level 1: b, c"),
        "{out}"
    );

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "name: d\nstages:\n  - {name: a, agent: x, depends_on: [ghost]}\n",
    )
    .unwrap();
    let o = run(&["check", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(65));
    assert!(stderr(&o).contains("ghost"), "{}", stderr(&o));

    let o = run(&["check", dir.path().join("missing.yaml").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(66));
}

#[test]
fn bad_arguments_get_a_usage_line_and_a_non_zero_exit() {
    let o = run(&["bogus"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("Usage"), "{}", stderr(&o));
    let o = run(&["serve", "--claim-idle", "soon"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--claim-idle"), "{}", stderr(&o));
}

#[test]
fn unsafe_settings_are_refused_without_leaking_secrets() {
    // No token on the command line, where every local user can read it.
    let o = run(&["serve", "--api-token", "hunter2-token-0123456789"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!stderr(&o).contains("hunter2"), "{}", stderr(&o));
    let o = run(&["serve", "--insecure-no-auth"]);
    assert_eq!(o.status.code(), Some(2));
    let o = run(&["serve", "--redis-url", "http://:hunter2@example:1"]);
    assert_eq!(o.status.code(), Some(64));
    assert!(!stderr(&o).contains("hunter2"), "{}", stderr(&o));
    assert!(stderr(&o).contains("--redis-url"), "{}", stderr(&o));
}
