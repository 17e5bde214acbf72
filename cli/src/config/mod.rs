//! The daemon's configuration: YAML with LiteFS's keys and defaults, plus replite's own
//! (`lease.etcd.*`, `lease.safety-margin`, `replication.*`, `data.retention-size`). Unknown
//! keys and bad values are errors that name the key and the line.

mod duration;
mod expand;
mod sections;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

pub use expand::expand;
pub use sections::*;

/// File names searched, in order, in each search directory.
pub const CONFIG_FILE_NAMES: [&str; 2] = ["replite.yml", "litefs.yml"];

/// Why a configuration could not be loaded.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No file was given and none was found in the search path.
    #[error("config file not found; looked for {}", .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NotFound {
        /// Every path tried.
        searched: Vec<PathBuf>,
    },
    /// The YAML is malformed, has an unknown key, or a bad value.
    #[error("{file}{}: {key}: {message}", .line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        /// The file (or `<config>`).
        file: String,
        /// 1-based line, where the parser knows it.
        line: Option<usize>,
        /// Dotted key path, e.g. `lease.consul.ttl`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// Exit when start-up validation fails (LiteFS default: true).
    pub exit_on_error: bool,
    /// Start the app before the node is primary or in sync with one.
    pub skip_sync: bool,
    /// Verify database checksums strictly at start-up.
    pub strict_verify: bool,
    /// Commands to run: one string, or a list with `cmd` and `if-candidate`.
    pub exec: ExecList,
    /// Where databases and LTX files live, and how long LTX files are kept.
    pub data: DataConfig,
    /// The FUSE mount.
    pub fuse: FuseConfig,
    /// The HTTP API and replication server.
    pub http: HttpConfig,
    /// The write-forwarding HTTP proxy.
    pub proxy: ProxyConfig,
    /// Leases: who is primary.
    pub lease: LeaseConfig,
    /// Continuous backup.
    pub backup: BackupConfig,
    /// Logging.
    pub log: LogConfig,
    /// LiteFS's on-disk trace log (accepted for compatibility).
    pub tracing: TracingConfig,
    /// Replication guarantees (replite's own).
    pub replication: ReplicationConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            exit_on_error: true,
            skip_sync: false,
            strict_verify: false,
            exec: ExecList::default(),
            data: DataConfig::default(),
            fuse: FuseConfig::default(),
            http: HttpConfig::default(),
            proxy: ProxyConfig::default(),
            lease: LeaseConfig::default(),
            backup: BackupConfig::default(),
            log: LogConfig::default(),
            tracing: TracingConfig::default(),
            replication: ReplicationConfig::default(),
        }
    }
}

impl Config {
    /// Parses YAML text (after `${VAR}` expansion with `lookup`); `file` names it in errors.
    pub fn parse(text: &str, file: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let expanded = expand(text, lookup);
        // An empty file is a valid, all-defaults config (YAML reads it as null).
        if expanded.trim().is_empty() {
            return Ok(Config::default());
        }
        let deserializer = serde_norway::Deserializer::from_str(&expanded);
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            // serde_norway places errors from custom value parsers at the enclosing mapping;
            // the key's own line is more useful when it can be found.
            let line = locate_key(&expanded, &key).or_else(|| inner.location().map(|l| l.line()));
            ConfigError::Invalid {
                file: file.to_string(),
                line,
                key: if key == "." { "(top level)".into() } else { key },
                message: clean_message(&inner.to_string()),
            }
        })?;
        config.validate(file, &expanded)?;
        Ok(config)
    }

    /// Loads `path`, or with `None` the first of `replite.yml`/`litefs.yml` found in the
    /// current directory, the home directory, then `/etc`.
    pub fn load(path: Option<&Path>) -> Result<(Config, PathBuf), ConfigError> {
        let lookup = |name: &str| std::env::var(name).ok();
        let candidates = match path {
            Some(p) => vec![p.to_path_buf()],
            None => search_paths(),
        };
        for candidate in &candidates {
            match std::fs::read_to_string(candidate) {
                Ok(text) => {
                    let config = Config::parse(&text, &candidate.display().to_string(), &lookup)?;
                    return Ok((config, candidate.clone()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && path.is_none() => continue,
                Err(source) => return Err(ConfigError::Read { path: candidate.clone(), source }),
            }
        }
        Err(ConfigError::NotFound { searched: candidates })
    }

    /// Rules that span keys, checked after parsing.
    fn validate(&self, file: &str, text: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: file.to_string(),
            line: locate_key(text, key),
            key: key.to_string(),
            message,
        };
        match self.lease.kind {
            LeaseType::Unset => {
                return Err(invalid("lease.type", "required: one of static, consul, etcd".into()));
            }
            LeaseType::Consul => {
                if self.lease.consul.url.is_empty() {
                    return Err(invalid("lease.consul.url", "required when lease.type is consul".into()));
                }
                if self.lease.consul.key.is_empty() {
                    return Err(invalid("lease.consul.key", "required when lease.type is consul".into()));
                }
            }
            LeaseType::Etcd => {
                if self.lease.etcd.endpoints.is_empty() {
                    return Err(invalid("lease.etcd.endpoints", "required when lease.type is etcd".into()));
                }
                if self.lease.etcd.key.is_empty() {
                    return Err(invalid("lease.etcd.key", "required when lease.type is etcd".into()));
                }
            }
            LeaseType::Static => {}
        }
        let ttl = match self.lease.kind {
            LeaseType::Consul => Some(("lease.consul.ttl", self.lease.consul.ttl)),
            LeaseType::Etcd => Some(("lease.etcd.ttl", self.lease.etcd.ttl)),
            _ => None,
        };
        if let Some((key, ttl)) = ttl
            && self.lease.safety_margin >= ttl
        {
            return Err(invalid(
                "lease.safety-margin",
                format!("must be shorter than {key} ({ttl:?}), or the primary could never write"),
            ));
        }
        if !self.proxy.target.is_empty() {
            // As LiteFS: a target turns the proxy on, and then it needs both of these.
            if self.proxy.addr.is_empty() {
                return Err(invalid("proxy.addr", "required when proxy.target is set".into()));
            }
            if self.proxy.db.is_empty() {
                return Err(invalid("proxy.db", "required when proxy.target is set".into()));
            }
        }
        if self.lease.candidate && !self.lease.databases.is_empty() {
            return Err(invalid("lease.databases", "only non-candidate replicas may replicate a subset".into()));
        }
        Ok(())
    }
}

/// serde_norway prefixes the enclosing mapping's path and appends " at line L column C"; both
/// are reported separately.
fn clean_message(message: &str) -> String {
    let message = match message.rfind(" at line ") {
        Some(at) => &message[..at],
        None => message,
    };
    match message.split_once(": ") {
        Some((prefix, rest)) if !prefix.is_empty() && !prefix.contains(' ') => rest.to_string(),
        _ => message.to_string(),
    }
}

/// The 1-based line of a dotted key path (`lease.consul.ttl`) in block-style YAML: each
/// segment must appear as `segment:` more indented than its parent. Sequence indices and
/// flow-style mappings are not followed; callers fall back to the parser's location.
fn locate_key(text: &str, path: &str) -> Option<usize> {
    let segments: Vec<&str> = path.split('.').collect();
    let mut parent_indent: Option<usize> = None;
    let mut segment = 0;
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        if parent_indent.is_some_and(|p| indent <= p) {
            // Left the parent's block without finding the segment.
            return None;
        }
        let key = trimmed.split(':').next().unwrap_or("").trim().trim_matches(|c| c == '"' || c == '\'');
        if key == segments[segment] && trimmed.contains(':') {
            segment += 1;
            if segment == segments.len() {
                return Some(index + 1);
            }
            parent_indent = Some(indent);
        }
    }
    None
}

fn search_paths() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from(".")];
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home));
    }
    dirs.push(PathBuf::from("/etc"));
    dirs.iter().flat_map(|d| CONFIG_FILE_NAMES.iter().map(move |n| d.join(n))).collect()
}

#[cfg(test)]
mod tests;
