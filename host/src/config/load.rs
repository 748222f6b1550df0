//! Reading a configuration: the file, then the `KAFKA_*` overrides, then
//! the `{hostname}` in `kafka.group_instance_id`, then validation.
//!
//! Owns the order of these steps only; each is done by its own module.

use std::path::Path;

use super::{Config, ConfigError, env, membership, secret, validate};

impl Config {
    /// Reads, overrides from the environment and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with(path, &|var| std::env::var(var).ok())
    }

    /// Like [`Config::load`], with `env` answering the `KAFKA_*` lookups.
    pub fn load_with(
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let base_dir = path.parent().map(Path::to_owned).unwrap_or_default();
        let mut config = Self::parse(&text, &base_dir, env)?;
        config.source = Some(path.to_owned());
        Ok(config)
    }

    /// Parses and validates config text; `env` answers `KAFKA_*` lookups
    /// (and `HOSTNAME`, for `kafka.group_instance_id`) and `base_dir`
    /// anchors relative paths.
    pub fn parse(
        text: &str,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let parse_error = |e: toml::de::Error| {
            ConfigError::Parse(secret::redact_parse_error(e.to_string().trim().to_owned()))
        };
        let mut table: toml::Table = toml::from_str(text).map_err(parse_error)?;
        let overridden = env::apply_overrides(&mut table, env)?;
        let mut config: Config = toml::Value::Table(table).try_into().map_err(parse_error)?;
        config.base_dir = base_dir.to_owned();
        if let Some(template) = config.kafka.group_instance_id.take() {
            let id = membership::resolve_instance_id(&template, env)
                .and_then(|id| membership::check_instance_id(&id, &template).map(|()| id))
                .map_err(|e| env::name_variable(e, &overridden))?;
            config.kafka.group_instance_id = Some(id);
        }
        validate::validate(&config).map_err(|e| env::name_variable(e, &overridden))?;
        Ok(config)
    }
}
