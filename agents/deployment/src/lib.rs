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
//! default, or `rollback`). As a workflow stage, the agent decides from
//! trusted fields only ([`asked`]): the action from the definition's
//! `compensate.input`, the commit from the integration's output, the app
//! from the project (the integration's `project`, else the artifact's
//! manifest name); an app in the workflow input that differs is refused.
//! A release id is the first 12 characters of a label that must be a
//! commit id (7–64 hex digits) or the artifact's digest. Only the agent's
//! configuration chooses a directory; the app name must pass the name
//! rules. The smoke check names what it loads by argument
//! (`node -e <fixed code> ./src/index.js`,
//! `python3 -I -B -c <fixed code> <package>`), never inside code.

pub mod asked;

pub use asked::{Asked, Input, Request, asked};

use agent_sdk::{Agent, AgentError, Artifacts, TaskContext};
use agent_toolkit::{
    Checked, Jail, JailCommand, Language, artifact_of, check_project_name, unpack_private,
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

/// Loads `src/index.js`, named by the first argument.
const NODE_SMOKE: &str = "require(require('path').resolve(process.argv[1]))";

/// Imports the package under `src/` named by the first argument. With
/// `-I` the release directory itself is not on the path, only `src`.
const PYTHON_SMOKE: &str =
    "import importlib, sys; sys.path.insert(0, 'src'); importlib.import_module(sys.argv[1])";

/// The project's smoke check in `dir`: does it load? What it loads is
/// named by an argument of a fixed program, never written into its code:
/// a directory name is data, whatever it holds.
///
/// It runs the project's code, so in `jail`, with the release read-only.
async fn smoke(jail: &Jail, dir: &Path) -> Result<(), AgentError> {
    let (program, args): (&str, Vec<String>) = match Language::detect(dir) {
        Some(Language::Node) => (
            "node",
            vec!["-e".into(), NODE_SMOKE.into(), "./src/index.js".into()],
        ),
        Some(Language::Python) => {
            let mut packages: Vec<String> = std::fs::read_dir(dir.join("src"))
                .map_err(|_| AgentError::permanent("smoke check: no src/ directory"))?
                .filter_map(Result::ok)
                .filter(|e| e.path().join("__init__.py").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            // The first by name, so the same tree always checks the same package.
            packages.sort();
            let module = packages
                .into_iter()
                .next()
                .ok_or_else(|| AgentError::permanent("smoke check: no package under src/"))?;
            (
                "python3",
                vec![
                    "-I".into(),
                    "-B".into(),
                    "-c".into(),
                    PYTHON_SMOKE.into(),
                    module,
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

/// Installs the tree at `tree` as release `id` of `app` and makes it current.
///
/// The smoke check runs in `jail`.
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
            let name = asked.app.ok_or_else(|| {
                AgentError::invalid_input(
                    "rollback needs the app: a direct input's \"app\", or the output of the deployment undone",
                )
            })?;
            check_project_name("app", &name)?;
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
        // Labelled with the integration's commit when there is one.
        let id = asked::release_id(asked.commit.as_deref().unwrap_or(&sha))?;
        let (_dir, tree) = unpack_private(&self.artifacts, &sha).await?;
        let name =
            asked::app_to_deploy(asked.app.as_deref(), asked.requested_app.as_deref(), &tree)?;
        // Dropping this future (timeout, lost lease) kills a running smoke check.
        deploy(&self.jail, &App::new(&releases, &name), &tree, &id).await
    }
}
