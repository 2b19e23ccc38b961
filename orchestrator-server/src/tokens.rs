//! API tokens: who may call the API and with which [`Role`].
//!
//! A tokens file holds one entry per line, `name role sha256hex` (`#`
//! starts a comment): the SHA-256 of the token, never the token. Tokens are
//! 256 random bits from the operating system ([`generate`]), so a plain
//! SHA-256 is the right hash: a slow password hash only guards guessable
//! secrets, and nobody can search a 2^256 space. A token is found by
//! hashing what the request carries and comparing that hash with every
//! entry in constant time ([`Tokens::find`]): equal-length digests, no early
//! exit, so neither the timing nor the length of a token leaks.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::io::Write as _;
use std::path::Path;
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// What a token may do; each role can do everything the ones before it can.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads and event streams.
    Viewer,
    /// Workflow actions (start, cancel, abort, approve, reject, replay) and
    /// dead-letter replay and purge.
    Operator,
    /// Definitions, raw tasks to an agent type, everything.
    Admin,
}

impl Role {
    /// Its name in files and answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Self::Viewer),
            "operator" => Some(Self::Operator),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a request is: the name and role of the token it carried.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Caller {
    /// The token's name (recorded in the audit trail).
    pub name: String,
    /// What it may do.
    pub role: Role,
}

#[derive(Debug, Clone)]
struct Entry {
    caller: Caller,
    hash: [u8; 32],
}

/// The tokens the server accepts.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    entries: Vec<Entry>,
}

/// SHA-256 of a token.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A token name: 1–64 of `A-Z a-z 0-9 . _ -` (it goes into log lines and
/// the audit trail as is).
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "token name {name:?}: use 1 to 64 of A-Z a-z 0-9 . _ -"
        )))
    }
}

/// Shortest token accepted from `AGENTIC_API_TOKEN` / `--api-token-file`.
pub const MIN_TOKEN_LEN: usize = 16;

/// A fresh token: `agt_` and 64 hex digits (256 bits from the OS).
pub fn generate() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::Config(format!("no randomness for a token: {e}")))?;
    Ok(format!("agt_{}", hex(&bytes)))
}

impl Tokens {
    /// Parses a tokens file's text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Self> {
        let mut t = Self::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |why: &str| Error::Config(format!("{source}:{}: {why}", n + 1));
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, role, digest] = fields[..] else {
                return Err(bad("expected `name role sha256hex`"));
            };
            validate_name(name).map_err(|e| bad(&e.to_string()))?;
            let role =
                Role::parse(role).ok_or_else(|| bad("role must be viewer, operator or admin"))?;
            let hash =
                unhex(digest).ok_or_else(|| bad("the hash must be 64 hex digits (SHA-256)"))?;
            t.push(name, role, hash).map_err(|e| bad(&e.to_string()))?;
        }
        Ok(t)
    }

    /// Reads a tokens file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("--tokens-file {}: {e}", path.display())))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Adds a plain token (from the environment, a token file, or one just
    /// generated) under `name`.
    pub fn add(&mut self, name: &str, role: Role, token: &str) -> Result<()> {
        if token.len() < MIN_TOKEN_LEN {
            return Err(Error::Config(format!(
                "the token {name:?} must be at least {MIN_TOKEN_LEN} characters"
            )));
        }
        self.push(name, role, hash(token))
    }

    fn push(&mut self, name: &str, role: Role, hash: [u8; 32]) -> Result<()> {
        if self.entries.iter().any(|e| e.caller.name == name) {
            return Err(Error::Config(format!("token name {name:?} is used twice")));
        }
        self.entries.push(Entry {
            caller: Caller {
                name: name.to_owned(),
                role,
            },
            hash,
        });
        Ok(())
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The caller whose token is `token`. Every entry is compared, in
    /// constant time, whatever matches.
    pub fn find(&self, token: &str) -> Option<&Caller> {
        let given = hash(token);
        let mut found = subtle::Choice::from(0);
        let mut at = 0u32;
        for (i, e) in self.entries.iter().enumerate() {
            let eq = e.hash.ct_eq(&given);
            at = u32::conditional_select(&at, &(i as u32), eq);
            found |= eq;
        }
        if bool::from(found) {
            self.entries.get(at as usize).map(|e| &e.caller)
        } else {
            None
        }
    }
}

/// Writes `contents` to the file at `path`, readable by its owner only
/// (0600), atomically: a new file beside it, then renamed over it. A
/// reader never sees half a token, and a link planted at the path is
/// replaced, never followed.
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    // A leftover of a crashed process that had the same pid.
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut f = private_options().create_new(true).open(&tmp)?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn private_options() -> std::fs::OpenOptions {
    let mut o = std::fs::OpenOptions::new();
    o.write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    o
}

/// Appends the entry of `token` (its hash) to the tokens file at `path`,
/// created 0600 when missing; refuses a name already in it.
pub fn append_entry(path: &Path, name: &str, role: Role, token: &str) -> Result<()> {
    validate_name(name)?;
    let cfg = |e: std::io::Error| Error::Config(format!("{}: {e}", path.display()));
    let existing = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(cfg(e)),
    };
    let mut tokens = Tokens::parse(&existing, &path.display().to_string())?;
    tokens.add(name, role, token)?;
    let mut f = private_options()
        .create(true)
        .append(true)
        .open(path)
        .map_err(cfg)?;
    let sep = if existing.is_empty() || existing.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    writeln!(f, "{sep}{name} {role} {}", hex(&hash(token))).map_err(cfg)?;
    f.sync_all().map_err(cfg)
}

/// Where the tokens come from (see `orchestrator serve --help`).
#[derive(Debug, Clone, Default)]
pub struct Sources<'a> {
    /// `--tokens-file`.
    pub tokens_file: Option<&'a Path>,
    /// `--api-token-file`: one admin token named `default`.
    pub api_token_file: Option<&'a Path>,
    /// `AGENTIC_API_TOKEN`: one admin token named `default`.
    pub env_token: Option<String>,
    /// Where a generated token goes (`--token-out`), else [`default_token_out`].
    pub token_out: Option<&'a Path>,
}

/// The tokens of `sources`; when they name none, a generated admin token
/// named `generated`, written to a private file whose path is returned
/// (the caller logs the path, never the token).
pub fn resolve(sources: &Sources<'_>, port: u16) -> Result<(Tokens, Option<std::path::PathBuf>)> {
    let mut tokens = match sources.tokens_file {
        Some(p) => Tokens::load(p)?,
        None => Tokens::default(),
    };
    let from_file = match sources.api_token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| Error::Config(format!("--api-token-file {}: {e}", p.display())))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    if from_file.is_some() && sources.env_token.is_some() {
        return Err(Error::Config(
            "give the admin token either in AGENTIC_API_TOKEN or in --api-token-file, not both"
                .into(),
        ));
    }
    if let Some(t) = from_file.or_else(|| sources.env_token.clone()) {
        tokens.add("default", Role::Admin, t.trim())?;
    }
    if !tokens.is_empty() {
        return Ok((tokens, None));
    }
    if let Some(p) = sources.tokens_file {
        // Configured but empty: generating a token here would hide the
        // mistake behind a token nobody expects.
        return Err(Error::Config(format!(
            "--tokens-file {} holds no token: add one with `orchestrator token new`",
            p.display()
        )));
    }
    let path = match sources.token_out {
        Some(p) => p.to_path_buf(),
        None => default_token_out(port),
    };
    let token = generate()?;
    write_private(&path, &format!("{token}\n"))
        .map_err(|e| Error::Config(format!("--token-out {}: {e}", path.display())))?;
    tokens.add("generated", Role::Admin, &token)?;
    Ok((tokens, Some(path)))
}

/// Where a generated token goes by default: a per-user directory that
/// other users cannot list (`$XDG_RUNTIME_DIR`, else the state directory),
/// else the working directory; one file per port, so several servers on a
/// machine keep theirs apart.
pub fn default_token_out(port: u16) -> std::path::PathBuf {
    let file = format!("orchestrator-{port}.token");
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(d) = var("XDG_RUNTIME_DIR") {
        return Path::new(&d).join("agentic").join(file);
    }
    if let Some(d) = var("XDG_STATE_HOME") {
        return Path::new(&d).join("agentic").join(file);
    }
    if let Some(h) = var("HOME") {
        return Path::new(&h).join(".local/state/agentic").join(file);
    }
    std::path::PathBuf::from(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_of_hashed_entries_finds_its_callers() {
        let text = format!(
            "# comment\n\nops operator {}\nro viewer {} # trailing\n",
            hex(&hash("operator-token-0123456789")),
            hex(&hash("viewer-token-0123456789"))
        );
        let t = Tokens::parse(&text, "f").unwrap();
        assert_eq!(t.len(), 2);
        let c = t.find("operator-token-0123456789").unwrap();
        assert_eq!((c.name.as_str(), c.role), ("ops", Role::Operator));
        assert_eq!(
            t.find("viewer-token-0123456789").unwrap().role,
            Role::Viewer
        );
        assert!(t.find("operator-token-012345678").is_none());
        assert!(t.find("").is_none());
    }

    #[test]
    fn bad_lines_name_their_line() {
        let h = hex(&hash("x"));
        for (text, why) in [
            ("a admin".to_string(), "expected"),
            (format!("a root {h}"), "role"),
            ("a admin abc".to_string(), "64 hex"),
            (format!("bad/name admin {h}"), "token name"),
            (format!("a admin {h}\na viewer {h}"), "twice"),
        ] {
            let e = Tokens::parse(&text, "tokens").unwrap_err().to_string();
            assert!(e.contains("tokens:") && e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn with_no_token_configured_one_is_generated_into_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("sub/token");
        let sources = Sources {
            token_out: Some(&out),
            ..Sources::default()
        };
        let (tokens, path) = resolve(&sources, 8080).unwrap();
        assert_eq!(path.as_deref(), Some(out.as_path()));
        let token = std::fs::read_to_string(&out).unwrap();
        let c = tokens.find(token.trim()).unwrap();
        assert_eq!((c.name.as_str(), c.role), ("generated", Role::Admin));
        let sources = Sources {
            env_token: Some("an-admin-token-0123456789".into()),
            token_out: Some(&out),
            ..Sources::default()
        };
        let (tokens, path) = resolve(&sources, 8080).unwrap();
        assert!(path.is_none());
        assert_eq!(
            tokens.find("an-admin-token-0123456789").unwrap().name,
            "default"
        );
        let short = Sources {
            env_token: Some("short".into()),
            ..Sources::default()
        };
        assert!(resolve(&short, 1).unwrap_err().to_string().contains("16"));
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "# nobody yet\n").unwrap();
        let sources = Sources {
            tokens_file: Some(&empty),
            token_out: Some(&out),
            ..Sources::default()
        };
        let e = resolve(&sources, 1).unwrap_err().to_string();
        assert!(e.contains("holds no token"), "{e}");
    }

    #[test]
    fn generated_tokens_are_long_and_distinct() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 64);
    }

    #[test]
    fn appended_entries_are_private_and_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        append_entry(&path, "one", Role::Admin, "token-number-one-0123").unwrap();
        append_entry(&path, "two", Role::Viewer, "token-number-two-0123").unwrap();
        let e = append_entry(&path, "two", Role::Viewer, "token-number-3-0123").unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("token-number"), "{text}");
        let t = Tokens::load(&path).unwrap();
        assert_eq!(t.find("token-number-two-0123").unwrap().name, "two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
