//! Artifacts: directory trees passed between agents through Redis, so no
//! stage needs a filesystem another one wrote.
//!
//! A tree is packed as a gzip-compressed tar, deterministically (entries in
//! name order, no timestamps, owners or permissions beyond the executable
//! bit), and stored at `N:artifact:<sha256>` — its name is the SHA-256 of its
//! bytes, so the same tree always gets the same reference and storing it
//! twice stores it once. Stored artifacts expire after a TTL.
//!
//! Unpacking treats the archive as hostile: sizes are checked before
//! decompressing and while writing, entries may only be plain files and
//! directories with relative paths that stay inside the target (no absolute
//! paths, no `..`, no links of any kind), and the file count and unpacked
//! size are capped as they grow, so a decompression bomb stops at the limit.
//!
//! Packing and unpacking both hold every path to the name rules of
//! [`schemas::tree_path`]: no component starting with `-` (it could become
//! an option of a program given the name), no `.git` file or directory at
//! any depth, no `.gitmodules`, `.gitattributes` or `.gitconfig`, no git
//! hook, no control character. So no artifact, whoever made it, carries a
//! file that a later stage's `git` or toolchain would take for
//! configuration or an option; the error names the file. [`refused_names`]
//! lists every such file of an archive without writing anything (the
//! validation agent reports them as findings).

use crate::{Error, Result};
use redis::aio::ConnectionManager;
use schemas::Keys;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// Limits of packing, storing and unpacking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArtifactLimits {
    /// Largest compressed artifact stored or read, in bytes.
    pub max_archive_bytes: usize,
    /// Largest total of file sizes in a tree, in bytes.
    pub max_tree_bytes: u64,
    /// Most entries (files and directories) in a tree.
    pub max_entries: usize,
    /// How long a stored artifact lives.
    pub ttl: Duration,
}

impl Default for ArtifactLimits {
    fn default() -> Self {
        Self {
            max_archive_bytes: 16 * 1024 * 1024,
            max_tree_bytes: 64 * 1024 * 1024,
            max_entries: 10_000,
            ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// A stored artifact: its digest (the key's name) and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ArtifactRef {
    /// SHA-256 of the compressed archive, 64 lowercase hex digits.
    pub sha256: String,
    /// Compressed size in bytes.
    pub bytes: u64,
    /// Regular files in the tree.
    pub files: u64,
}

/// What unpacking wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// Regular files written.
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
}

fn invalid(why: impl Into<String>) -> Error {
    Error::Artifact(why.into())
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Files and directories under `root`, relative, in name order.
fn walk(root: &Path, limits: &ArtifactLimits) -> Result<Vec<(PathBuf, bool)>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut children: Vec<_> = std::fs::read_dir(root.join(&rel))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()?;
        children.sort();
        // Reversed onto the stack, so the walk comes out in name order.
        let mut dirs = Vec::new();
        for name in children {
            let path = rel.join(&name);
            schemas::check_tree_path(&path).map_err(|e| invalid(e.to_string()))?;
            let meta = std::fs::symlink_metadata(root.join(&path))?;
            if meta.file_type().is_symlink() {
                return Err(invalid(format!(
                    "{} is a symbolic link: artifacts hold files and directories only",
                    path.display()
                )));
            }
            if meta.is_dir() {
                out.push((path.clone(), true));
                dirs.push(path);
            } else if meta.is_file() {
                out.push((path, false));
            } else {
                return Err(invalid(format!(
                    "{} is neither a file nor a directory",
                    path.display()
                )));
            }
            if out.len() > limits.max_entries {
                return Err(invalid(format!(
                    "more than {} entries under {}",
                    limits.max_entries,
                    root.display()
                )));
            }
        }
        stack.extend(dirs.into_iter().rev());
    }
    out.sort();
    Ok(out)
}

/// Packs the tree under `root` into a deterministic `.tar.gz`: the same
/// files give the same bytes, wherever and whenever they are packed.
pub fn pack_dir(root: &Path, limits: &ArtifactLimits) -> Result<(Vec<u8>, u64)> {
    let entries = walk(root, limits)?;
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let (mut total, mut files) = (0u64, 0u64);
    for (rel, is_dir) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        if is_dir {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            tar.append_data(&mut header, &rel, std::io::empty())?;
            continue;
        }
        let path = root.join(&rel);
        let meta = std::fs::metadata(&path)?;
        total += meta.len();
        files += 1;
        if total > limits.max_tree_bytes {
            return Err(invalid(format!(
                "the tree under {} is over {} bytes",
                root.display(),
                limits.max_tree_bytes
            )));
        }
        #[cfg(unix)]
        let executable = {
            use std::os::unix::fs::PermissionsExt;
            meta.permissions().mode() & 0o111 != 0
        };
        #[cfg(not(unix))]
        let executable = false;
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(if executable { 0o755 } else { 0o644 });
        header.set_size(meta.len());
        tar.append_data(&mut header, &rel, std::fs::File::open(&path)?)?;
    }
    let bytes = tar.into_inner()?.finish()?;
    if bytes.len() > limits.max_archive_bytes {
        return Err(invalid(format!(
            "the packed tree is {} bytes, over the limit of {}",
            bytes.len(),
            limits.max_archive_bytes
        )));
    }
    Ok((bytes, files))
}

/// Counts what is read through it and fails past `limit` bytes: a
/// decompression bomb stops at the limit instead of filling the disk.
struct Capped<R> {
    inner: R,
    read: u64,
    limit: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            return Err(std::io::Error::other(format!(
                "archive unpacks to more than {} bytes",
                self.limit
            )));
        }
        Ok(n)
    }
}

/// A relative path made only of normal components, or why not.
fn safe_path(path: &Path) -> std::result::Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err(format!("{} climbs out with ..", path.display())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("{} is absolute", path.display()));
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err("an entry has an empty path".into());
    }
    schemas::check_tree_path(&out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// A path of an archive that breaks the name rules, and which rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedName {
    /// The path as the archive names it.
    pub path: String,
    /// Why it is refused.
    pub why: String,
}

/// The tar stream of `archive`, read within `limits` (see [`Capped`]).
fn tar_stream<'a>(
    archive: &'a [u8],
    limits: &ArtifactLimits,
) -> Result<tar::Archive<Capped<flate2::read::GzDecoder<&'a [u8]>>>> {
    if archive.len() > limits.max_archive_bytes {
        return Err(invalid(format!(
            "archive of {} bytes is over the limit of {}",
            archive.len(),
            limits.max_archive_bytes
        )));
    }
    // The tar stream (headers included) may not exceed the tree limit plus
    // room for one header per entry.
    let stream_limit = limits
        .max_tree_bytes
        .saturating_add(1024 * (limits.max_entries as u64 + 2));
    Ok(tar::Archive::new(Capped {
        inner: flate2::read::GzDecoder::new(archive),
        read: 0,
        limit: stream_limit,
    }))
}

/// Every entry of `archive` whose path breaks the name rules of
/// [`schemas::tree_path`], in archive order; nothing is written. Fails as
/// [`unpack_archive`] does on an archive over the limits or not a
/// `.tar.gz`.
pub fn refused_names(archive: &[u8], limits: &ArtifactLimits) -> Result<Vec<RefusedName>> {
    let mut tar = tar_stream(archive, limits)?;
    let (mut out, mut entries) = (Vec::new(), 0usize);
    for entry in tar.entries()? {
        let entry = entry?;
        entries += 1;
        if entries > limits.max_entries {
            return Err(invalid(format!(
                "archive has more than {} entries",
                limits.max_entries
            )));
        }
        let raw = entry.path()?;
        if let Err(schemas::Error::InvalidName { why, .. }) = schemas::check_tree_path(&raw) {
            out.push(RefusedName {
                path: raw.to_string_lossy().into_owned(),
                why: why.to_owned(),
            });
        }
    }
    Ok(out)
}

/// Unpacks a `.tar.gz` into `target`, which must be an empty directory
/// (created if missing). Refuses, before writing anything of the offending
/// entry: absolute paths, `..`, a name the rules of [`schemas::tree_path`]
/// refuse, links, special files, more than
/// `max_entries` entries, more than `max_tree_bytes` written, an archive
/// over `max_archive_bytes`. On an error what was written so far stays in
/// `target`; callers unpack into a directory of their own and drop it.
pub fn unpack_archive(archive: &[u8], target: &Path, limits: &ArtifactLimits) -> Result<Unpacked> {
    let mut tar = tar_stream(archive, limits)?;
    std::fs::create_dir_all(target)?;
    if std::fs::read_dir(target)?.next().is_some() {
        return Err(invalid(format!(
            "unpack target {} is not empty",
            target.display()
        )));
    }
    let (mut files, mut written, mut entries) = (0u64, 0u64, 0usize);
    for entry in tar.entries()? {
        let mut entry = entry?;
        entries += 1;
        if entries > limits.max_entries {
            return Err(invalid(format!(
                "archive has more than {} entries",
                limits.max_entries
            )));
        }
        let raw = entry.path()?.into_owned();
        let rel = safe_path(&raw).map_err(invalid)?;
        let dest = target.join(&rel);
        match entry.header().entry_type() {
            tar::EntryType::Directory => std::fs::create_dir_all(&dest)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.header().size()?;
                if written.saturating_add(size) > limits.max_tree_bytes {
                    return Err(invalid(format!(
                        "archive unpacks to more than {} bytes (at {})",
                        limits.max_tree_bytes,
                        rel.display()
                    )));
                }
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                // create_new: never write through something already there
                // (a link planted by an earlier entry cannot exist — links
                // are refused — but a duplicate name can).
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&dest)
                    .map_err(|e| invalid(format!("{}: {e}", rel.display())))?;
                let n = std::io::copy(&mut (&mut entry).take(size), &mut out)?;
                out.flush()?;
                #[cfg(unix)]
                if entry.header().mode()? & 0o111 != 0 {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))?;
                }
                written += n;
                files += 1;
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                return Err(invalid(format!(
                    "{} is a link: artifacts hold files and directories only",
                    rel.display()
                )));
            }
            // PAX/GNU extension headers are consumed by the tar crate;
            // anything else (devices, fifos) has no place in a project tree.
            other => {
                return Err(invalid(format!(
                    "{} is a {other:?} entry: artifacts hold files and directories only",
                    rel.display()
                )));
            }
        }
    }
    Ok(Unpacked {
        files,
        bytes: written,
    })
}

/// Stores and fetches artifacts in one namespace.
#[derive(Clone)]
pub struct Artifacts {
    conn: ConnectionManager,
    keys: Keys,
    limits: ArtifactLimits,
}

impl std::fmt::Debug for Artifacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Artifacts")
            .field("namespace", self.keys.namespace())
            .field("limits", &self.limits)
            .finish()
    }
}

impl Artifacts {
    pub(crate) fn new(conn: ConnectionManager, keys: Keys) -> Self {
        Self {
            conn,
            keys,
            limits: ArtifactLimits::default(),
        }
    }

    /// The same store with other limits.
    pub fn with_limits(mut self, limits: ArtifactLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The limits in force.
    pub fn limits(&self) -> &ArtifactLimits {
        &self.limits
    }

    /// Packs the tree under `root` and stores it; its reference.
    pub async fn put_dir(&self, root: &Path) -> Result<ArtifactRef> {
        let (root, limits) = (root.to_owned(), self.limits);
        let (bytes, files) = tokio::task::spawn_blocking(move || pack_dir(&root, &limits))
            .await
            .map_err(|e| invalid(format!("packing stopped: {e}")))??;
        let sha256 = self.put_archive(&bytes).await?;
        Ok(ArtifactRef {
            sha256,
            bytes: bytes.len() as u64,
            files,
        })
    }

    /// Stores an already packed archive (not checked beyond its size); its digest.
    pub async fn put_archive(&self, archive: &[u8]) -> Result<String> {
        if archive.len() > self.limits.max_archive_bytes {
            return Err(invalid(format!(
                "archive of {} bytes is over the limit of {}",
                archive.len(),
                self.limits.max_archive_bytes
            )));
        }
        let sha256 = sha256_hex(archive);
        let mut conn = self.conn.clone();
        // Content-addressed: storing it again only renews its TTL.
        let _: () = redis::cmd("SET")
            .arg(self.keys.artifact(&sha256)?)
            .arg(archive)
            .arg("PX")
            .arg(self.limits.ttl.as_millis() as u64)
            .query_async(&mut conn)
            .await?;
        Ok(sha256)
    }

    /// The archive stored as `sha256`, checked against its digest; `None`
    /// when there is none (never stored, or expired).
    pub async fn get(&self, sha256: &str) -> Result<Option<Vec<u8>>> {
        let key = self.keys.artifact(sha256)?;
        let mut conn = self.conn.clone();
        let len: usize = redis::cmd("STRLEN")
            .arg(&key)
            .query_async(&mut conn)
            .await?;
        if len > self.limits.max_archive_bytes {
            return Err(invalid(format!(
                "artifact {sha256} is {len} bytes, over the limit of {}",
                self.limits.max_archive_bytes
            )));
        }
        let bytes: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
        match bytes {
            Some(b) if sha256_hex(&b) != sha256 => Err(invalid(format!(
                "artifact {sha256} does not match its digest"
            ))),
            other => Ok(other),
        }
    }

    /// Fetches `sha256` and unpacks it into `target` (an empty directory);
    /// `None` when there is no such artifact.
    pub async fn unpack(&self, sha256: &str, target: &Path) -> Result<Option<Unpacked>> {
        let Some(bytes) = self.get(sha256).await? else {
            return Ok(None);
        };
        let (target, limits) = (target.to_owned(), self.limits);
        tokio::task::spawn_blocking(move || unpack_archive(&bytes, &target, &limits))
            .await
            .map_err(|e| invalid(format!("unpacking stopped: {e}")))?
            .map(Some)
    }
}
