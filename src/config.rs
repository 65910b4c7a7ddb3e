//! The `--config` YAML file, with GrootFS's keys (unknown keys are ignored, so an existing
//! GrootFS config works). Command-line flags win over it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Config {
    pub store: Option<PathBuf>,
    pub log_level: Option<String>,
    pub log_file: Option<PathBuf>,
    pub clean: CleanConfig,
    pub create: CreateConfig,
    pub init: InitConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CleanConfig {
    pub threshold_bytes: Option<u64>,
    pub ignore_images: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CreateConfig {
    pub with_clean: bool,
    pub without_mount: bool,
    pub skip_layer_validation: bool,
    pub insecure_registries: Vec<String>,
    pub disk_limit_size_bytes: Option<u64>,
    pub exclude_image_from_quota: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct InitConfig {
    pub store_size_bytes: Option<u64>,
}

impl Config {
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let Some(p) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(p)
            .map_err(|e| anyhow::anyhow!("config {}: {e}", p.display()))?;
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_yaml::from_str(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", p.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_grootfs_keys_and_ignores_others() {
        let c: Config = serde_yaml::from_str(
            "store: /s\nlog_level: debug\ntardis_bin: /x\nclean:\n  threshold_bytes: 10\n  ignore_images: [docker:///a]\ncreate:\n  with_clean: true\n  insecure_registries: [r:5000]\n  disk_limit_size_bytes: 99\n",
        )
        .unwrap();
        assert_eq!(c.store, Some(PathBuf::from("/s")));
        assert_eq!(c.log_level.as_deref(), Some("debug"));
        assert_eq!(c.clean.threshold_bytes, Some(10));
        assert_eq!(c.clean.ignore_images, vec!["docker:///a".to_string()]);
        assert!(c.create.with_clean);
        assert_eq!(c.create.insecure_registries, vec!["r:5000".to_string()]);
        assert_eq!(c.create.disk_limit_size_bytes, Some(99));
    }
}
