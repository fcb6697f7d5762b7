//! Cloud Hypervisor-style option values: `key=value,key=value`.

use std::collections::BTreeMap;

/// A parse error for one option; printed as `FLAG: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag}: {message}")]
pub struct OptionError {
    /// The flag, e.g. `--memory`.
    pub flag: &'static str,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl OptionError {
    /// An error for `flag`.
    pub fn new(flag: &'static str, message: impl Into<String>) -> Self {
        Self {
            flag,
            message: message.into(),
        }
    }
}

/// Parsed `key=value` pairs of one option.
#[derive(Debug)]
pub struct KeyValues {
    flag: &'static str,
    values: BTreeMap<String, String>,
}

impl KeyValues {
    /// Parses `s`; every key must be in `known`. A bare value without `=` is
    /// taken as `default_key=value` when `default_key` is given.
    pub fn parse(
        flag: &'static str,
        s: &str,
        known: &[&str],
        default_key: Option<&str>,
    ) -> Result<Self, OptionError> {
        let mut values = BTreeMap::new();
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (k, v) = match (part.split_once('='), default_key) {
                (Some((k, v)), _) => (k.trim(), v.trim()),
                (None, Some(d)) if values.is_empty() => (d, part),
                (None, _) => {
                    return Err(OptionError::new(
                        flag,
                        format!(
                            "'{part}' is not key=value (known keys: {})",
                            known.join(", ")
                        ),
                    ))
                }
            };
            if !known.contains(&k) {
                return Err(OptionError::new(
                    flag,
                    format!("unknown key '{k}' (known keys: {})", known.join(", ")),
                ));
            }
            if values.insert(k.to_string(), v.to_string()).is_some() {
                return Err(OptionError::new(flag, format!("'{k}' given twice")));
            }
        }
        Ok(Self { flag, values })
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// `key` as a byte size (`512M`, `1G`).
    pub fn size(&self, key: &str) -> Result<Option<u64>, OptionError> {
        self.get(key)
            .map(|v| {
                arch::parse_size(v)
                    .map_err(|e| OptionError::new(self.flag, format!("{key}={v}: {e}")))
            })
            .transpose()
    }

    /// `key` as an integer.
    pub fn number<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, OptionError> {
        self.get(key)
            .map(|v| {
                v.parse::<T>().map_err(|_| {
                    OptionError::new(self.flag, format!("{key}={v} is not a valid number"))
                })
            })
            .transpose()
    }

    /// `key` as `on`/`off` (also `true`/`false`).
    pub fn toggle(&self, key: &str) -> Result<Option<bool>, OptionError> {
        self.get(key)
            .map(|v| match v {
                "on" | "true" => Ok(true),
                "off" | "false" => Ok(false),
                _ => Err(OptionError::new(
                    self.flag,
                    format!("{key}={v}: use on or off"),
                )),
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs_and_default_key() {
        let kv =
            KeyValues::parse("--memory", "size=1G, shared=on", &["size", "shared"], None).unwrap();
        assert_eq!(kv.size("size").unwrap(), Some(1 << 30));
        assert_eq!(kv.toggle("shared").unwrap(), Some(true));
        let kv = KeyValues::parse("--api-socket", "/tmp/s", &["path"], Some("path")).unwrap();
        assert_eq!(kv.get("path"), Some("/tmp/s"));
    }

    #[test]
    fn errors_name_the_flag_and_the_fix() {
        let e = KeyValues::parse("--memory", "sise=1G", &["size"], None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--memory: unknown key 'sise' (known keys: size)"
        );
        let e = KeyValues::parse("--memory", "1G", &["size"], None).unwrap_err();
        assert!(e.to_string().starts_with("--memory: '1G' is not key=value"));
        let e = KeyValues::parse("--cpus", "boot=1,boot=2", &["boot"], None).unwrap_err();
        assert_eq!(e.to_string(), "--cpus: 'boot' given twice");
        let kv = KeyValues::parse("--memory", "size=lots", &["size"], None).unwrap();
        assert!(kv
            .size("size")
            .unwrap_err()
            .to_string()
            .starts_with("--memory: size=lots: 'lots' is not a size"));
        let kv = KeyValues::parse("--cpus", "boot=x", &["boot"], None).unwrap();
        assert_eq!(
            kv.number::<u8>("boot").unwrap_err().to_string(),
            "--cpus: boot=x is not a valid number"
        );
        let kv = KeyValues::parse("--memory", "shared=yes", &["shared"], None).unwrap();
        assert_eq!(
            kv.toggle("shared").unwrap_err().to_string(),
            "--memory: shared=yes: use on or off"
        );
    }
}
