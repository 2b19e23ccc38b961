//! [`RedisArgs`]: where Redis is and which namespace to use, the flags every
//! binary of the project shares (agents, `orchestrator serve`, `agentctl`,
//! the examples), declared once.
//!
//! The URL carries the password, so it can come from three places: the
//! `--redis-url` flag, the `AGENTIC_REDIS_URL` environment variable, or a
//! file (`--redis-url-file` / `AGENTIC_REDIS_URL_FILE`). A flag is visible to
//! every user of the host in the process list (`ps`, `/proc/<pid>/cmdline`),
//! so a password given there still works but is warned about; the file is
//! the form to prefer (the environment is inherited by every command an
//! agent starts). Giving both a URL and a file is refused: which one wins
//! would be a guess.
//!
//! Parsing never fails on these (clap would exit 2 and could echo values):
//! a problem is kept and reported by [`RedisArgs::validate`] as a
//! configuration error (exit 64), naming the flag, never the password.

use crate::connection::{Connector, parse_url, redact_url};
use crate::{Error, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Command, FromArgMatches};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The URL when none is given.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// A URL file larger than this is not a URL file (a wrong path, `/dev/zero`).
const MAX_URL_FILE: u64 = 64 * 1024;

const URL_ID: &str = "redis_url";
const FILE_ID: &str = "redis_url_file";

/// The URL flags as clap parses them; [`RedisUrlArgs`] and [`RedisArgs`]
/// resolve them.
#[derive(Args)]
struct UrlFlags {
    /// Redis URL (`redis://[[user]:password@]host:port[/db]`, `rediss://` for
    /// TLS, `unix:///path/redis.sock?pass=password`). Default
    /// redis://127.0.0.1:6379. A password given here is visible to every user
    /// of the host in the process list: prefer --redis-url-file or
    /// AGENTIC_REDIS_URL.
    #[arg(
        id = URL_ID,
        long = "redis-url",
        value_name = "URL",
        global = true,
        env = "AGENTIC_REDIS_URL",
        // `--help` must not print a password taken from the environment.
        hide_env_values = true
    )]
    url: Option<String>,

    /// File holding the whole Redis URL (not the password alone), on one
    /// line; a trailing newline is ignored. Keep it readable by this
    /// process's user only. Cannot be combined with --redis-url /
    /// AGENTIC_REDIS_URL.
    #[arg(
        id = FILE_ID,
        long = "redis-url-file",
        value_name = "PATH",
        global = true,
        env = "AGENTIC_REDIS_URL_FILE"
    )]
    url_file: Option<PathBuf>,
}

/// [`UrlFlags`] and the namespace.
#[derive(Args)]
struct RedisFlags {
    #[command(flatten)]
    url: UrlFlags,

    /// Namespace prefixed to every key, so deployments can share one Redis.
    #[arg(long, global = true, env = "AGENTIC_NAMESPACE", default_value = schemas::DEFAULT_NAMESPACE)]
    namespace: String,
}

/// Where the URL came from, and what made its sources unusable: named in
/// errors and in the argv warning.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Source {
    origin: Origin,
    /// Reported by `check`; the URL is then empty, so nothing connects.
    problem: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    Default,
    Flag,
    Env,
    File {
        path: PathBuf,
        from_env: bool,
    },
    /// Built in code ([`RedisArgs::new`]).
    Given,
}

impl Origin {
    fn describe(&self) -> String {
        match self {
            Origin::Default => "the default Redis URL".into(),
            Origin::Flag => "--redis-url".into(),
            Origin::Env => "AGENTIC_REDIS_URL".into(),
            Origin::File { path, from_env } => format!(
                "{} {}",
                if *from_env {
                    "AGENTIC_REDIS_URL_FILE"
                } else {
                    "--redis-url-file"
                },
                path.display()
            ),
            Origin::Given => "the Redis URL".into(),
        }
    }
}

/// Set once the argv warning has been logged: several parts of a process
/// validate the same settings.
static WARNED_ARGV: AtomicBool = AtomicBool::new(false);

impl Source {
    fn ok(origin: Origin) -> Self {
        Self {
            origin,
            problem: None,
        }
    }

    /// The URL of `flags` and where it came from.
    fn resolve(
        flags: UrlFlags,
        url_source: Option<ValueSource>,
        file_source: Option<ValueSource>,
    ) -> (String, Self) {
        let env = |s: Option<ValueSource>| s == Some(ValueSource::EnvVariable);
        let url_origin = if env(url_source) {
            Origin::Env
        } else {
            Origin::Flag
        };
        match (flags.url, flags.url_file) {
            (Some(_), Some(path)) => {
                let file = Origin::File {
                    path,
                    from_env: env(file_source),
                };
                let problem = format!(
                    "the Redis URL is given twice, by {} and by {}: give one of them",
                    url_origin.describe(),
                    file.describe()
                );
                (
                    String::new(),
                    Self {
                        origin: url_origin,
                        problem: Some(problem),
                    },
                )
            }
            (None, Some(path)) => Self::file(path, env(file_source)),
            (Some(url), None) => (url, Self::ok(url_origin)),
            (None, None) => (DEFAULT_REDIS_URL.into(), Self::ok(Origin::Default)),
        }
    }

    fn file(path: PathBuf, from_env: bool) -> (String, Self) {
        let (url, problem) = match read_url_file(&path) {
            Ok(url) => (url, None),
            Err(m) => (String::new(), Some(m)),
        };
        let origin = Origin::File { path, from_env };
        (url, Self { origin, problem })
    }

    fn from_matches(matches: &ArgMatches) -> std::result::Result<(String, Self), clap::Error> {
        Ok(Self::resolve(
            UrlFlags::from_arg_matches(matches)?,
            matches.value_source(URL_ID),
            matches.value_source(FILE_ID),
        ))
    }

    /// Unusable sources, then a URL redis-rs refuses; logs (once) the argv
    /// warning.
    fn check(&self, url: &str) -> Result<()> {
        if let Some(p) = &self.problem {
            return Err(Error::Config(p.clone()));
        }
        parse_url(url).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("{}: {m}", self.origin.describe())),
            other => other,
        })?;
        if let Some(w) = self.argv_warning(url)
            && !WARNED_ARGV.swap(true, Ordering::Relaxed)
        {
            tracing::warn!("{w}");
        }
        Ok(())
    }

    fn argv_warning(&self, url: &str) -> Option<String> {
        (self.origin == Origin::Flag && redact_url(url) != url).then(|| {
            "the Redis URL given with --redis-url holds a password, which every user of this \
             host can read in the process list; give it with --redis-url-file or \
             AGENTIC_REDIS_URL instead"
                .to_owned()
        })
    }

    fn connector(&self, url: &str) -> Result<Connector> {
        if let Some(p) = &self.problem {
            return Err(Error::Config(p.clone()));
        }
        Connector::new(url)
    }
}

/// The Redis URL alone (`--redis-url`, `AGENTIC_REDIS_URL`,
/// `--redis-url-file`, `AGENTIC_REDIS_URL_FILE`), for programs with
/// namespace flags of their own (the benchmarks); see the module docs.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrlArgs {
    /// The URL (empty when its sources were unusable; see `validate`).
    pub url: String,
    source: Source,
}

impl std::fmt::Debug for RedisUrlArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisUrlArgs")
            .field("url", &redact_url(&self.url))
            .field("origin", &self.source.origin.describe())
            .finish()
    }
}

impl Args for RedisUrlArgs {
    fn augment_args(cmd: Command) -> Command {
        UrlFlags::augment_args(cmd)
    }
    fn augment_args_for_update(cmd: Command) -> Command {
        UrlFlags::augment_args_for_update(cmd)
    }
}

impl FromArgMatches for RedisUrlArgs {
    fn from_arg_matches(matches: &ArgMatches) -> std::result::Result<Self, clap::Error> {
        let (url, source) = Source::from_matches(matches)?;
        Ok(Self { url, source })
    }

    fn update_from_arg_matches(
        &mut self,
        matches: &ArgMatches,
    ) -> std::result::Result<(), clap::Error> {
        // The URL is resolved from all its sources at once.
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl RedisUrlArgs {
    /// See [`RedisArgs::validate`] (without the namespace).
    pub fn validate(&self) -> Result<()> {
        self.source.check(&self.url)
    }

    /// See [`RedisArgs::argv_warning`].
    pub fn argv_warning(&self) -> Option<String> {
        self.source.argv_warning(&self.url)
    }

    /// The URL with any password replaced by `***`, for logs.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

/// Where Redis is and which namespace to use; see the module docs.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisArgs {
    /// The URL, from whichever source gave it (empty when the sources were
    /// unusable: nothing connects before [`RedisArgs::validate`] says why).
    pub url: String,
    /// Namespace prefixed to every key.
    pub namespace: String,
    source: Source,
}

impl std::fmt::Debug for RedisArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisArgs")
            .field("url", &redact_url(&self.url))
            .field("origin", &self.source.origin.describe())
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl Default for RedisArgs {
    fn default() -> Self {
        Self {
            url: DEFAULT_REDIS_URL.into(),
            namespace: schemas::DEFAULT_NAMESPACE.into(),
            source: Source::ok(Origin::Default),
        }
    }
}

impl Args for RedisArgs {
    fn augment_args(cmd: Command) -> Command {
        RedisFlags::augment_args(cmd)
    }
    fn augment_args_for_update(cmd: Command) -> Command {
        RedisFlags::augment_args_for_update(cmd)
    }
}

impl FromArgMatches for RedisArgs {
    fn from_arg_matches(matches: &ArgMatches) -> std::result::Result<Self, clap::Error> {
        let RedisFlags { namespace, .. } = RedisFlags::from_arg_matches(matches)?;
        let (url, source) = Source::from_matches(matches)?;
        Ok(Self {
            url,
            namespace,
            source,
        })
    }

    fn update_from_arg_matches(
        &mut self,
        matches: &ArgMatches,
    ) -> std::result::Result<(), clap::Error> {
        // The URL is resolved from all its sources at once.
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl RedisArgs {
    /// `url` and `namespace`, given in code.
    pub fn new(url: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            namespace: namespace.into(),
            source: Source::ok(Origin::Given),
        }
    }

    /// The URL read from `path` (see `--redis-url-file`); a bad file is
    /// reported by [`RedisArgs::validate`].
    pub fn from_file(path: impl Into<PathBuf>, namespace: impl Into<String>) -> Self {
        let (url, source) = Source::file(path.into(), false);
        Self {
            url,
            namespace: namespace.into(),
            source,
        }
    }

    /// Rejects unusable URL sources, a URL of another scheme and a bad
    /// namespace, naming the flag and never printing a password. Logs (once)
    /// a warning when a password was given on the command line.
    pub fn validate(&self) -> Result<()> {
        if let Some(p) = &self.source.problem {
            return Err(Error::Config(p.clone()));
        }
        schemas::Namespace::new(self.namespace.clone())?;
        self.source.check(&self.url)
    }

    /// The warning for a password given on the command line, if one was.
    pub fn argv_warning(&self) -> Option<String> {
        self.source.argv_warning(&self.url)
    }

    /// The key names of the namespace.
    pub fn keys(&self) -> Result<schemas::Keys> {
        Ok(schemas::Keys::new(schemas::Namespace::new(
            self.namespace.clone(),
        )?))
    }

    /// A connector to the URL.
    pub fn connector(&self) -> Result<Connector> {
        self.source.connector(&self.url)
    }

    /// The URL with any password replaced by `***`, for logs.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

/// `P::parse()`, with every Redis URL in clap's error message redacted:
/// clap echoes the arguments it does not expect, and a URL given without its
/// flag (`agentctl redis://:pw@h agents`) would be printed with its password.
/// Help and version go out as clap writes them; errors exit with clap's code.
pub fn parse_cli<P: clap::Parser>() -> P {
    match P::try_parse() {
        Ok(p) => p,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            eprint!("{}", redact_text(&e.render().to_string()));
            std::process::exit(e.exit_code())
        }
    }
}

/// `text` with [`redact_url`] applied to each word that could hold a
/// password (a scheme, an '@' or a `pass` parameter).
fn redact_text(text: &str) -> String {
    text.split_inclusive(char::is_whitespace)
        .map(|piece| {
            let word = piece.trim_end_matches(char::is_whitespace);
            let lower = word.to_ascii_lowercase();
            if word.contains("://") || word.contains('@') || lower.contains("pass") {
                format!("{}{}", redact_url(word), &piece[word.len()..])
            } else {
                piece.to_owned()
            }
        })
        .collect()
}

/// The URL in `path`: one line, a trailing newline ignored. Errors name the
/// file, never its content.
fn read_url_file(path: &Path) -> std::result::Result<String, String> {
    let name = path.display();
    let file = std::fs::File::open(path)
        .map_err(|e| format!("--redis-url-file {name}: cannot open: {e}"))?;
    let mut text = String::new();
    file.take(MAX_URL_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("--redis-url-file {name}: cannot read it as text: {e}"))?;
    if text.len() as u64 > MAX_URL_FILE {
        return Err(format!(
            "--redis-url-file {name}: larger than {MAX_URL_FILE} bytes; it must hold one URL"
        ));
    }
    let url = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if url.is_empty() {
        return Err(format!("--redis-url-file {name}: the file is empty"));
    }
    if url.contains(['\n', '\r']) {
        return Err(format!(
            "--redis-url-file {name}: more than one line; it must hold the URL alone"
        ));
    }
    Ok(url.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::io::Write;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        redis: RedisArgs,
    }

    fn parse(args: &[&str]) -> RedisArgs {
        Cli::try_parse_from(std::iter::once("bin").chain(args.iter().copied()))
            .unwrap()
            .redis
    }

    fn url_file(content: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content.as_bytes()).unwrap();
        f
    }

    #[test]
    fn from_the_flag() {
        let a = parse(&["--redis-url", "redis://h:1/2"]);
        assert_eq!(a.url, "redis://h:1/2");
        a.validate().unwrap();
        assert_eq!(a.argv_warning(), None, "no password, no warning");
    }

    #[test]
    fn from_a_file_with_its_newline_trimmed() {
        for ending in ["\n", "\r\n", ""] {
            let f = url_file(&format!("redis://:s3cret@h:1/0{ending}"));
            let a = parse(&["--redis-url-file", f.path().to_str().unwrap()]);
            assert_eq!(a.url, "redis://:s3cret@h:1/0");
            a.validate().unwrap();
            assert_eq!(a.argv_warning(), None);
            let shown = format!("{a:?}");
            assert!(
                !shown.contains("s3cret") && shown.contains("--redis-url-file"),
                "{shown}"
            );
        }
    }

    #[test]
    fn bad_files_are_configuration_errors_naming_the_file_not_the_content() {
        let two = url_file("redis://:s3cret@h\nredis://:s3cret@g\n");
        let empty = url_file("\n");
        let bad = url_file("redis://:s3cret@h:notaport\n");
        for (path, want) in [
            (two.path().to_str().unwrap(), "more than one line"),
            (empty.path().to_str().unwrap(), "empty"),
            ("/nonexistent/redis.url", "cannot open"),
            (bad.path().to_str().unwrap(), "bad redis URL"),
        ] {
            let a = parse(&["--redis-url-file", path]);
            let e = a.validate().unwrap_err();
            assert!(matches!(e, Error::Config(_)), "{e:?}");
            let m = e.to_string();
            assert!(m.contains("--redis-url-file") && m.contains(path), "{m}");
            assert!(m.contains(want), "{m}");
            assert!(!m.contains("s3cret"), "{m}");
            assert!(
                a.connector().is_err(),
                "an unusable file must not connect anywhere"
            );
        }
    }

    #[test]
    fn a_url_and_a_file_together_are_refused() {
        let f = url_file("redis://h:1\n");
        let path = f.path().to_str().unwrap();
        let a = parse(&[
            "--redis-url",
            "redis://:s3cret@h:2",
            "--redis-url-file",
            path,
        ]);
        let m = a.validate().unwrap_err().to_string();
        assert!(
            m.contains("--redis-url ") || m.contains("--redis-url,"),
            "{m}"
        );
        assert!(
            m.contains("--redis-url-file") && m.contains("given twice"),
            "{m}"
        );
        assert!(!m.contains("s3cret"), "{m}");
        assert!(a.url.is_empty(), "neither source is used");
        assert!(a.connector().is_err());
    }

    #[test]
    fn a_password_on_the_command_line_works_but_is_warned_about() {
        let a = parse(&["--redis-url", "redis://:s3cret@h:1"]);
        a.validate().unwrap();
        let w = a.argv_warning().expect("a warning");
        assert!(w.contains("--redis-url") && !w.contains("s3cret"), "{w}");
        assert!(!format!("{a:?}").contains("s3cret"));
        // The unix-socket form counts too.
        let a = parse(&["--redis-url", "unix:///s.sock?pass=s3cret"]);
        assert!(a.argv_warning().is_some());
    }

    #[test]
    fn the_default_and_code_built_urls_are_not_warned_about() {
        assert_eq!(parse(&[]), RedisArgs::default());
        assert_eq!(parse(&[]).url, DEFAULT_REDIS_URL);
        assert_eq!(RedisArgs::new("redis://:pw@h", "ns").argv_warning(), None);
    }

    #[test]
    fn the_url_alone_beside_a_namespace_flag_of_its_own() {
        #[derive(Parser, Debug)]
        struct Bench {
            #[command(flatten)]
            redis: RedisUrlArgs,
            #[arg(long, default_value = "bench")]
            namespace: String,
        }
        let f = url_file("redis://:s3cret@h:1\n");
        let b = Bench::try_parse_from(["bench", "--redis-url-file", f.path().to_str().unwrap()])
            .unwrap();
        assert_eq!(
            (b.redis.url.as_str(), b.namespace.as_str()),
            ("redis://:s3cret@h:1", "bench")
        );
        b.redis.validate().unwrap();
        assert!(!format!("{b:?}").contains("s3cret"));
        let b =
            Bench::try_parse_from(["bench", "--redis-url", "x", "--redis-url-file", "y"]).unwrap();
        assert!(
            b.redis
                .validate()
                .unwrap_err()
                .to_string()
                .contains("given twice")
        );
    }

    #[test]
    fn clap_errors_that_echo_a_stray_url_are_redacted() {
        for stray in [
            "redis://:s3cret@h:1",
            "unix:///s.sock?pass=s3cret",
            "--redis-url=redis://:s3cret@h",
        ] {
            let e = Cli::try_parse_from(["bin", stray, "--bogus"]).unwrap_err();
            let raw = e.render().to_string();
            let shown = redact_text(&raw);
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(shown.contains("error:"), "{shown}");
        }
        // Proof that clap echoes it, else the test above proves nothing.
        let e = Cli::try_parse_from(["bin", "redis://:s3cret@h:1"]).unwrap_err();
        assert!(e.render().to_string().contains("s3cret"));
        assert_eq!(redact_text("a  plain\nline "), "a  plain\nline ");
    }

    #[test]
    fn scheme_errors_name_the_source_without_the_password() {
        let m = parse(&["--redis-url", "http://:hunter2@h"])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(m.contains("--redis-url") && !m.contains("hunter2"), "{m}");
    }
}
