use std::fmt;
use std::str::FromStr;

use crate::AmError;

/// The published versions of the attention mechanism (the reference's `--version` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Version {
    /// Per tap: 1x1 conv C->C, batch norm, skip connection, ReLU, resize; fuser sum(C)->1000.
    #[default]
    Tame,
    /// Per tap: 1x1 conv C->1000, batch norm, ReLU, resize; fuser 1000*n->1000.
    NoSkipConnection,
    /// Per tap: 1x1 conv C->C, ReLU, resize; fuser sum(C)->1000.
    NoSkipNoBatchNorm,
    /// As [`Version::Tame`] with a sigmoid instead of the ReLU.
    SigmoidInFeatureBranch,
}

impl Version {
    /// Every version, in the order of the paper's ablation table.
    pub const ALL: [Version; 4] = [
        Version::Tame,
        Version::NoSkipConnection,
        Version::NoSkipNoBatchNorm,
        Version::SigmoidInFeatureBranch,
    ];

    /// The reference's name of this version.
    pub fn name(self) -> &'static str {
        match self {
            Version::Tame => "TAME",
            Version::NoSkipConnection => "Noskipconnection",
            Version::NoSkipNoBatchNorm => "NoskipNobatchnorm",
            Version::SigmoidInFeatureBranch => "Sigmoidinfeaturebranch",
        }
    }

    pub(crate) fn has_skip(self) -> bool {
        matches!(self, Version::Tame | Version::SigmoidInFeatureBranch)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Version {
    type Err = AmError;

    /// Parses a reference version name, ignoring case.
    fn from_str(s: &str) -> Result<Self, AmError> {
        Version::ALL
            .into_iter()
            .find(|v| v.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| AmError::UnknownVersion(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_reference_names_ignoring_case() {
        for v in Version::ALL {
            assert_eq!(v.name().parse::<Version>().unwrap(), v);
            assert_eq!(v.name().to_uppercase().parse::<Version>().unwrap(), v);
        }
        assert_eq!("tame".parse::<Version>().unwrap(), Version::Tame);
        let err = "V5".parse::<Version>().unwrap_err();
        assert!(err.to_string().contains("\"V5\""), "{err}");
    }
}
