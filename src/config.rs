//! Configuration: one typed struct, read from an optional TOML file and
//! overridden by `EDDY_*` environment variables and command-line flags
//! (flags win). Every setting is documented in `docs/config.md`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("invalid listen address {0:?}: expected host:port such as 127.0.0.1:5433")]
    Listen(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the Postgres protocol listens on.
    pub listen: String,
    /// Directory for RocksDB data and the lock file.
    pub data_dir: PathBuf,
    /// Most statements merged into one synced write (group commit).
    pub group_commit_max: usize,
    /// Most concurrent client connections.
    pub max_connections: usize,
    /// Milliseconds between checkpoints of the materialized views.
    pub checkpoint_interval_ms: u64,
    /// Memory for cached operator state, in MiB (state beyond it is read
    /// from RocksDB).
    pub state_cache_mb: usize,
    /// A folder of `*.sql` files applied once each, in name order, at
    /// start-up.
    pub migrations: Option<PathBuf>,
    /// Start the built-in demo (the fraud-detection example on generated
    /// data) if it is not running yet.
    pub demo: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:5433".into(),
            data_dir: PathBuf::from("./eddy-data"),
            group_commit_max: 1024,
            max_connections: 256,
            checkpoint_interval_ms: 1000,
            state_cache_mb: 256,
            migrations: None,
            demo: false,
        }
    }
}

impl Config {
    /// Reads the file if given (a missing default file is fine).
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else { return Ok(Self::default()) };
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source })
    }

    pub fn stream_config(&self) -> crate::stream::StreamConfig {
        crate::stream::StreamConfig {
            checkpoint_interval_ms: self.checkpoint_interval_ms,
            state_cache_bytes: self.state_cache_mb.saturating_mul(1 << 20),
        }
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| ConfigError::Listen(self.listen.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults() {
        let c: Config = toml::from_str("listen = \"0.0.0.0:6000\"\n").expect("valid");
        assert_eq!(c.listen, "0.0.0.0:6000");
        assert_eq!(c.group_commit_max, 1024);
        assert!(toml::from_str::<Config>("nope = 1").is_err());
    }
}
