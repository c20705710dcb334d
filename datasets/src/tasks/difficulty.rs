//! Which difficulty each built-in prompt is generated at: one level for every domain, or a
//! level or range per domain. A curriculum picks, per domain, the difficulty where the
//! starting policy is neither hopeless nor already perfect (a pass rate of 0 or 1 gives GRPO
//! no signal and leaves an expert nothing to beat); a range `lo-hi` mixes levels evenly.

use crate::error::{DataError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A difficulty level (1..=5) or an inclusive range of levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "LevelsRepr", into = "LevelsRepr")]
pub struct Levels {
    pub lo: u32,
    pub hi: u32,
}

impl Levels {
    pub fn new(lo: u32, hi: u32) -> Result<Self> {
        if !(1..=5).contains(&lo) || !(1..=5).contains(&hi) || lo > hi {
            return Err(DataError::Format(format!(
                "difficulty `{}`: expected a level 1..5 or a range lo-hi with 1 ≤ lo ≤ hi ≤ 5",
                Levels { lo, hi }
            )));
        }
        Ok(Levels { lo, hi })
    }

    /// The level of the prompt with this index: a range cycles through its levels, so any
    /// `n` consecutive prompts hold every level equally often (±1).
    pub fn at(&self, index: u64) -> u32 {
        self.lo + (index % u64::from(self.hi - self.lo + 1)) as u32
    }
}

impl fmt::Display for Levels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl std::str::FromStr for Levels {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || DataError::Format(format!("difficulty `{s}`: expected a level 1..5 or a range like 1-2"));
        let num = |t: &str| t.trim().parse::<u32>().map_err(|_| bad());
        match s.split_once('-') {
            Some((a, b)) => Levels::new(num(a)?, num(b)?),
            None => {
                let l = num(s)?;
                Levels::new(l, l)
            }
        }
    }
}

/// TOML/JSON form: `2` or `"1-2"`.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum LevelsRepr {
    One(u32),
    Text(String),
}

impl TryFrom<LevelsRepr> for Levels {
    type Error = DataError;
    fn try_from(r: LevelsRepr) -> Result<Self> {
        match r {
            LevelsRepr::One(l) => Levels::new(l, l),
            LevelsRepr::Text(t) => t.parse(),
        }
    }
}

impl From<Levels> for LevelsRepr {
    fn from(l: Levels) -> Self {
        if l.lo == l.hi {
            LevelsRepr::One(l.lo)
        } else {
            LevelsRepr::Text(l.to_string())
        }
    }
}

/// Difficulty of built-in prompts: a per-domain entry, else `all`, else the domain's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Difficulty {
    pub all: Option<Levels>,
    pub by_domain: BTreeMap<String, Levels>,
}

impl Difficulty {
    /// One level (None: each domain's default) for every domain.
    pub fn uniform(all: Option<u32>) -> Self {
        Difficulty { all: all.map(|l| Levels { lo: l, hi: l }), by_domain: BTreeMap::new() }
    }

    /// `all` plus per-domain entries; every entry must name a built-in domain.
    pub fn per_domain(all: Option<Levels>, by_domain: BTreeMap<String, Levels>) -> Result<Self> {
        for d in by_domain.keys() {
            if super::domain_info(d).is_none() {
                return Err(DataError::UnknownDomain(d.clone()));
            }
        }
        Ok(Difficulty { all, by_domain })
    }

    fn levels(&self, domain: &str) -> Option<&Levels> {
        self.by_domain.get(domain).or(self.all.as_ref())
    }

    /// The level of prompt `index` of `domain` (None: the domain's default).
    pub fn for_prompt(&self, domain: &str, index: u64) -> Option<u32> {
        self.levels(domain).map(|l| l.at(index))
    }

    /// How `domain`'s prompts are drawn, for reports: `2` or `1-2`.
    pub fn describe(&self, domain: &str) -> String {
        match self.levels(domain) {
            Some(l) => l.to_string(),
            None => super::domain_info(domain).map_or("default".into(), |d| d.default_difficulty.to_string()),
        }
    }
}

impl From<Option<u32>> for Difficulty {
    fn from(all: Option<u32>) -> Self {
        Difficulty::uniform(all)
    }
}

impl From<Option<Levels>> for Difficulty {
    fn from(all: Option<Levels>) -> Self {
        Difficulty { all, by_domain: BTreeMap::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_print_and_cycle() {
        let r: Levels = "1-2".parse().unwrap();
        assert_eq!((r.lo, r.hi), (1, 2));
        assert_eq!(r.to_string(), "1-2");
        assert_eq!((0..6).map(|i| r.at(i)).collect::<Vec<_>>(), [1, 2, 1, 2, 1, 2]);
        let one: Levels = " 3 ".parse().unwrap();
        assert_eq!((one.at(0), one.at(7), one.to_string()), (3, 3, "3".to_string()));
        for bad in ["0", "6", "2-1", "1-9", "x", "1-", "", "-2"] {
            assert!(bad.parse::<Levels>().is_err(), "{bad}");
        }
    }

    #[test]
    fn per_domain_entries_override_the_default_and_must_exist() {
        let by: BTreeMap<String, Levels> = [("code.loop".to_string(), Levels::new(2, 2).unwrap())].into();
        let d = Difficulty::per_domain(Some(Levels::new(1, 1).unwrap()), by).unwrap();
        assert_eq!(d.for_prompt("code.loop", 5), Some(2));
        assert_eq!(d.for_prompt("math.add", 5), Some(1));
        assert_eq!(Difficulty::uniform(None).for_prompt("math.add", 0), None);
        assert_eq!(d.describe("code.loop"), "2");
        assert_eq!(Difficulty::uniform(None).describe("math.add"), "2");
        let unknown: BTreeMap<String, Levels> = [("math.nope".to_string(), Levels::new(1, 1).unwrap())].into();
        assert!(matches!(Difficulty::per_domain(None, unknown), Err(DataError::UnknownDomain(_))));
        let ranged = Difficulty::from(Some("1-2".parse::<Levels>().unwrap()));
        assert_eq!((ranged.for_prompt("math.add", 0), ranged.for_prompt("math.add", 1)), (Some(1), Some(2)));
        assert_eq!(Difficulty::uniform(Some(3)).describe("if.json"), "3");
    }

    #[test]
    fn levels_serde_round_trips_as_number_or_range() {
        let m: BTreeMap<String, Levels> = serde_json::from_str(r#"{"a": 2, "b": "1-3"}"#).unwrap();
        assert_eq!(m["a"], Levels::new(2, 2).unwrap());
        assert_eq!(m["b"], Levels::new(1, 3).unwrap());
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"a":2,"b":"1-3"}"#);
        assert!(serde_json::from_str::<Levels>("9").is_err());
        assert!(serde_json::from_str::<Levels>(r#""3-1""#).is_err());
    }
}
