//! The `--config` YAML file, with every key of GrootFS's config and GrootFS's meaning: an empty
//! string or a zero size means unset (Go's `yaml.Marshal` of GrootFS's Config writes every key,
//! set or not), negative sizes are refused, unknown keys are ignored. Flags win over it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Config {
    #[serde(deserialize_with = "non_empty")]
    pub store: Option<PathBuf>,
    #[serde(deserialize_with = "non_empty")]
    pub log_level: Option<String>,
    #[serde(deserialize_with = "non_empty")]
    pub log_file: Option<PathBuf>,
    /// Accepted so GrootFS configs load; nestfs needs no tardis and no newuidmap.
    #[serde(deserialize_with = "non_empty")]
    pub tardis_bin: Option<String>,
    #[serde(deserialize_with = "non_empty")]
    pub newuidmap_bin: Option<String>,
    #[serde(deserialize_with = "non_empty")]
    pub newgidmap_bin: Option<String>,
    #[serde(deserialize_with = "non_empty")]
    pub metron_endpoint: Option<String>,
    pub clean: CleanConfig,
    pub create: CreateConfig,
    pub init: InitConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CleanConfig {
    #[serde(deserialize_with = "size")]
    pub threshold_bytes: Option<i64>,
    /// nestfs's own: images whose layers `clean` keeps.
    #[serde(deserialize_with = "list")]
    pub ignore_images: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CreateConfig {
    #[serde(deserialize_with = "flag")]
    pub with_clean: bool,
    #[serde(deserialize_with = "non_empty")]
    pub clean_log_file: Option<PathBuf>,
    #[serde(deserialize_with = "flag")]
    pub without_mount: bool,
    #[serde(deserialize_with = "flag")]
    pub skip_layer_validation: bool,
    #[serde(deserialize_with = "list")]
    pub insecure_registries: Vec<String>,
    #[serde(deserialize_with = "size")]
    pub disk_limit_size_bytes: Option<i64>,
    #[serde(deserialize_with = "flag")]
    pub exclude_image_from_quota: bool,
    #[serde(deserialize_with = "non_empty")]
    pub remote_layer_client_certificates_path: Option<PathBuf>,
    /// nestfs's own: how many times its compressed size a layer may unpack to (0: no bound).
    pub max_layer_expansion: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct InitConfig {
    #[serde(deserialize_with = "size")]
    pub store_size_bytes: Option<i64>,
    /// GrootFS's loop-device option: accepted, nothing to do without a loop device.
    #[serde(deserialize_with = "flag")]
    pub with_direct_io: bool,
}

/// A string or path; empty or null is unset.
fn non_empty<'de, D: Deserializer<'de>, T: From<String>>(d: D) -> Result<Option<T>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    Ok(s.filter(|s| !s.is_empty()).map(T::from))
}

/// A byte count; zero or null is unset (GrootFS's zero value).
fn size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let n: Option<i64> = Option::deserialize(d)?;
    Ok(n.filter(|n| *n != 0))
}

/// A boolean; null is false.
fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

/// A list; null (`insecure_registries:` with nothing after it) is empty.
fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// A size from the config as a byte count, refused as GrootFS refuses it when negative.
pub fn bytes(n: Option<i64>, what: &str) -> anyhow::Result<Option<u64>> {
    match n {
        Some(n) if n < 0 => anyhow::bail!("invalid argument: {what} cannot be negative"),
        n => Ok(n.map(|n| n as u64)),
    }
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
        let c: Config = yaml_serde::from_str(&text)
            .map_err(|e| anyhow::anyhow!("config {}: {e}", p.display()))?;
        bytes(c.create.disk_limit_size_bytes, "disk limit")?;
        bytes(c.clean.threshold_bytes, "clean threshold")?;
        bytes(c.init.store_size_bytes, "store size")?;
        Ok(c)
    }

    pub fn disk_limit(&self) -> Option<u64> {
        self.create.disk_limit_size_bytes.map(|n| n.max(0) as u64)
    }

    pub fn clean_threshold(&self) -> Option<u64> {
        self.clean.threshold_bytes.map(|n| n.max(0) as u64)
    }

    pub fn store_size(&self) -> Option<u64> {
        self.init.store_size_bytes.map(|n| n.max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_grootfs_keys_and_ignores_others() {
        let c: Config = yaml_serde::from_str(
            "store: /s\nlog_level: debug\ntardis_bin: /x\nunknown: 1\nclean:\n  threshold_bytes: 10\n  ignore_images: [docker:///a]\ncreate:\n  with_clean: true\n  insecure_registries: [r:5000]\n  disk_limit_size_bytes: 99\n",
        )
        .unwrap();
        assert_eq!(c.store, Some(PathBuf::from("/s")));
        assert_eq!(c.log_level.as_deref(), Some("debug"));
        assert_eq!(c.tardis_bin.as_deref(), Some("/x"));
        assert_eq!(c.clean.threshold_bytes, Some(10));
        assert_eq!(c.clean.ignore_images, vec!["docker:///a".to_string()]);
        assert!(c.create.with_clean);
        assert_eq!(c.create.insecure_registries, vec!["r:5000".to_string()]);
        assert_eq!(c.create.disk_limit_size_bytes, Some(99));
    }

    /// What Go's yaml.v2 writes for GrootFS's zero Config: every key, empty values unset.
    #[test]
    fn a_marshalled_grootfs_config_with_empty_values_means_unset() {
        let c: Config = yaml_serde::from_str(
            r#"store: ""
tardis_bin: ""
newuidmap_bin: ""
newgidmap_bin: ""
metron_endpoint: ""
log_level: ""
log_file: ""
create:
  exclude_image_from_quota: false
  skip_layer_validation: false
  with_clean: false
  clean_log_file: ""
  without_mount: false
  disk_limit_size_bytes: 0
  insecure_registries: []
  remote_layer_client_certificates_path: ""
clean:
  threshold_bytes: 0
init:
  store_size_bytes: 190092
  owneruser: ""
  ownergroup: ""
  with_direct_io: false
"#,
        )
        .unwrap();
        assert_eq!(c.store, None);
        assert_eq!(c.log_level, None);
        assert_eq!(c.log_file, None);
        assert_eq!(c.metron_endpoint, None);
        assert_eq!(c.create.clean_log_file, None);
        assert_eq!(c.create.disk_limit_size_bytes, None);
        assert_eq!(c.clean.threshold_bytes, None);
        assert_eq!(c.init.store_size_bytes, Some(190092));
        let nulls: Config =
            yaml_serde::from_str("log_file:\ncreate:\n  insecure_registries:\n").unwrap();
        assert_eq!(nulls.log_file, None);
        assert!(nulls.create.insecure_registries.is_empty());
    }

    #[test]
    fn negative_sizes_are_refused_in_grootfs_words() {
        let e = bytes(Some(-1), "disk limit").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid argument: disk limit cannot be negative"
        );
        assert_eq!(bytes(Some(5), "x").unwrap(), Some(5));
    }
}
