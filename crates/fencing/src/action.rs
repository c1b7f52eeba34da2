//! Fencing actions and what each device protocol calls them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a device is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FenceAction {
    /// Cut the node's power (or its access to shared data) and verify it.
    Off,
    /// Restore power: un-fence.
    On,
    /// Off, then on. Success means the *off* part succeeded (FenceAgentAPI).
    Reboot,
    /// Is the node's plug on or off? fence-agents exit 0 = on, 2 = off.
    Status,
    /// Is the device reachable and working?
    Monitor,
    /// Which plugs (or hosts) does the device know?
    List,
}

impl FenceAction {
    /// The fence-agents name (`action=` on stdin).
    pub fn fence_agents_name(self) -> &'static str {
        match self {
            FenceAction::Off => "off",
            FenceAction::On => "on",
            FenceAction::Reboot => "reboot",
            FenceAction::Status => "status",
            FenceAction::Monitor => "monitor",
            FenceAction::List => "list",
        }
    }

    /// The Heartbeat `external/*` name (`$1`): Heartbeat called a reboot `reset`, had no
    /// per-plug status (its `status` checks the device, so it serves `monitor` too) and
    /// listed the hosts a device can fence with `gethosts`.
    pub fn external_name(self) -> &'static str {
        match self {
            FenceAction::Off => "off",
            FenceAction::On => "on",
            FenceAction::Reboot => "reset",
            FenceAction::Status | FenceAction::Monitor => "status",
            FenceAction::List => "gethosts",
        }
    }

    /// Whether the action takes a target node (a plug).
    pub fn has_target(self) -> bool {
        matches!(
            self,
            FenceAction::Off | FenceAction::On | FenceAction::Reboot | FenceAction::Status
        )
    }

    /// Whether success of this action means the target is fenced.
    pub fn fences(self) -> bool {
        matches!(self, FenceAction::Off | FenceAction::Reboot)
    }
}

impl fmt::Display for FenceAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.fence_agents_name())
    }
}

/// An action name that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown fence action {0:?}: expected off, on, reboot, status, monitor or list")]
pub struct UnknownAction(pub String);

impl FromStr for FenceAction {
    type Err = UnknownAction;

    /// Accepts the fence-agents names and Heartbeat's (`reset`, `gethosts`), any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "off" => FenceAction::Off,
            "on" => FenceAction::On,
            "reboot" | "reset" => FenceAction::Reboot,
            "status" => FenceAction::Status,
            "monitor" => FenceAction::Monitor,
            "list" | "gethosts" => FenceAction::List,
            _ => return Err(UnknownAction(s.to_string())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_heartbeat_aliases_parse() {
        for a in [
            FenceAction::Off,
            FenceAction::On,
            FenceAction::Reboot,
            FenceAction::Status,
            FenceAction::Monitor,
            FenceAction::List,
        ] {
            assert_eq!(a.fence_agents_name().parse::<FenceAction>(), Ok(a));
        }
        assert_eq!("RESET".parse::<FenceAction>(), Ok(FenceAction::Reboot));
        assert_eq!("gethosts".parse::<FenceAction>(), Ok(FenceAction::List));
        assert!("explode".parse::<FenceAction>().is_err());
    }
}
