//! `e2e-agent`: runs a project's own test suite — `cargo test --offline`,
//! `python3 -m unittest`, `node --test` — in the [`Jail`] (bubblewrap: its
//! own uid, no network, a read-only root, the unpacked project the only
//! writable directory, memory/process/CPU/file-size/output limits, the whole
//! tree killed at the end, at the timeout or when the handler is dropped),
//! and reports the pass/fail counts parsed from the runner's output with the
//! limits in force and any it hit.
//!
//! Input: `{"artifact": "<sha256>"}`, or as a workflow stage the artifact of
//! the stage it depends on (see [`agent_toolkit::artifact_of`]); an input
//! that is neither is refused as invalid input. Failing tests are a
//! permanent failure carrying the counts and the output's tail; a timeout is
//! retryable.

use agent_sdk::schemas::TaskInput;
use agent_sdk::{Agent, AgentError, Artifacts, TaskContext};
use agent_toolkit::{
    ArtifactRequest, Checked, Enforcement, Jail, JailCommand, Language, RunOutput, Unread,
    artifact_of, unpack_private,
};
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::Path;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// Lines of output kept in a failure.
const TAIL_LINES: usize = 40;

/// What a test run found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The artifact tested.
    pub artifact: String,
    /// Its language.
    pub language: Language,
    /// The command run.
    pub command: String,
    /// Tests passed.
    pub passed: u64,
    /// Tests failed (failures and errors).
    pub failed: u64,
    /// How long the run took.
    pub duration_ms: u64,
    /// What enforced each limit (jail, memory, pids, cpu, file size, output).
    pub limits: Enforcement,
    /// Limits the suite ran into (`memory`, `pids`, `output`).
    pub limits_hit: Vec<String>,
    /// Bytes the suite printed.
    pub output_bytes: u64,
    /// Whether only the start and end of the output were kept.
    pub output_truncated: bool,
}

static CARGO: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"test result: \w+\. (\d+) passed; (\d+) failed").ok());
static PY_RAN: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"(?m)^Ran (\d+) tests?").ok());
static PY_FAILED: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"(?m)^FAILED \((.*)\)").ok());
static TAP: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"(?m)^# (pass|fail) (\d+)").ok());

fn num(s: &str) -> u64 {
    s.parse().unwrap_or(0)
}

/// Pass and fail counts in a runner's output; `None` when it printed none.
pub fn counts(language: Language, output: &str) -> Option<(u64, u64)> {
    match language {
        Language::Rust => {
            let re = CARGO.as_ref()?;
            let mut any = false;
            let (mut p, mut f) = (0, 0);
            for c in re.captures_iter(output) {
                any = true;
                p += num(&c[1]);
                f += num(&c[2]);
            }
            any.then_some((p, f))
        }
        Language::Python => {
            let ran = num(&PY_RAN.as_ref()?.captures(output)?[1]);
            let failed = PY_FAILED
                .as_ref()
                .and_then(|re| re.captures(output))
                .map(|c| {
                    c[1].split(',')
                        .filter_map(|kv| kv.split_once('='))
                        .filter(|(k, _)| matches!(k.trim(), "failures" | "errors"))
                        .map(|(_, v)| num(v.trim()))
                        .sum()
                })
                .unwrap_or(0);
            Some((ran.saturating_sub(failed), failed))
        }
        Language::Node => {
            let re = TAP.as_ref()?;
            let (mut p, mut f, mut any) = (0, 0, false);
            for c in re.captures_iter(output) {
                any = true;
                if &c[1] == "pass" {
                    p = num(&c[2]);
                } else {
                    f = num(&c[2]);
                }
            }
            any.then_some((p, f))
        }
    }
}

fn command(language: Language) -> (&'static str, &'static [&'static str]) {
    match language {
        Language::Rust => ("cargo", &["test", "--offline", "--no-fail-fast"]),
        Language::Python => (
            "python3",
            &["-m", "unittest", "discover", "-s", "tests", "-v"],
        ),
        Language::Node => ("node", &["--test", "--test-reporter=tap", "test/"]),
    }
}

/// One suite's run: language, command, how it ended, (passed, failed).
pub type SuiteRun = (Language, String, RunOutput, Option<(u64, u64)>);

/// Runs the tests of the project at `root` in `jail`; the run and its counts.
pub async fn test_tree(
    jail: &Jail,
    root: &Path,
    timeout: Duration,
) -> Result<SuiteRun, AgentError> {
    let language = Language::detect(root).ok_or_else(|| {
        AgentError::permanent("no Cargo.toml, pyproject.toml or package.json: nothing to test")
    })?;
    let (program, args) = command(language);
    let cmd = JailCommand::new(program, timeout)
        .args(args)
        .env_project_path("CARGO_TARGET_DIR", ".e2e-target")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let out = jail
        .run(root, &cmd)
        .await
        .map_err(|e| AgentError::retryable(format!("cannot run {program}: {e}")))?
        .ok_or_else(|| {
            AgentError::permanent(format!("{program} is not installed on this worker"))
        })?;
    let counts = counts(language, &out.output);
    Ok((language, cmd.display(), out, counts))
}

/// ", limits hit: memory, pids" when the suite ran into any.
fn hit(out: &RunOutput) -> String {
    if out.limits_hit.is_empty() {
        String::new()
    } else {
        format!("; limits hit: {}", out.limits_hit.join(", "))
    }
}

/// The agent.
#[derive(Debug, Clone)]
pub struct E2eAgent {
    artifacts: Artifacts,
    timeout: Duration,
    jail: Jail,
}

impl E2eAgent {
    /// An agent reading projects from `artifacts`, running each suite in
    /// `jail` for at most `timeout`.
    pub fn new(artifacts: Artifacts, timeout: Duration, jail: Jail) -> Self {
        Self {
            artifacts,
            timeout,
            jail,
        }
    }
}

impl Agent for E2eAgent {
    type Input = Checked<TaskInput<ArtifactRequest, Unread>>;
    type Output = Outcome;

    async fn handle(&self, _ctx: &TaskContext, input: Self::Input) -> Result<Outcome, AgentError> {
        let sha = artifact_of(&input.into_result("bad input")?)?;
        let (_dir, root) = unpack_private(&self.artifacts, &sha).await?;
        let timeout = self.timeout;
        let started = Instant::now();
        // Dropping this future (the SDK's timeout, a lost lease) kills the
        // jail and everything the suite started.
        let (language, cmd, out, counts) = test_tree(&self.jail, &root, timeout).await?;
        let duration_ms = started.elapsed().as_millis() as u64;
        let (passed, failed) = counts.unwrap_or((0, 0));
        let details = json!({ "command": cmd, "passed": passed, "failed": failed,
                              "tail": out.tail(TAIL_LINES), "limits": out.limits_json() });
        if out.timed_out {
            return Err(AgentError::retryable(format!(
                "tests timed out after {}{}",
                humantime::format_duration(timeout),
                hit(&out)
            ))
            .with_details(details));
        }
        if !out.success || failed > 0 {
            return Err(AgentError::permanent(format!(
                "tests failed: {passed} passed, {failed} failed ({cmd}{})",
                hit(&out)
            ))
            .with_details(details));
        }
        if counts.is_none() {
            return Err(AgentError::permanent(format!(
                "{cmd} succeeded but reported no test counts{}",
                hit(&out)
            ))
            .with_details(details));
        }
        Ok(Outcome {
            artifact: sha,
            language,
            command: cmd,
            passed,
            failed,
            duration_ms,
            limits: out.limits,
            limits_hit: out.limits_hit,
            output_bytes: out.output_bytes,
            output_truncated: out.output_truncated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_sdk::AgentErrorKind;
    use serde_json::Value;

    /// The artifact the agent would test for `input`.
    fn artifact(input: Value) -> Result<String, AgentError> {
        let input: <E2eAgent as Agent>::Input = serde_json::from_value(input).unwrap();
        artifact_of(&input.into_result("bad input")?)
    }

    #[test]
    fn the_artifact_comes_from_the_input_or_the_stage_depended_on() {
        let sha = "d".repeat(64);
        assert_eq!(artifact(json!({ "artifact": sha })).unwrap(), sha);
        let staged = json!({ "workflow_id": "w", "stage": "e2e", "input": {},
                             "deps": { "validation": { "artifact": sha, "findings": [] } } });
        assert_eq!(artifact(staged).unwrap(), sha);
        let undo = json!({ "workflow_id": "w", "stage": "e2e", "input": {}, "deps": {},
                           "output": { "passed": 1 }, "artifact": { "sha256": sha } });
        assert_eq!(artifact(undo).unwrap(), sha);
        for refused in [
            json!({ "artifact": 1 }),
            json!("x"),
            json!({ "workflow_id": "w", "stage": "e2e", "input": {}, "deps": { "v": { "findings": [] } } }),
        ] {
            let e = artifact(refused.clone()).unwrap_err();
            assert_eq!(e.kind(), AgentErrorKind::InvalidInput, "{refused}");
        }
    }

    #[test]
    fn counts_are_read_from_each_runner() {
        let cargo = "test result: ok. 2 passed; 0 failed; 0 ignored\n...\ntest result: FAILED. 1 passed; 1 failed; 0 ignored\n";
        assert_eq!(counts(Language::Rust, cargo), Some((3, 1)));
        assert_eq!(
            counts(Language::Python, "....\nRan 4 tests in 0.001s\n\nOK\n"),
            Some((4, 0))
        );
        assert_eq!(
            counts(
                Language::Python,
                "Ran 5 tests in 0.1s\n\nFAILED (failures=1, errors=2)\n"
            ),
            Some((2, 3))
        );
        assert_eq!(
            counts(
                Language::Node,
                "TAP version 13\n# tests 3\n# pass 2\n# fail 1\n"
            ),
            Some((2, 1))
        );
        assert_eq!(counts(Language::Rust, "error: could not compile"), None);
    }
}
