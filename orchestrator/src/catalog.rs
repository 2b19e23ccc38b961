//! Registered workflow definitions, versioned in Redis (`N:def:{<name>}`).
//!
//! Registering a definition stores it as the next version unless it equals
//! the latest; a workflow records the version it started with and is always
//! driven by that version, whatever is registered later. Versions never
//! change once stored, so each is cached in memory after its first read.

use crate::definition::Definition;
use crate::error::Error;
use crate::scripts;
use agent_sdk::schemas::Keys;
use redis::aio::ConnectionLike;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

type Result<T, E = Error> = std::result::Result<T, E>;

/// Definitions by (name, version).
type Cache = HashMap<(String, u32), Arc<Definition>>;

/// See the module docs.
#[derive(Debug, Clone)]
pub struct Catalog {
    keys: Keys,
    cache: Arc<RwLock<Cache>>,
}

/// A definition's canonical stored form: JSON with the version left out.
fn canonical(def: &Definition) -> Result<String> {
    let mut d = def.clone();
    d.version = 0;
    serde_json::to_string(&d).map_err(|e| Error::Invalid(e.to_string()))
}

impl Catalog {
    /// A catalog of `keys`' namespace.
    pub fn new(keys: Keys) -> Self {
        Self {
            keys,
            cache: Arc::default(),
        }
    }

    /// Validates and registers `def`; returns it with its version and
    /// whether that version is new.
    pub async fn register<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        def: &Definition,
    ) -> Result<(Arc<Definition>, bool)> {
        def.validate()?;
        let text = canonical(def)?;
        let (version, created): (u32, i64) = scripts::REGISTER_DEFINITION
            .key(self.keys.definition(&def.name)?)
            .arg(&text)
            .invoke_async(conn)
            .await?;
        let _: i64 = redis::cmd("SADD")
            .arg(self.keys.definitions())
            .arg(&def.name)
            .query_async(conn)
            .await?;
        let stored = Arc::new(Definition {
            version,
            ..def.clone()
        });
        self.remember(stored.clone());
        Ok((stored, created == 1))
    }

    fn remember(&self, def: Arc<Definition>) {
        if let Ok(mut c) = self.cache.write() {
            c.insert((def.name.clone(), def.version), def);
        }
    }

    /// Version `version` of `name` (the latest when `None`).
    pub async fn get<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        name: &str,
        version: Option<u32>,
    ) -> Result<Arc<Definition>> {
        if let Some(v) = version
            && let Ok(c) = self.cache.read()
            && let Some(d) = c.get(&(name.to_owned(), v))
        {
            return Ok(d.clone());
        }
        let not_found = || Error::NotFound {
            what: "definition",
            id: match version {
                Some(v) => format!("{name} v{v}"),
                None => name.to_owned(),
            },
        };
        let key = self
            .keys
            .definition(name)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let version = match version {
            Some(v) => v,
            None => {
                let latest: Option<u32> = redis::cmd("HGET")
                    .arg(&key)
                    .arg("latest")
                    .query_async(conn)
                    .await?;
                let v = latest.ok_or_else(not_found)?;
                if let Ok(c) = self.cache.read()
                    && let Some(d) = c.get(&(name.to_owned(), v))
                {
                    return Ok(d.clone());
                }
                v
            }
        };
        let text: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg(version)
            .query_async(conn)
            .await?;
        let text = text.ok_or_else(not_found)?;
        let mut def: Definition = serde_json::from_str(&text).map_err(|e| Error::Corrupt {
            what: "definition",
            id: format!("{name} v{version}"),
            why: e.to_string(),
        })?;
        def.version = version;
        let def = Arc::new(def);
        self.remember(def.clone());
        Ok(def)
    }

    /// Names of every registered definition, sorted.
    pub async fn names<C: ConnectionLike + Send>(&self, conn: &mut C) -> Result<Vec<String>> {
        let mut names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.definitions())
            .query_async(conn)
            .await?;
        names.sort();
        Ok(names)
    }

    /// The latest version of every registered definition.
    pub async fn latest_all<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
    ) -> Result<Vec<Arc<Definition>>> {
        let mut out = Vec::new();
        for name in self.names(conn).await? {
            match self.get(conn, &name, None).await {
                Ok(d) => out.push(d),
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}
