//! Reading and writing launch config files: where the default one lives, parsing with errors that name the
//! file, place and key, and the atomic save.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::{DEFAULT_CONFIG_FILE, LaunchConfig, LaunchConfigError, Result};

/// The first line of every launch config `llmtrain config` writes.
const HEADER: &str = "# llmtrain launch config, written by `llmtrain config`; `llmtrain launch` reads it.\n";

impl LaunchConfig {
    /// `$LLMTRAIN_CONFIG_DIR/default_config.toml`, else `$XDG_CONFIG_HOME/llmtrain/default_config.toml`, else
    /// `~/.config/llmtrain/default_config.toml`.
    pub fn default_path() -> Result<PathBuf> {
        default_path_from(|name| std::env::var_os(name))
    }

    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|source| LaunchConfigError::Io { path: path.into(), source })?;
        Self::from_toml_str(&text, path)
    }

    /// Parses and checks config text; `path` only names it in errors.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self> {
        let config: LaunchConfig = toml::from_str(text).map_err(|e| toml_error(&e, text, path))?;
        config.validate().map_err(|e| match e {
            LaunchConfigError::Invalid(message) => LaunchConfigError::InvalidFile { path: path.into(), message },
            other => other,
        })?;
        Ok(config)
    }

    /// Whether `path` holds a file [`save`](Self::save) wrote (its first line is our header), which saving may
    /// replace.
    pub fn is_launch_config_file(path: &Path) -> bool {
        std::fs::read_to_string(path).is_ok_and(|text| text.starts_with(HEADER))
    }

    /// The TOML text [`save`](Self::save) writes.
    pub fn to_toml_string(&self) -> Result<String> {
        let body = toml::to_string(self).map_err(|e| LaunchConfigError::Serialize(e.to_string()))?;
        Ok(format!("{HEADER}{body}"))
    }

    /// Checks, then writes the config through a temporary file in the same directory and a rename, so a reader
    /// never sees half a file and an existing one is replaced whole. Creates missing parent directories.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.validate()?;
        let text = self.to_toml_string()?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|source| LaunchConfigError::Io { path: parent.to_path_buf(), source })?;
        }
        llmtrain_core::fsutil::write_atomic(path, text.as_bytes())?;
        Ok(())
    }
}

fn default_path_from(var: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf> {
    let dir = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = dir("LLMTRAIN_CONFIG_DIR") {
        return Ok(dir.join(DEFAULT_CONFIG_FILE));
    }
    // The XDG spec says to ignore a relative XDG_CONFIG_HOME.
    if let Some(dir) = dir("XDG_CONFIG_HOME").filter(|d| d.is_absolute()) {
        return Ok(dir.join("llmtrain").join(DEFAULT_CONFIG_FILE));
    }
    match dir("HOME").or_else(|| dir("USERPROFILE")) {
        Some(home) => Ok(home.join(".config").join("llmtrain").join(DEFAULT_CONFIG_FILE)),
        None => Err(LaunchConfigError::NoConfigDir),
    }
}

/// One line `file:line:column: key `k`: message`; the key is the one the error's span sits on.
fn toml_error(err: &toml::de::Error, text: &str, path: &Path) -> LaunchConfigError {
    let mut message = err.message().trim().replace('\n', " ");
    // (start of the error's line, error offset), both byte offsets into `text`.
    let place = err.span().and_then(|s| {
        let start = s.start.min(text.len());
        let before = text.get(..start)?;
        Some((before.rfind('\n').map(|i| i + 1).unwrap_or(0), start))
    });
    let (line, column) = match place {
        Some((line_start, start)) => {
            (text[..start].matches('\n').count() + 1, text[line_start..start].chars().count() + 1)
        }
        None => (0, 0),
    };
    let mut key = None;
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((unknown, expected)) = rest.split_once('`')
    {
        key = Some(unknown.to_string());
        message = format!("unknown key{expected}");
    } else if let Some((line_start, _)) = place {
        // A bad value: the key is what stands before `=` on its line.
        let line_text = text[line_start..].lines().next().unwrap_or_default();
        if let Some((k, _)) = line_text.split_once('=') {
            let k = k.trim().trim_matches(|c| c == '"' || c == '\'');
            if !k.is_empty() && !k.starts_with('#') {
                key = Some(k.to_string());
            }
        }
    }
    LaunchConfigError::Toml { path: path.into(), line, column, key, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch_config::{DistributedType, Launcher, MixedPrecision};

    #[test]
    fn save_then_load_round_trips_and_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/default_config.toml");
        let config = LaunchConfig {
            distributed_type: DistributedType::MultiCpu,
            num_machines: 2,
            machine_rank: 1,
            main_process_ip: Some("node0".into()),
            main_process_port: 1234,
            num_processes: 4,
            gpu_ids: "all".into(),
            mixed_precision: MixedPrecision::Bf16,
            launcher: Launcher::Mpirun,
            hostfile: Some("hosts".into()),
        };
        config.save(&path).unwrap();
        assert_eq!(LaunchConfig::load(&path).unwrap(), config);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("distributed_type = \"multi-cpu\"\n"), "{text}");
        assert!(text.contains("launcher = \"mpirun\"\n"), "{text}");

        LaunchConfig::default().save(&path).unwrap();
        assert_eq!(LaunchConfig::load(&path).unwrap(), LaunchConfig::default());
        assert!(!std::fs::read_to_string(&path).unwrap().contains("main_process_ip"));
        let names: Vec<_> =
            std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![OsString::from("default_config.toml")], "temporary file left behind");

        // save refuses what validate refuses, and leaves the old file.
        assert!(LaunchConfig { num_processes: 0, ..LaunchConfig::default() }.save(&path).is_err());
        assert_eq!(LaunchConfig::load(&path).unwrap(), LaunchConfig::default());
    }

    #[test]
    fn absent_keys_take_their_defaults() {
        let config = LaunchConfig::from_toml_str("mixed_precision = \"bf16\"\n", Path::new("c.toml")).unwrap();
        assert_eq!(config, LaunchConfig { mixed_precision: MixedPrecision::Bf16, ..LaunchConfig::default() });
    }

    #[test]
    fn load_errors_name_the_file_the_place_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("launch.toml");
        let shown = path.display().to_string();
        let err_of = |text: &str| {
            std::fs::write(&path, text).unwrap();
            LaunchConfig::load(&path).unwrap_err().to_string()
        };

        let err = err_of("num_machines = 1\nnum_procesess = 2\n");
        assert!(err.starts_with(&format!("{shown}:2:1: key `num_procesess`: unknown key")), "{err}");
        assert!(err.contains("`num_processes`"), "expected keys listed: {err}");

        let err = err_of("distributed_type = \"multi-gpu\"\nmixed_precision = \"fp8\"\n");
        assert!(err.starts_with(&format!("{shown}:2:19: key `mixed_precision`: ")), "{err}");
        assert!(err.contains("fp8"), "{err}");

        let err = err_of("num_processes = -2\n");
        assert!(err.starts_with(&format!("{shown}:1:17: key `num_processes`: ")), "{err}");

        let err = err_of("distributed_type = \"multi-gpu\"\nnum_machines = 2\nmachine_rank = 2\n");
        assert!(err.starts_with(&format!("{shown}: machine_rank 2 must be below num_machines 2")), "{err}");

        let missing = dir.path().join("absent.toml");
        let err = LaunchConfig::load(&missing).unwrap_err().to_string();
        assert!(err.starts_with(&missing.display().to_string()), "{err}");
    }
    #[test]
    fn default_path_prefers_the_llmtrain_variable_then_xdg_then_home() {
        let path = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, OsString)> = vars.iter().map(|(k, v)| (k.to_string(), OsString::from(v))).collect();
            default_path_from(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
        };
        let all = [("LLMTRAIN_CONFIG_DIR", "/cfg"), ("XDG_CONFIG_HOME", "/xdg"), ("HOME", "/home/u")];
        assert_eq!(path(&all).unwrap(), Path::new("/cfg/default_config.toml"));
        assert_eq!(path(&all[1..]).unwrap(), Path::new("/xdg/llmtrain/default_config.toml"));
        assert_eq!(path(&all[2..]).unwrap(), Path::new("/home/u/.config/llmtrain/default_config.toml"));
        let unset_and_relative = [("LLMTRAIN_CONFIG_DIR", ""), ("XDG_CONFIG_HOME", "rel"), ("HOME", "/home/u")];
        assert_eq!(path(&unset_and_relative).unwrap(), Path::new("/home/u/.config/llmtrain/default_config.toml"));
        assert!(matches!(path(&[]), Err(LaunchConfigError::NoConfigDir)));
    }
}
