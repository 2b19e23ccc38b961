//! `deployment-agent`: installs a project artifact as a release under its
//! configured releases directory — `<releases>/<app>/releases/<id>` — runs
//! the project's smoke check there, switches the `current` link to it
//! atomically (a new link renamed over the old one), and keeps the last 5
//! releases. Action `rollback` (the compensation of the `sdlc` definition)
//! switches `current` back to the release before it.
//!
//! Input ([`Request`]): the artifact (directly, or from the stage it depends
//! on — the integration stage's output, whose `commit` labels the release),
//! the app name (`app`, `project` or `name`), and `action` (`deploy`, the
//! default, or `rollback`). As a workflow stage, each field is read from the
//! stage input's own fields (a compensation's, e.g. `"action": "rollback"`),
//! else the workflow input, else the outputs of the stages it depends on
//! (see [`asked`]). Only the agent's configuration chooses a directory; the
//! app name must pass the name rules.

use agent_sdk::schemas::TaskInput;
use agent_sdk::{Agent, AgentError, Artifacts, TaskContext};
use agent_toolkit::{
    ArtifactField, Checked, Jail, JailCommand, Language, Loose, NamesArtifact, artifact_of,
    check_project_name, dep_outputs, extra_as, loose, unpack_private,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Releases kept per app (the current and previous ones always are).
pub const KEEP_RELEASES: usize = 5;
/// How long a smoke check may run.
pub const SMOKE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a deployment or rollback did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployed {
    /// `deploy` or `rollback`.
    pub action: String,
    /// The app.
    pub app: String,
    /// The release `current` now points to.
    pub release: String,
    /// Its directory.
    pub path: String,
    /// The release `current` pointed to before, if any.
    pub previous: Option<String>,
}

fn io(what: &str) -> impl Fn(std::io::Error) -> AgentError + '_ {
    move |e| AgentError::retryable(format!("{what}: {e}"))
}

fn check_app(name: &str) -> Result<(), AgentError> {
    check_project_name("app", name)
}

/// What a deployment task says, sent directly; and how its fields are read
/// from each place of a stage input (see [`asked`]). A field of another
/// type reads as absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Request {
    /// The artifact to deploy (direct inputs; see [`artifact_of`]).
    #[serde(default, deserialize_with = "loose")]
    pub artifact: Option<ArtifactField>,
    /// `deploy` (the default) or `rollback`.
    #[serde(default, deserialize_with = "loose")]
    pub action: Option<String>,
    /// The app.
    #[serde(default, deserialize_with = "loose")]
    pub app: Option<String>,
    /// The app, when `app` is not given.
    #[serde(default, deserialize_with = "loose")]
    pub project: Option<String>,
    /// The app, when neither `app` nor `project` is given.
    #[serde(default, deserialize_with = "loose")]
    pub name: Option<String>,
    /// The commit labelling the release (the integration's output has it).
    #[serde(default, deserialize_with = "loose")]
    pub commit: Option<String>,
}

impl Request {
    fn app(&self) -> Option<&str> {
        self.app
            .as_deref()
            .or(self.project.as_deref())
            .or(self.name.as_deref())
    }
}

impl NamesArtifact for Request {
    fn artifact(&self) -> Option<&ArtifactField> {
        self.artifact.as_ref()
    }
}

/// A deployment task's input.
pub type Input = TaskInput<Request, Loose<Request>>;

/// What a task asks for, its artifact aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    /// The action, `deploy` when none is given.
    pub action: String,
    /// The app name, unchecked.
    pub app: Option<String>,
    /// The commit to label the release with.
    pub commit: Option<String>,
}

/// What `input` asks for. Each field comes from the first place that has
/// it: a direct input; for a stage, its own fields (a compensation's), the
/// workflow input, then the outputs of the stages it depends on, by name.
pub fn asked(input: &Input) -> Asked {
    let places: Vec<Request> = match input {
        TaskInput::Direct(req) => vec![req.clone()],
        TaskInput::Stage(s) => extra_as::<Request, _>(s)
            .into_iter()
            .chain([s.input.0.clone()])
            .chain(dep_outputs::<Request, _>(s))
            .collect(),
    };
    let first =
        |pick: fn(&Request) -> Option<&str>| places.iter().find_map(|p| pick(p).map(str::to_owned));
    Asked {
        action: first(|p| p.action.as_deref()).unwrap_or_else(|| "deploy".into()),
        app: first(Request::app),
        commit: first(|p| p.commit.as_deref()),
    }
}

/// One app's releases directory.
#[derive(Debug, Clone)]
pub struct App {
    root: PathBuf,
}

impl App {
    /// The app `name` under `releases`.
    pub fn new(releases: &Path, name: &str) -> Self {
        Self {
            root: releases.join(name),
        }
    }

    fn releases(&self) -> PathBuf {
        self.root.join("releases")
    }

    fn history_file(&self) -> PathBuf {
        self.root.join("history")
    }

    /// Release ids in deployment order, oldest first.
    pub fn history(&self) -> Vec<String> {
        std::fs::read_to_string(self.history_file())
            .map(|t| {
                t.lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The release `current` points to.
    pub fn current(&self) -> Option<String> {
        std::fs::read_link(self.root.join("current"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
    }

    /// Points `current` at release `id`, atomically.
    fn switch(&self, id: &str) -> std::io::Result<()> {
        let tmp = self.root.join(format!(".current-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new("releases").join(id), &tmp)?;
        std::fs::rename(&tmp, self.root.join("current"))
    }

    fn record(&self, id: &str) -> std::io::Result<()> {
        let mut h = self.history();
        h.retain(|r| r != id);
        h.push(id.to_owned());
        let tmp = self.root.join(".history.tmp");
        std::fs::write(&tmp, h.join("\n") + "\n")?;
        std::fs::rename(&tmp, self.history_file())
    }

    /// Removes releases beyond the last [`KEEP_RELEASES`], never the current one.
    fn prune(&self) -> std::io::Result<()> {
        let h = self.history();
        let current = self.current();
        let keep_from = h.len().saturating_sub(KEEP_RELEASES);
        for old in &h[..keep_from] {
            if Some(old) != current.as_ref() {
                let _ = std::fs::remove_dir_all(self.releases().join(old));
            }
        }
        let kept: Vec<&String> = h[keep_from..].iter().collect();
        let kept: Vec<String> = h
            .iter()
            .filter(|r| kept.contains(r) || Some(*r) == current.as_ref())
            .cloned()
            .collect();
        std::fs::write(self.history_file(), kept.join("\n") + "\n")
    }
}

/// The project's smoke check in `dir`: does it load? It runs the
/// project's code, so in `jail`, with the release read-only.
async fn smoke(jail: &Jail, dir: &Path) -> Result<(), AgentError> {
    let (program, args): (&str, Vec<String>) = match Language::detect(dir) {
        Some(Language::Node) => (
            "node",
            vec!["-e".into(), "require('./src/index.js')".into()],
        ),
        Some(Language::Python) => {
            let module = std::fs::read_dir(dir.join("src"))
                .ok()
                .and_then(|mut d| {
                    d.find_map(|e| e.ok().filter(|e| e.path().join("__init__.py").is_file()))
                })
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .ok_or_else(|| AgentError::permanent("smoke check: no package under src/"))?;
            (
                "python3",
                vec![
                    "-c".into(),
                    format!("import sys; sys.path.insert(0, 'src'); import {module}"),
                ],
            )
        }
        Some(Language::Rust) => {
            return if dir.join("src/lib.rs").is_file() || dir.join("src/main.rs").is_file() {
                Ok(())
            } else {
                Err(AgentError::permanent(
                    "smoke check: no src/lib.rs or src/main.rs",
                ))
            };
        }
        None => {
            return Err(AgentError::permanent(
                "smoke check: no manifest, nothing to run",
            ));
        }
    };
    let cmd = JailCommand::new(program, SMOKE_TIMEOUT)
        .args(&args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .read_only();
    match jail.run(dir, &cmd).await {
        Ok(Some(r)) if r.success => Ok(()),
        Ok(Some(r)) => Err(
            AgentError::permanent(format!("smoke check failed: {}", r.tail(30)))
                .with_details(serde_json::json!({ "limits": r.limits_json() })),
        ),
        Ok(None) => Err(AgentError::permanent(format!(
            "smoke check: {program} is not installed"
        ))),
        Err(e) => Err(AgentError::retryable(format!(
            "smoke check could not run: {e}"
        ))),
    }
}

/// Installs the tree at `tree` as release `id` of `app` and makes it
/// current, once its smoke check passed in `jail`.
pub async fn deploy(jail: &Jail, app: &App, tree: &Path, id: &str) -> Result<Deployed, AgentError> {
    let dest = app.releases().join(id);
    std::fs::create_dir_all(app.releases()).map_err(io("creating the releases directory"))?;
    if !dest.is_dir() {
        // Built beside, renamed into place: a release directory is whole or absent.
        let staging = app.releases().join(format!(".{id}.staging"));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::rename(tree, &staging)
            .or_else(|_| copy_dir(tree, &staging))
            .map_err(io("installing the release"))?;
        if let Err(e) = smoke(jail, &staging).await {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        std::fs::rename(&staging, &dest).map_err(io("installing the release"))?;
    }
    let previous = app.current().filter(|c| c != id);
    app.switch(id).map_err(io("switching current"))?;
    app.record(id).map_err(io("recording the release"))?;
    app.prune().map_err(io("pruning old releases"))?;
    Ok(Deployed {
        action: "deploy".into(),
        app: app
            .root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        release: id.to_owned(),
        path: dest.to_string_lossy().into_owned(),
        previous,
    })
}

/// Points `current` back at the release deployed before it.
pub fn rollback(app: &App) -> Result<Deployed, AgentError> {
    let current = app
        .current()
        .ok_or_else(|| AgentError::permanent("nothing is deployed: nothing to roll back"))?;
    let h = app.history();
    let at = h.iter().position(|r| *r == current);
    let Some(target) = at.and_then(|i| i.checked_sub(1)).map(|i| h[i].clone()) else {
        return Err(AgentError::permanent(format!(
            "release {current} is the first one: nothing to roll back to"
        )));
    };
    app.switch(&target).map_err(io("switching current"))?;
    // The rolled-back release leaves the history, so a second rollback goes further back.
    let mut h = h;
    h.retain(|r| *r != current);
    std::fs::write(app.history_file(), h.join("\n") + "\n")
        .map_err(io("recording the rollback"))?;
    Ok(Deployed {
        action: "rollback".into(),
        app: app
            .root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        release: target.clone(),
        path: app.releases().join(&target).to_string_lossy().into_owned(),
        previous: Some(current),
    })
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()))?;
        } else {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

/// The agent.
#[derive(Debug, Clone)]
pub struct DeploymentAgent {
    artifacts: Artifacts,
    releases: PathBuf,
    jail: Jail,
}

impl DeploymentAgent {
    /// Releases live under `releases`; smoke checks run in `jail`.
    pub fn new(artifacts: Artifacts, releases: PathBuf, jail: Jail) -> Self {
        Self {
            artifacts,
            releases,
            jail,
        }
    }
}

impl Agent for DeploymentAgent {
    type Input = Checked<Input>;
    type Output = Deployed;

    async fn handle(
        &self,
        _ctx: &TaskContext,
        input: Checked<Input>,
    ) -> Result<Deployed, AgentError> {
        let input = input.into_result("bad input")?;
        let asked = asked(&input);
        let releases = self.releases.clone();
        if asked.action == "rollback" {
            let name = asked
                .app
                .ok_or_else(|| AgentError::invalid_input("rollback needs the app name"))?;
            check_app(&name)?;
            return tokio::task::spawn_blocking(move || rollback(&App::new(&releases, &name)))
                .await
                .map_err(|e| AgentError::retryable(format!("rollback stopped: {e}")))?;
        }
        if asked.action != "deploy" {
            return Err(AgentError::invalid_input(format!(
                "unknown action {:?}: deploy or rollback",
                asked.action.chars().take(40).collect::<String>()
            )));
        }
        let sha = artifact_of(&input)?;
        let (_dir, tree) = unpack_private(&self.artifacts, &sha).await?;
        let Some(name) = asked.app else {
            return Err(AgentError::invalid_input("no app name: give \"app\""));
        };
        check_app(&name)?;
        // Labelled with the integration's commit when there is one.
        let label = asked.commit.as_deref().unwrap_or(&sha);
        let id: String = label
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(12)
            .collect();
        // Dropping this future (timeout, lost lease) kills a running smoke check.
        deploy(&self.jail, &App::new(&releases, &name), &tree, &id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_sdk::AgentErrorKind;
    use serde_json::{Value, json};

    fn read(v: Value) -> Result<Input, AgentError> {
        serde_json::from_value::<Checked<Input>>(v)
            .unwrap()
            .into_result("bad input")
    }

    fn asked_of(v: Value) -> Asked {
        asked(&read(v).unwrap())
    }

    #[test]
    fn a_direct_input_says_it_all() {
        let sha = "f".repeat(64);
        let i = read(json!({ "artifact": sha, "app": "shop", "name": "other" })).unwrap();
        assert_eq!(artifact_of(&i).unwrap(), sha);
        assert_eq!(
            asked(&i),
            Asked {
                action: "deploy".into(),
                app: Some("shop".into()),
                commit: None
            }
        );
        let a = asked_of(json!({ "action": "rollback", "project": "shop", "commit": 7 }));
        assert_eq!(
            (a.action.as_str(), a.app.as_deref(), a.commit),
            ("rollback", Some("shop"), None)
        );
        assert_eq!(asked_of(json!({ "action": "explode" })).action, "explode");
        let e = read(json!("shop")).unwrap_err();
        assert_eq!(e.kind(), AgentErrorKind::InvalidInput);
    }

    #[test]
    fn a_stage_reads_its_fields_then_the_workflow_input_then_its_dependencies() {
        let sha = "f".repeat(64);
        let staged = json!({ "workflow_id": "w1", "stage": "deployment", "input": { "name": "shop" },
            "deps": { "integration": { "artifact": { "sha256": sha }, "commit": "aaaaaaaaaaaaaaaa1111",
                                       "project": "other", "branch": "wf/w1" } } });
        let i = read(staged).unwrap();
        assert_eq!(artifact_of(&i).unwrap(), sha);
        assert_eq!(
            asked(&i),
            Asked {
                action: "deploy".into(),
                app: Some("shop".into()),
                commit: Some("aaaaaaaaaaaaaaaa1111".into())
            }
        );
        // Without a workflow input the dependency's project names the app.
        let a = asked_of(
            json!({ "workflow_id": "w1", "stage": "deployment", "input": null,
            "deps": { "a": { "findings": [] }, "integration": { "artifact": sha, "project": "shop" } } }),
        );
        assert_eq!(a.app.as_deref(), Some("shop"));
    }

    #[test]
    fn a_compensation_rolls_back_with_its_own_fields_first() {
        // As the sdlc's compensation sends it.
        let undo = json!({ "workflow_id": "w7", "stage": "deployment", "action": "rollback",
            "input": { "name": "shop" }, "deps": {}, "output": { "action": "deploy", "app": "old" } });
        let a = asked_of(undo);
        assert_eq!(
            (a.action.as_str(), a.app.as_deref()),
            ("rollback", Some("shop"))
        );
        let undo = json!({ "workflow_id": "w7", "stage": "deployment", "action": "rollback",
            "app": "shop-2", "input": { "name": "shop" }, "deps": {}, "output": {} });
        assert_eq!(asked_of(undo).app.as_deref(), Some("shop-2"));
        // The output of the stage undone is not a place fields are read from.
        let undo = json!({ "workflow_id": "w7", "stage": "deployment", "action": "rollback",
            "input": {}, "deps": {}, "output": { "app": "shop" } });
        assert_eq!(asked_of(undo).app, None);
    }
}
