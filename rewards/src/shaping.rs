//! Length shaping: the Kimi k1.5 group length reward and DAPO's soft overlong punishment,
//! with coefficients per reasoning mode — Think Max gets a much smaller length penalty and a
//! larger budget, so it is free to reason longer.

use datasets::chat::Mode;
use serde::{Deserialize, Serialize};

/// Kimi k1.5: within a group, `λ_i = 0.5 − (len_i − min)/(max − min)`; a correct response
/// gets `λ_i`, a wrong one `min(0, λ_i)`; all lengths equal → 0.
pub fn kimi_length_rewards(lengths: &[usize], correct: &[bool]) -> Vec<f32> {
    let (Some(&min), Some(&max)) = (lengths.iter().min(), lengths.iter().max()) else {
        return vec![];
    };
    if max == min {
        return vec![0.0; lengths.len()];
    }
    lengths
        .iter()
        .zip(correct)
        .map(|(&l, &c)| {
            let lam = 0.5 - (l - min) as f32 / (max - min) as f32;
            if c {
                lam
            } else {
                lam.min(0.0)
            }
        })
        .collect()
}

/// DAPO soft overlong punishment: 0 up to `l_max − l_cache`, then linear down to −1 at
/// `l_max`, and −1 beyond.
pub fn dapo_overlong(len: usize, l_max: usize, l_cache: usize) -> f32 {
    let soft = l_max.saturating_sub(l_cache);
    if len <= soft {
        0.0
    } else if len <= l_max {
        (soft as f32 - len as f32) / l_cache.max(1) as f32
    } else {
        -1.0
    }
}

/// Length-shaping settings of one reasoning mode.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModeShaping {
    /// Weight of the Kimi group length reward.
    pub kimi_coef: f32,
    /// Weight of the DAPO overlong punishment.
    pub overlong_coef: f32,
    /// Response budget (tokens) and the soft zone before it.
    pub max_len: usize,
    pub cache_len: usize,
}

/// Per-mode shaping.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LengthShaping {
    pub non_think: ModeShaping,
    pub think_high: ModeShaping,
    pub think_max: ModeShaping,
}

impl Default for LengthShaping {
    fn default() -> Self {
        LengthShaping {
            // Budgets leave every built-in reference solution (tool results included) inside
            // the soft zone (test below): the three-turn agent.chain episode (lookup, then
            // calculator, then the answer) is ~160 tokens even without reasoning.
            non_think: ModeShaping { kimi_coef: 0.1, overlong_coef: 1.0, max_len: 224, cache_len: 32 },
            think_high: ModeShaping { kimi_coef: 0.1, overlong_coef: 1.0, max_len: 320, cache_len: 48 },
            // Think Max: reduced length penalty, larger budget.
            think_max: ModeShaping { kimi_coef: 0.02, overlong_coef: 0.25, max_len: 448, cache_len: 96 },
        }
    }
}

impl LengthShaping {
    pub fn for_mode(&self, m: Mode) -> &ModeShaping {
        match m {
            Mode::NonThink => &self.non_think,
            Mode::ThinkHigh => &self.think_high,
            Mode::ThinkMax => &self.think_max,
        }
    }

    /// Shaped rewards of one group (same prompt, same mode): task reward + weighted length terms.
    pub fn apply(&self, mode: Mode, rewards: &[f32], lengths: &[usize], correct: &[bool]) -> Vec<f32> {
        let s = self.for_mode(mode);
        let kimi = kimi_length_rewards(lengths, correct);
        rewards
            .iter()
            .enumerate()
            .map(|(i, &r)| {
                r + s.kimi_coef * kimi.get(i).copied().unwrap_or(0.0)
                    + s.overlong_coef * dapo_overlong(lengths[i], s.max_len, s.cache_len)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_from_the_notes() {
        assert_eq!(kimi_length_rewards(&[100, 200, 300], &[true, true, false]), vec![0.5, 0.0, -0.5]);
        assert_eq!(kimi_length_rewards(&[50, 50, 50], &[true, false, true]), vec![0.0, 0.0, 0.0]);
        assert_eq!(dapo_overlong(16000, 20480, 4096), 0.0);
        assert_eq!(dapo_overlong(18432, 20480, 4096), -0.5);
        assert_eq!(dapo_overlong(20480, 20480, 4096), -1.0);
        assert_eq!(dapo_overlong(20481, 20480, 4096), -1.0);
    }

    #[test]
    fn think_max_is_penalised_less() {
        let s = LengthShaping::default();
        let long = [300usize, 300];
        let high = s.apply(Mode::ThinkHigh, &[1.0, 1.0], &long, &[true, true]);
        let max = s.apply(Mode::ThinkMax, &[1.0, 1.0], &long, &[true, true]);
        assert!(max[0] > high[0]);
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;
    use datasets::tasks::{self, Split};
    use datasets::{ByteTokenizer, Tokenizer};

    /// Every built-in reference solution (assistant turns + inserted tool results) must fit the
    /// default response budget of its mode with room to spare: a budget that cuts the
    /// reference off makes a domain unsolvable in that mode, and GRPO then sees no reward.
    #[test]
    fn default_budgets_fit_every_reference_solution() {
        let s = LengthShaping::default();
        let mut bad = Vec::new();
        for d in tasks::domains() {
            for difficulty in 1..=3 {
                for m in Mode::ALL {
                    let longest = (0..32)
                        .map(|i| {
                            let t = tasks::generate(d.domain, Split::Train, 0, i, Some(difficulty)).unwrap();
                            t.reference_segments(m).iter().map(|(x, _)| ByteTokenizer.encode(x).len()).sum::<usize>()
                        })
                        .max()
                        .unwrap();
                    let soft = s.for_mode(m).max_len - s.for_mode(m).cache_len;
                    if longest > soft {
                        bad.push(format!("{} d{difficulty} {m:?}: up to {longest} > {soft}", d.domain));
                    }
                }
            }
        }
        assert!(bad.is_empty(), "references longer than the soft budget:\n{}", bad.join("\n"));
    }
}
