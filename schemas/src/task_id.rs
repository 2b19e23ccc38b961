//! The grammar of workflow task ids: the one place that formats and parses them.
//!
//! A workflow's tasks are named after the workflow and the stage:
//!
//! | id | what |
//! |---|---|
//! | `<workflow>:<stage>:<n>` | the `n`-th dispatch of a stage (1, 2, … across replays and retries of the stage) |
//! | `<workflow>:<stage>:undo` | the stage's compensation |
//! | `<workflow>:<stage>:approval` | the durable timer of a stage's approval wait (never a task on a stream) |
//!
//! Neither workflow ids nor stage names may contain `:` (see
//! [`crate::names::validate_workflow_id`] and the definition rules), so the
//! workflow is everything before the first `:` and the kind everything after
//! the last one. Standalone tasks have ids of their producer's choosing and
//! parse to `None`.

use std::fmt;

/// What a workflow task id names (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskKind {
    /// The `n`-th dispatch of the stage.
    Run(u32),
    /// The stage's compensation.
    Undo,
    /// The stage's approval timer.
    Approval,
}

/// A parsed workflow task id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaskId {
    workflow: String,
    stage: String,
    kind: TaskKind,
}

const UNDO: &str = "undo";
const APPROVAL: &str = "approval";

impl TaskId {
    /// The `n`-th dispatch of `stage` in `workflow`.
    pub fn run(workflow: &str, stage: &str, n: u32) -> Self {
        Self::new(workflow, stage, TaskKind::Run(n))
    }

    /// The compensation of `stage` in `workflow`.
    pub fn undo(workflow: &str, stage: &str) -> Self {
        Self::new(workflow, stage, TaskKind::Undo)
    }

    /// The approval timer of `stage` in `workflow`.
    pub fn approval(workflow: &str, stage: &str) -> Self {
        Self::new(workflow, stage, TaskKind::Approval)
    }

    fn new(workflow: &str, stage: &str, kind: TaskKind) -> Self {
        Self {
            workflow: workflow.to_owned(),
            stage: stage.to_owned(),
            kind,
        }
    }

    /// Parses a workflow task id; `None` for any other id.
    pub fn parse(id: &str) -> Option<Self> {
        let (workflow, rest) = id.split_once(':')?;
        let (stage, suffix) = rest.rsplit_once(':')?;
        if workflow.is_empty() || stage.is_empty() {
            return None;
        }
        let kind = match suffix {
            UNDO => TaskKind::Undo,
            APPROVAL => TaskKind::Approval,
            n => TaskKind::Run(n.parse().ok().filter(|n| *n > 0)?),
        };
        Some(Self::new(workflow, stage, kind))
    }

    /// The workflow of a workflow task id, without parsing the rest.
    pub fn workflow_of(id: &str) -> Option<&str> {
        id.split_once(':')
            .map(|(wf, _)| wf)
            .filter(|wf| !wf.is_empty())
    }

    /// The workflow.
    pub fn workflow(&self) -> &str {
        &self.workflow
    }

    /// The stage.
    pub fn stage(&self) -> &str {
        &self.stage
    }

    /// What the id names.
    pub fn kind(&self) -> TaskKind {
        self.kind
    }

    /// Whether this is a compensation task.
    pub fn is_undo(&self) -> bool {
        self.kind == TaskKind::Undo
    }

    /// How the stage shows in logs and event lists: `name`, or `name.undo`
    /// for its compensation.
    pub fn stage_label(&self) -> String {
        match self.kind {
            TaskKind::Undo => format!("{}.undo", self.stage),
            _ => self.stage.clone(),
        }
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            TaskKind::Run(n) => write!(f, "{}:{}:{n}", self.workflow, self.stage),
            TaskKind::Undo => write!(f, "{}:{}:{UNDO}", self.workflow, self.stage),
            TaskKind::Approval => write!(f, "{}:{}:{APPROVAL}", self.workflow, self.stage),
        }
    }
}

impl From<TaskId> for String {
    fn from(t: TaskId) -> Self {
        t.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_every_kind() {
        for (id, kind) in [
            (TaskId::run("wf-1", "build", 3), TaskKind::Run(3)),
            (TaskId::undo("wf-1", "build"), TaskKind::Undo),
            (TaskId::approval("wf-1", "build"), TaskKind::Approval),
        ] {
            let text = id.to_string();
            let back = TaskId::parse(&text).unwrap();
            assert_eq!(back, id, "{text}");
            assert_eq!(back.kind(), kind);
            assert_eq!(back.workflow(), "wf-1");
            assert_eq!(back.stage(), "build");
            assert_eq!(TaskId::workflow_of(&text), Some("wf-1"));
        }
        assert_eq!(TaskId::run("w", "s", 1).to_string(), "w:s:1");
        assert_eq!(TaskId::undo("w", "s").to_string(), "w:s:undo");
        assert_eq!(TaskId::undo("w", "s").stage_label(), "s.undo");
        assert_eq!(TaskId::run("w", "s", 2).stage_label(), "s");
    }

    #[test]
    fn other_ids_are_not_workflow_tasks() {
        for id in [
            "standalone",
            "a:b",
            "w:s:0",
            "w:s:x",
            ":s:1",
            "w::1",
            "w:s:",
        ] {
            assert_eq!(TaskId::parse(id), None, "{id}");
        }
        assert_eq!(TaskId::workflow_of("standalone"), None);
    }
}
