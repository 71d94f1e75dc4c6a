//! The CF stacks a buildpack zip can be built for.

use std::fmt;
use std::str::FromStr;

use crate::errors::PackagerError;

/// The stack a zip is built for: one named stack, or `any` (libbuildpack's `-any-stack`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    /// Ubuntu 18.04, deprecated but still deployed.
    Cflinuxfs3,
    /// Ubuntu 22.04, the default stack.
    Cflinuxfs4,
    /// Ubuntu 24.04, opt-in.
    Cflinuxfs5,
    /// No `stack:` in the manifest: CF accepts the zip for every stack. The binaries are static,
    /// so one zip really does serve all of them.
    Any,
}

impl Stack {
    /// Every named stack, in the order the `any` manifest lists them.
    pub const NAMED: [Stack; 3] = [Stack::Cflinuxfs3, Stack::Cflinuxfs4, Stack::Cflinuxfs5];

    /// The stack's name as CF spells it (`any` for [`Stack::Any`]).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Stack::Cflinuxfs3 => "cflinuxfs3",
            Stack::Cflinuxfs4 => "cflinuxfs4",
            Stack::Cflinuxfs5 => "cflinuxfs5",
            Stack::Any => "any",
        }
    }

    /// The value of the packaged manifest's `stack:`; `None` for `any`, which omits it.
    #[must_use]
    pub fn manifest_stack(self) -> Option<&'static str> {
        (self != Stack::Any).then(|| self.as_str())
    }
}

impl fmt::Display for Stack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Stack {
    type Err = PackagerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Stack::Cflinuxfs3,
            Stack::Cflinuxfs4,
            Stack::Cflinuxfs5,
            Stack::Any,
        ]
        .into_iter()
        .find(|stack| stack.as_str() == s)
        .ok_or_else(|| PackagerError::UnknownStack(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stack_parses_from_its_own_name() {
        for stack in [
            Stack::Cflinuxfs3,
            Stack::Cflinuxfs4,
            Stack::Cflinuxfs5,
            Stack::Any,
        ] {
            assert_eq!(stack.as_str().parse::<Stack>().ok(), Some(stack));
        }
    }

    #[test]
    fn an_unknown_stack_is_refused_with_the_list_of_known_ones() {
        let err = "cflinuxfs2"
            .parse::<Stack>()
            .expect_err("cflinuxfs2 is gone");
        assert_eq!(
            err.to_string(),
            "Unknown stack \"cflinuxfs2\": expected one of cflinuxfs3, cflinuxfs4, cflinuxfs5 or any"
        );
    }

    #[test]
    fn any_omits_the_manifest_stack() {
        assert_eq!(Stack::Any.manifest_stack(), None);
        assert_eq!(Stack::Cflinuxfs4.manifest_stack(), Some("cflinuxfs4"));
    }
}
