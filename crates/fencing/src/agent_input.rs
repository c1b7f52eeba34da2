//! The agent side of the fence-agents protocol: parsing `name=value` lines from stdin
//! (and the equivalent command-line options), as tandem's own agents receive them.

use std::collections::BTreeMap;

/// Most bytes of input an agent accepts: real inputs are a few hundred bytes.
pub const INPUT_MAX_BYTES: usize = 64 * 1024;

/// Input that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// More than [`INPUT_MAX_BYTES`].
    #[error("input longer than {INPUT_MAX_BYTES} bytes")]
    TooLong,
    /// Not UTF-8.
    #[error("input line {0} is not UTF-8")]
    NotUtf8(usize),
    /// A command-line option we do not understand.
    #[error("unknown option {0:?}: expected -o ACTION, -n PLUG, -a ADDRESS or --NAME=VALUE")]
    BadOption(String),
}

/// Parsed agent input: names to values, the last occurrence winning (FenceAgentAPI).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentInput {
    values: BTreeMap<String, String>,
}

impl AgentInput {
    /// Parses stdin text: one `name=value` per line; blank lines and lines starting with
    /// `#` are skipped; leading whitespace is stripped; the value runs from the first `=`
    /// to the end of the line. A line without `=` is ignored, as agents ignore what they
    /// do not know.
    pub fn parse(bytes: &[u8]) -> Result<AgentInput, InputError> {
        if bytes.len() > INPUT_MAX_BYTES {
            return Err(InputError::TooLong);
        }
        let mut values = BTreeMap::new();
        for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
            let line = std::str::from_utf8(raw).map_err(|_| InputError::NotUtf8(i + 1))?;
            let line = line.trim_start().trim_end_matches('\r');
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some((name, value)) = line.split_once('=') {
                if !name.is_empty() {
                    values.insert(name.trim_end().to_ascii_lowercase(), value.to_string());
                }
            }
        }
        Ok(AgentInput { values })
    }

    /// Parses command-line options as real agents take them: `-o ACTION`, `-n PLUG`,
    /// `-a ADDRESS`, `--NAME=VALUE` or `--NAME VALUE`.
    pub fn from_args(args: &[String]) -> Result<AgentInput, InputError> {
        let mut values = BTreeMap::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let (name, value) = match a.as_str() {
                "-o" => ("action".to_string(), it.next().cloned()),
                "-n" => ("plug".to_string(), it.next().cloned()),
                "-a" => ("ipaddr".to_string(), it.next().cloned()),
                s if s.starts_with("--") && s.len() > 2 => match s[2..].split_once('=') {
                    Some((n, v)) => (n.replace('-', "_"), Some(v.to_string())),
                    None => (s[2..].replace('-', "_"), it.next().cloned()),
                },
                other => return Err(InputError::BadOption(other.to_string())),
            };
            let Some(value) = value else {
                return Err(InputError::BadOption(a.clone()));
            };
            values.insert(name, value);
        }
        Ok(AgentInput { values })
    }

    /// The input as `name=value` lines again (to forward it).
    pub fn to_lines(&self) -> String {
        self.values
            .iter()
            .filter(|(k, v)| !k.contains(['\n', '=']) && !v.contains('\n'))
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect()
    }

    /// A value by name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// The first of several names that is set (aliases).
    pub fn first(&self, names: &[&str]) -> Option<&str> {
        names.iter().find_map(|n| self.get(n))
    }

    /// `action` (or its deprecated alias `option`).
    pub fn action(&self) -> Option<&str> {
        self.first(&["action", "option"])
    }

    /// The plug: `port`, `plug`, else `nodename` (port wins over nodename, per the API).
    pub fn plug(&self) -> Option<&str> {
        self.first(&["port", "plug", "nodename"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_comments_and_last_value_wins() {
        let i = AgentInput::parse(
            b"# comment\n  action=off\nport=ox1\nipaddr=lab1\nport=ox2\nno-equals\n\npasswd=a=b\r\n",
        )
        .expect("parse");
        assert_eq!(i.action(), Some("off"));
        assert_eq!(i.plug(), Some("ox2"));
        assert_eq!(i.get("ipaddr"), Some("lab1"));
        assert_eq!(i.get("passwd"), Some("a=b"));
        assert_eq!(AgentInput::parse(i.to_lines().as_bytes()), Ok(i.clone()));
        assert_eq!(
            AgentInput::parse(b"option=status\nnodename=ox1\n")
                .expect("parse")
                .action(),
            Some("status")
        );
        assert_eq!(AgentInput::parse(b"\xff=1\n"), Err(InputError::NotUtf8(1)));
        assert_eq!(
            AgentInput::parse(&vec![b'a'; INPUT_MAX_BYTES + 1]),
            Err(InputError::TooLong)
        );
    }

    #[test]
    fn parses_command_line_forms() {
        let args: Vec<String> = ["-o", "status", "-n", "ox1", "--ip=lab1", "--verbose", "1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let i = AgentInput::from_args(&args).expect("args");
        assert_eq!(i.action(), Some("status"));
        assert_eq!(i.plug(), Some("ox1"));
        assert_eq!(i.get("ip"), Some("lab1"));
        assert!(AgentInput::from_args(&["-o".to_string()]).is_err());
        assert!(AgentInput::from_args(&["stray".to_string()]).is_err());
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 96) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|k| {
                    let b = (x >> (k % 61)) as u8;
                    // Bias towards the bytes the parser cares about.
                    match b % 7 {
                        0 => b'=',
                        1 => b'\n',
                        2 => b'#',
                        _ => b,
                    }
                })
                .collect();
            let _ = AgentInput::parse(&bytes);
        }
    }
}
