//! OCF resource agents: `OCF_ROOT/resource.d/PROVIDER/TYPE ACTION` with the environment
//! the OCF resource-agent API and Pacemaker define, and meta-data parsing for the
//! configuration check.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

use crate::RunOptions;
use crate::exec::{self, CommandSpec, ProcessEnd, ProcessRun};
use crate::result::{Action, ActionResult, ExecStatus, OcfExit};

/// One OCF agent instance.
#[derive(Debug, Clone)]
pub struct OcfAgent {
    /// Resource (instance) name: `OCF_RESOURCE_INSTANCE`.
    pub instance: String,
    /// Provider directory, e.g. `heartbeat`.
    pub provider: String,
    /// Agent type, e.g. `IPaddr2`.
    pub agent: String,
    /// Instance parameters, passed as `OCF_RESKEY_<name>`.
    pub params: BTreeMap<String, String>,
    /// `OCF_ROOT`, normally `/usr/lib/ocf`.
    pub ocf_root: PathBuf,
}

/// Where an OCF agent lives.
pub fn agent_path(ocf_root: &Path, provider: &str, agent: &str) -> PathBuf {
    ocf_root.join("resource.d").join(provider).join(agent)
}

/// True when a name is safe as one path component (no `/`, not `.`/`..`, not empty).
pub(crate) fn is_plain_name(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\0')
}

impl OcfAgent {
    /// The agent's executable.
    pub fn path(&self) -> PathBuf {
        agent_path(&self.ocf_root, &self.provider, &self.agent)
    }

    /// The variables an action adds to [`exec::AGENT_ENVIRONMENT`] (sorted, for tests
    /// and logs).
    pub fn environment(&self, action: Action, opts: &RunOptions) -> Vec<(String, String)> {
        let mut env = vec![
            ("OCF_ROOT".to_string(), self.ocf_root.display().to_string()),
            ("OCF_RA_VERSION_MAJOR".to_string(), "1".to_string()),
            ("OCF_RA_VERSION_MINOR".to_string(), "1".to_string()),
            ("OCF_RESOURCE_INSTANCE".to_string(), self.instance.clone()),
            ("OCF_RESOURCE_TYPE".to_string(), self.agent.clone()),
            ("OCF_RESOURCE_PROVIDER".to_string(), self.provider.clone()),
            (
                "OCF_RESKEY_CRM_meta_timeout".to_string(),
                opts.timeout.as_millis().to_string(),
            ),
        ];
        // Pacemaker passes the interval only to recurring monitors; 0 means "one-shot".
        let interval_ms = if action == Action::Monitor {
            opts.interval.as_millis()
        } else {
            0
        };
        env.push((
            "OCF_RESKEY_CRM_meta_interval".to_string(),
            interval_ms.to_string(),
        ));
        for (k, v) in &self.params {
            env.push((format!("OCF_RESKEY_{k}"), v.clone()));
        }
        env.sort();
        env
    }

    /// Runs one action.
    pub fn run(&self, action: Action, opts: &RunOptions) -> ActionResult {
        self.run_with_stdout(action, opts).0
    }

    /// Runs one action and also hands back its complete (bounded) stdout, which is where
    /// `meta-data` prints its XML.
    pub fn run_with_stdout(&self, action: Action, opts: &RunOptions) -> (ActionResult, String) {
        if !is_plain_name(&self.provider) || !is_plain_name(&self.agent) {
            let r = ActionResult::not_done(
                ExecStatus::NotInstalled,
                format!(
                    "invalid OCF provider/type {:?}/{:?}",
                    self.provider, self.agent
                ),
                Duration::ZERO,
            );
            return (r, String::new());
        }
        let spec = CommandSpec {
            program: self.path(),
            args: vec![action.as_str().into()],
            env: self.environment(action, opts),
        };
        let run = exec::run(&spec, opts.timeout, opts.cancel.as_ref());
        let r = result_from_run(&run, &spec.program, OcfExit::from_code);
        (r, run.stdout)
    }
}

/// Maps a finished process to an [`ActionResult`], with `map` turning the exit code
/// into an OCF code (identity for OCF, the LSB tables for init scripts).
pub(crate) fn result_from_run(
    run: &ProcessRun,
    program: &Path,
    map: impl FnOnce(i32) -> OcfExit,
) -> ActionResult {
    let output = exec::output_tail(run);
    let reason_from_agent = exec::exit_reason(&run.stderr).unwrap_or_default();
    let mut r = match &run.end {
        ProcessEnd::Exited(code) => ActionResult::done(map(*code), reason_from_agent, run.duration),
        ProcessEnd::Signaled(sig) => ActionResult::not_done(
            ExecStatus::Error(format!("{} killed by signal {sig}", program.display())),
            reason_from_agent,
            run.duration,
        ),
        ProcessEnd::Timeout => ActionResult::not_done(
            ExecStatus::Timeout,
            format!(
                "{} killed with its process group after the timeout",
                program.display()
            ),
            run.duration,
        ),
        ProcessEnd::Cancelled => ActionResult::not_done(
            ExecStatus::Cancelled,
            "cancelled by the caller".to_string(),
            run.duration,
        ),
        ProcessEnd::SpawnFailed(e) => {
            let status = match e.kind() {
                std::io::ErrorKind::NotFound => ExecStatus::NotInstalled,
                _ => ExecStatus::Error(format!("cannot run {}: {e}", program.display())),
            };
            let reason = match status {
                ExecStatus::NotInstalled => format!("{} not found", program.display()),
                _ => String::new(),
            };
            ActionResult::not_done(status, reason, run.duration)
        }
    };
    r.output = output;
    r
}

/// A parameter as an agent's meta-data declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParameterSpec {
    /// Name (`OCF_RESKEY_<name>`).
    pub name: String,
    /// `required="1"`.
    pub required: bool,
    /// `unique="1"`.
    pub unique: bool,
    /// `<content type=…>`.
    pub content_type: Option<String>,
    /// `<content default=…>`.
    pub default: Option<String>,
}

/// An action as an agent's meta-data declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionSpec {
    /// Action name.
    pub name: String,
    /// Advised timeout, as written (e.g. `20s`).
    pub timeout: Option<String>,
    /// Advised interval, as written.
    pub interval: Option<String>,
}

/// An agent's parsed meta-data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetaData {
    /// `<resource-agent name=…>`.
    pub name: String,
    /// Declared parameters, in document order.
    pub parameters: Vec<ParameterSpec>,
    /// Declared actions, in document order.
    pub actions: Vec<ActionSpec>,
}

/// Why meta-data could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetaDataError {
    /// The XML is malformed.
    #[error("meta-data XML is malformed at byte {position}: {message}")]
    Xml {
        /// Byte offset of the problem.
        position: u64,
        /// What the parser said.
        message: String,
    },
    /// No `<resource-agent>` element.
    #[error("meta-data has no <resource-agent> element")]
    NoResourceAgent,
    /// A `<parameter>` without a name.
    #[error("meta-data declares a <parameter> without a name")]
    UnnamedParameter,
}

fn attr(e: &BytesStart<'_>, key: &[u8]) -> Result<Option<String>, MetaDataError> {
    for a in e.attributes() {
        let a = a.map_err(|err| MetaDataError::Xml {
            position: 0,
            message: err.to_string(),
        })?;
        if a.key.as_ref() == key {
            let v = a.unescape_value().map_err(|err| MetaDataError::Xml {
                position: 0,
                message: err.to_string(),
            })?;
            return Ok(Some(v.into_owned()));
        }
    }
    Ok(None)
}

fn truthy(v: Option<String>) -> bool {
    matches!(
        v.as_deref().map(str::trim),
        Some("1" | "true" | "yes" | "True" | "TRUE")
    )
}

impl MetaData {
    /// Parses an agent's `meta-data` output.
    pub fn parse(xml: &str) -> Result<MetaData, MetaDataError> {
        let mut reader = Reader::from_str(xml);
        let mut stack: Vec<Vec<u8>> = Vec::new();
        let mut md = MetaData::default();
        let mut seen_root = false;
        loop {
            let ev = reader.read_event().map_err(|e| MetaDataError::Xml {
                position: reader.error_position(),
                message: e.to_string(),
            })?;
            let (e, empty) = match &ev {
                Event::Start(e) => (Some(e), false),
                Event::Empty(e) => (Some(e), true),
                Event::End(_) => {
                    stack.pop();
                    continue;
                }
                Event::Eof => break,
                _ => continue,
            };
            let Some(e) = e else { continue };
            let name = e.name().as_ref().to_vec();
            let parent = stack.last().map(Vec::as_slice);
            match (name.as_slice(), parent) {
                (b"resource-agent", None) => {
                    seen_root = true;
                    md.name = attr(e, b"name")?.unwrap_or_default();
                }
                (b"parameter", Some(b"parameters")) => {
                    let pname = attr(e, b"name")?.ok_or(MetaDataError::UnnamedParameter)?;
                    md.parameters.push(ParameterSpec {
                        name: pname,
                        required: truthy(attr(e, b"required")?),
                        unique: truthy(attr(e, b"unique")?),
                        content_type: None,
                        default: None,
                    });
                }
                (b"content", Some(b"parameter")) => {
                    if let Some(p) = md.parameters.last_mut() {
                        p.content_type = attr(e, b"type")?;
                        p.default = attr(e, b"default")?;
                    }
                }
                (b"action", Some(b"actions")) => {
                    if let Some(aname) = attr(e, b"name")? {
                        md.actions.push(ActionSpec {
                            name: aname,
                            timeout: attr(e, b"timeout")?,
                            interval: attr(e, b"interval")?,
                        });
                    }
                }
                _ => {}
            }
            if !empty {
                stack.push(name);
            }
        }
        if !seen_root {
            return Err(MetaDataError::NoResourceAgent);
        }
        Ok(md)
    }

    /// True when the agent declares `action`.
    pub fn has_action(&self, action: &str) -> bool {
        self.actions.iter().any(|a| a.name == action)
    }

    /// Checks instance parameters against the declaration: missing required parameters
    /// are errors; parameters the agent does not declare are warnings (they are passed
    /// through, but usually a typo).
    pub fn check_params(&self, params: &BTreeMap<String, String>) -> (Vec<String>, Vec<String>) {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        for p in &self.parameters {
            let given = params.get(&p.name).is_some_and(|v| !v.is_empty());
            if p.required && !given {
                errors.push(format!("missing required parameter `{}`", p.name));
            }
        }
        for k in params.keys() {
            if !self.parameters.iter().any(|p| &p.name == k) {
                warnings.push(format!("parameter `{k}` is not declared by the agent"));
            }
        }
        (errors, warnings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"<?xml version="1.0"?>
<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">
<resource-agent name="Sample" version="1.0">
<version>1.0</version>
<longdesc lang="en">Some &amp; text <b>nested</b></longdesc>
<parameters>
<parameter name="ip" unique="1" required="1">
<longdesc lang="en">The address</longdesc>
<content type="string" default="" />
</parameter>
<parameter name="nic"><content type="string" default="eth0"/></parameter>
<parameter name="flag" required="0"/>
</parameters>
<actions>
<action name="start" timeout="20s" />
<action name="monitor" timeout="20s" interval="10s" depth="0" />
<action name="meta-data" timeout="5s" />
</actions>
</resource-agent>
"#;

    #[test]
    fn parses_parameters_and_actions() {
        let md = MetaData::parse(SAMPLE).unwrap();
        assert_eq!(md.name, "Sample");
        let names: Vec<_> = md.parameters.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["ip", "nic", "flag"]);
        assert!(md.parameters[0].required && md.parameters[0].unique);
        assert!(!md.parameters[1].required);
        assert_eq!(md.parameters[1].default.as_deref(), Some("eth0"));
        assert!(md.has_action("monitor") && !md.has_action("validate-all"));
        assert_eq!(md.actions[1].interval.as_deref(), Some("10s"));
    }

    #[test]
    fn missing_required_parameter_is_an_error_and_unknown_one_a_warning() {
        let md = MetaData::parse(SAMPLE).unwrap();
        let mut params = BTreeMap::new();
        params.insert("nick".to_string(), "x".to_string());
        let (errors, warnings) = md.check_params(&params);
        assert_eq!(errors, ["missing required parameter `ip`"]);
        assert_eq!(warnings, ["parameter `nick` is not declared by the agent"]);
        params.insert("ip".to_string(), "10.0.0.1".to_string());
        assert!(md.check_params(&params).0.is_empty());
    }

    #[test]
    fn bad_meta_data_is_an_error_not_a_panic() {
        assert_eq!(
            MetaData::parse("<foo/>"),
            Err(MetaDataError::NoResourceAgent)
        );
        assert!(MetaData::parse("<resource-agent><parameters><parameter/>").is_err());
        assert!(matches!(
            MetaData::parse("<resource-agent a='1' a='2'>"),
            Err(MetaDataError::Xml { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let s = String::from_utf8_lossy(&bytes);
            let _ = MetaData::parse(&s);
            let _ = MetaData::parse(&format!("<resource-agent><parameters>{s}"));
        }
    }

    #[test]
    fn environment_carries_reskeys_and_meta() {
        let mut params = BTreeMap::new();
        params.insert("state".to_string(), "/tmp/x".to_string());
        let a = OcfAgent {
            instance: "d1".into(),
            provider: "heartbeat".into(),
            agent: "Dummy".into(),
            params,
            ocf_root: "/usr/lib/ocf".into(),
        };
        let opts = RunOptions {
            interval: Duration::from_secs(10),
            ..RunOptions::new(Duration::from_secs(20))
        };
        let env: BTreeMap<_, _> = a.environment(Action::Monitor, &opts).into_iter().collect();
        assert_eq!(env["OCF_ROOT"], "/usr/lib/ocf");
        assert_eq!(env["OCF_RESKEY_state"], "/tmp/x");
        assert_eq!(env["OCF_RESKEY_CRM_meta_timeout"], "20000");
        assert_eq!(env["OCF_RESKEY_CRM_meta_interval"], "10000");
        assert_eq!(env["OCF_RESOURCE_INSTANCE"], "d1");
        assert_eq!(env["OCF_RESOURCE_TYPE"], "Dummy");
        assert_eq!(env["OCF_RESOURCE_PROVIDER"], "heartbeat");
        let env: BTreeMap<_, _> = a.environment(Action::Start, &opts).into_iter().collect();
        assert_eq!(env["OCF_RESKEY_CRM_meta_interval"], "0");
        assert_eq!(
            a.path(),
            PathBuf::from("/usr/lib/ocf/resource.d/heartbeat/Dummy")
        );
    }
}
