//! The docs stay true: the README shows the echo example as it is.

#[test]
fn readme_shows_the_echo_example_verbatim() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let example =
        std::fs::read_to_string(root.join("agent-sdk/examples/echo.rs")).expect("echo.rs");
    let section = readme
        .split("## Writing your own agent")
        .nth(1)
        .expect("README has a 'Writing your own agent' section");
    let shown = section
        .split("```rust\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the section has a rust code block");
    // The file's `//!` header (how to run it) is not repeated in the README.
    let code: String = example
        .lines()
        .filter(|l| !l.starts_with("//!"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        shown, code,
        "README's example differs from agent-sdk/examples/echo.rs"
    );
}
