//! `orchestrator check FILE [--agent-types]`: a definition file checked
//! offline (parse, validate, plan) and, with `--agent-types`, against Redis
//! for agent types never seen there (the warning `POST /definitions` gives).

use crate::error::Result;
use agent_sdk::RedisArgs;
use orchestrator::Definition;
use orchestrator::ops::stuck::{self, DefinitionWarning};
use std::time::Duration;

/// The agent-type warnings of `def` in the namespace of `redis`.
pub async fn agent_type_warnings(
    redis: &RedisArgs,
    def: &Definition,
) -> Result<Vec<DefinitionWarning>> {
    redis.validate()?;
    let keys = redis.keys()?;
    let mut conn = redis.connector()?.connect(Duration::from_secs(5)).await?;
    Ok(stuck::definition_warnings(&mut conn, &keys, def, &[]).await?)
}
