//! Case files: a native configuration and a `[view]` in one TOML file.
//!
//! A case is an ordinary `cluster.toml` (every key the loader knows) plus tables named
//! `[view]`, `[view.*]` or `[[view.*]]` holding a [`ClusterView`]. The loader cuts the
//! view tables out line by line — replacing them with empty lines, so configuration
//! errors keep their line numbers — and hands the rest to the configuration loader.
//! View tables must be written with headers (`[view.groups.db.on.ox1]`), not inline
//! under another table.

use tandem_config::{Config, Diagnostics, Warning};

use crate::view::{ClusterView, ViewError};

/// A loaded case.
#[derive(Debug, Clone)]
pub struct Case {
    /// The configuration part.
    pub config: Config,
    /// The view part.
    pub view: ClusterView,
    /// Configuration warnings (e.g. no fence device).
    pub warnings: Vec<Warning>,
}

/// Why a case file was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CaseError {
    /// The file is not TOML, or `[view]` does not describe a view.
    #[error("{file}: [view]: {message}")]
    View {
        /// File name.
        file: String,
        /// The TOML/serde message (with line and column).
        message: String,
    },
    /// The configuration part was rejected.
    #[error("{0}")]
    Config(Diagnostics),
    /// The view names nodes, groups or resources the configuration lacks.
    #[error("{file}: {error}")]
    Mismatch {
        /// File name.
        file: String,
        /// What does not match.
        error: ViewError,
    },
}

#[derive(serde::Deserialize)]
struct ViewOnly {
    view: ClusterView,
}

/// Loads a case from `text` (named `file` in messages). Never panics.
pub fn load(file: &str, text: &str) -> Result<Case, CaseError> {
    let doc: ViewOnly = toml::from_str(text).map_err(|e| CaseError::View {
        file: file.to_string(),
        message: e.to_string().trim_end().to_string(),
    })?;
    let config_text = strip_view(text);
    let (config, warnings) = Config::parse_str(file, &config_text).map_err(CaseError::Config)?;
    doc.view
        .validate(&config)
        .map_err(|error| CaseError::Mismatch {
            file: file.to_string(),
            error,
        })?;
    Ok(Case {
        config,
        view: doc.view,
        warnings,
    })
}

/// The text with every `view` table replaced by empty lines.
pub fn strip_view(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_view = false;
    for line in text.split_inclusive('\n') {
        if let Some(name) = header_name(line) {
            in_view = name == "view" || name.starts_with("view.");
        }
        if in_view {
            if line.ends_with('\n') {
                out.push('\n');
            }
        } else {
            out.push_str(line);
        }
    }
    out
}

/// The table name if `line` is a table header (`[a.b]` or `[[a.b]]`, bare keys only).
fn header_name(line: &str) -> Option<String> {
    let mut s = line.trim();
    if let Some(i) = s.find('#') {
        s = s[..i].trim_end();
    }
    let inner = if let Some(x) = s.strip_prefix("[[") {
        x.strip_suffix("]]")?
    } else {
        s.strip_prefix('[')?.strip_suffix(']')?
    };
    let name: String = inner
        .split('.')
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(".");
    let bare = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    (bare && !name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_view_keeps_line_numbers_and_config() {
        let text = "[cluster]\nname = \"x\"\n[view]\nlocal = \"a\"\n[view.peer]\nstate = \"up\"\n[[node]]\nname = \"a\"\n";
        let s = strip_view(text);
        assert_eq!(s.lines().count(), text.lines().count());
        assert!(s.contains("[cluster]") && s.contains("[[node]]"));
        assert!(!s.contains("local") && !s.contains("state"));
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small deterministic generator (no RNG crate needed): every byte string and
        // every mutated prefix of a valid case goes through the loader.
        let valid = include_str!("../../../testdata/policy/cold-start-both-home.toml");
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for round in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut bytes: Vec<u8> = valid.as_bytes().to_vec();
            let cut = (x as usize) % (bytes.len() + 1);
            bytes.truncate(cut);
            if round % 2 == 0 && !bytes.is_empty() {
                let i = (x >> 20) as usize % bytes.len();
                bytes[i] = (x >> 40) as u8;
            }
            if let Ok(text) = std::str::from_utf8(&bytes) {
                if let Ok(case) = load("fuzz.toml", text) {
                    let t = crate::plan(&case.config, &case.view);
                    assert!(crate::check(&case.config, &case.view, &t).is_ok());
                }
            }
        }
    }
}
