//! The key lifecycle verbs, over the admin API, one module each: [`mint`],
//! [`list`], [`show`], [`update`] (a key's rate limit), [`rotate`] and
//! [`revoke`] (one key by id, or every key with some labels). Each needs an
//! admin key holding `keyward:admin` or the finer `keyward:keys:…`
//! permission.

pub mod list;
pub mod mint;
pub mod revoke;
pub mod rotate;
pub mod show;
pub mod update;

use std::collections::HashMap;

use crate::error::CliError;

/// Collects `--label` values, refusing one key given with two values (which
/// one was meant cannot be guessed).
pub(crate) fn label_map(
    labels: Vec<(String, String)>,
) -> Result<HashMap<String, String>, CliError> {
    let mut map = HashMap::with_capacity(labels.len());
    for (key, value) in labels {
        if let Some(previous) = map.insert(key.clone(), value.clone())
            && previous != value
        {
            return Err(CliError::Usage(format!(
                "--label {key} is given twice, as {key}={previous} and {key}={value}"
            )));
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn repeated_labels_must_agree() {
        let map = label_map(labels(&[("env", "prod"), ("team", "a"), ("env", "prod")])).unwrap();
        assert_eq!(map.len(), 2);
        let err = label_map(labels(&[("env", "prod"), ("env", "dev")])).unwrap_err();
        assert!(matches!(err, CliError::Usage(_)));
        assert!(err.to_string().contains("--label env"), "{err}");
    }
}
