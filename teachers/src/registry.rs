//! The teacher registry: a TOML list of teachers, which samples each one teaches, and the
//! checks that make distillation meaningful (same vocabulary, same tokenizer).
//!
//! ```toml
//! [[teacher]]
//! id = "math"
//! checkpoint = "experts/math"      # relative to this file
//! domains = ["math.*"]             # patterns: exact, `prefix*`, or `*`
//!
//! [[teacher]]
//! id = "generalist"
//! checkpoint = "experts/general"
//! domains = ["*"]
//! weight = 0.25                    # mixes with every other teacher matching a sample
//! ```
//!
//! A sample's teacher weights are the `weight`s of all teachers whose patterns match its
//! domain, normalised to sum to one: one teacher per domain gives the default one-hot
//! weights; overlapping patterns give mixtures.
//!
//! Same tokenizer means equal [`Tokenizer::fingerprint`]s of the tokenizers the run loads
//! ([`tokenizer_for_checkpoint`]: a checkpoint's `tokenizer.json`, else the byte tokenizer; a
//! checkpoint given as a file inside its folder names the folder).

use crate::error::{Result, TeacherError};
use datasets::tokenizer::{checkpoint_folder, describe_tokenizer, tokenizer_for_checkpoint, ByteTokenizer, Tokenizer};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// One teacher of the registry.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherSpec {
    pub id: String,
    pub checkpoint: PathBuf,
    /// Domain patterns this teacher teaches.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Mixture weight (relative to other teachers matching the same sample).
    #[serde(default = "one")]
    pub weight: f32,
}

fn one() -> f32 {
    1.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(default)]
    teacher: Vec<TeacherSpec>,
}

/// The teachers of a distillation stage, in a fixed order (the processing order).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Registry {
    pub teachers: Vec<TeacherSpec>,
}

/// `*`, `all`, `prefix*` or an exact name.
pub fn pattern_matches(pattern: &str, domain: &str) -> bool {
    datasets::tasks::domain_matches(pattern, domain)
}

impl Registry {
    /// Parse a registry; relative checkpoint paths are resolved against `base_dir`.
    pub fn from_toml_str(text: &str, base_dir: &Path) -> Result<Self> {
        let f: RegistryFile = toml::from_str(text).map_err(|e| TeacherError::Registry(e.to_string()))?;
        let mut teachers = f.teacher;
        for t in &mut teachers {
            if t.checkpoint.is_relative() {
                t.checkpoint = base_dir.join(&t.checkpoint);
            }
        }
        Self::new(teachers)
    }

    /// Read a registry file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TeacherError::io(path, e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml_str(&text, base).map_err(|e| match e {
            TeacherError::Registry(m) => TeacherError::Registry(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    /// Check ids, weights and patterns.
    pub fn new(teachers: Vec<TeacherSpec>) -> Result<Self> {
        if teachers.is_empty() {
            return Err(TeacherError::Registry("no teachers: add at least one [[teacher]] entry".into()));
        }
        for (i, t) in teachers.iter().enumerate() {
            // an id is a name, never a path (directories named after one go through
            // datasets::safe_component), so `openai/gsm8k` is a fine id
            if t.id.trim().is_empty() || t.id.contains('\n') {
                return Err(TeacherError::Registry(format!("teacher #{i}: id `{}` must be a non-empty line", t.id)));
            }
            if teachers[..i].iter().any(|o| o.id == t.id) {
                return Err(TeacherError::Registry(format!("teacher id `{}` appears twice", t.id)));
            }
            if !(t.weight.is_finite() && t.weight > 0.0) {
                return Err(TeacherError::Registry(format!(
                    "teacher `{}`: weight must be positive, got {}",
                    t.id, t.weight
                )));
            }
            if t.domains.is_empty() {
                return Err(TeacherError::Registry(format!(
                    "teacher `{}`: give the domains it teaches (`domains = [\"math.*\"]`)",
                    t.id
                )));
            }
        }
        Ok(Registry { teachers })
    }

    pub fn len(&self) -> usize {
        self.teachers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.teachers.is_empty()
    }

    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.teachers.iter().position(|t| t.id == id)
    }

    /// Normalised teacher weights `(teacher index, weight)` of a sample of `domain`.
    pub fn weights_for(&self, domain: &str) -> Vec<(usize, f32)> {
        let hits: Vec<(usize, f32)> = self
            .teachers
            .iter()
            .enumerate()
            .filter(|(_, t)| t.domains.iter().any(|p| pattern_matches(p, domain)))
            .map(|(i, t)| (i, t.weight))
            .collect();
        let total: f32 = hits.iter().map(|h| h.1).sum();
        hits.into_iter().map(|(i, w)| (i, w / total)).collect()
    }

    /// Every domain must have a teacher.
    pub fn check_covers<'a>(&self, domains: impl IntoIterator<Item = &'a str>) -> Result<()> {
        let missing: Vec<&str> = domains.into_iter().filter(|d| self.weights_for(d).is_empty()).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(TeacherError::Registry(format!("no teacher for domain(s) {}", missing.join(", "))))
        }
    }

    /// Every teacher shares the student's vocabulary and tokenizer (reads only each
    /// teacher's `config.json` and tokenizer file). `student_dir` (None: a preset, the byte
    /// tokenizer) is the student's checkpoint folder or a file in it.
    pub fn validate_against(&self, student_dir: Option<&Path>, student: &model::Config) -> Result<()> {
        let student_tok: Box<dyn Tokenizer> = match student_dir {
            Some(d) => tokenizer_for_checkpoint(d)?,
            None => Box::new(ByteTokenizer),
        };
        for t in &self.teachers {
            let cfg_path = checkpoint_folder(&t.checkpoint).join("config.json");
            if !cfg_path.exists() {
                return Err(TeacherError::Teacher {
                    id: t.id.clone(),
                    msg: format!("{}: not a checkpoint directory (no config.json)", t.checkpoint.display()),
                });
            }
            let cfg = model::Config::from_file(&cfg_path)
                .map_err(|e| TeacherError::Teacher { id: t.id.clone(), msg: e.to_string() })?;
            if cfg.vocab_size != student.vocab_size {
                return Err(TeacherError::Teacher {
                    id: t.id.clone(),
                    msg: format!(
                        "vocabulary of {} tokens, but the student has {}: reverse KL over the vocabulary needs the same tokenizer",
                        cfg.vocab_size, student.vocab_size
                    ),
                });
            }
            let tok = tokenizer_for_checkpoint(&t.checkpoint)
                .map_err(|e| TeacherError::Teacher { id: t.id.clone(), msg: e.to_string() })?;
            if tok.fingerprint() != student_tok.fingerprint() {
                return Err(TeacherError::Teacher {
                    id: t.id.clone(),
                    msg: format!(
                        "its tokenizer ({}) differs from the student's ({}): distillation compares the \
                         two models' distributions token by token, so both need the same tokenizer.json \
                         (or neither, for the built-in byte tokenizer)",
                        describe_tokenizer(tok.as_ref(), Some(&t.checkpoint)),
                        describe_tokenizer(student_tok.as_ref(), student_dir),
                    ),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_weights() {
        let r = Registry::from_toml_str(
            r#"
            [[teacher]]
            id = "math"
            checkpoint = "e/math"
            domains = ["math.*"]
            [[teacher]]
            id = "gen"
            checkpoint = "/abs/gen"
            domains = ["*"]
            weight = 0.25
            "#,
            Path::new("/base"),
        )
        .unwrap();
        assert_eq!(r.teachers[0].checkpoint, PathBuf::from("/base/e/math"));
        assert_eq!(r.teachers[1].checkpoint, PathBuf::from("/abs/gen"));
        assert_eq!(r.weights_for("math.add"), vec![(0, 0.8), (1, 0.2)]);
        assert_eq!(r.weights_for("code.expr"), vec![(1, 1.0)]);
        assert!(r.check_covers(["math.add", "if.upper"]).is_ok());
    }

    #[test]
    fn clear_errors() {
        let e = |t: &str| Registry::from_toml_str(t, Path::new(".")).unwrap_err().to_string();
        assert!(e("").contains("no teachers"));
        assert!(e(
            "[[teacher]]\nid='a'\ncheckpoint='x'\ndomains=['m']\n[[teacher]]\nid='a'\ncheckpoint='y'\ndomains=['m']"
        )
        .contains("twice"));
        assert!(e("[[teacher]]\nid='a'\ncheckpoint='x'\ndomains=['m']\nweight=-1").contains("positive"));
        assert!(e("[[teacher]]\nid='a'\ncheckpoint='x'").contains("domains"));
        assert!(e("[[teacher]]\nid='a'\ncheckpoint='x'\ndomains=['m']\nbogus=1").contains("bogus"));
        assert!(e("[[teacher]]\nid=' '\ncheckpoint='x'\ndomains=['m']").contains("non-empty"));
        let r =
            Registry::from_toml_str("[[teacher]]\nid='a'\ncheckpoint='x'\ndomains=['math.*']", Path::new(".")).unwrap();
        assert!(r.check_covers(["code.expr"]).unwrap_err().to_string().contains("code.expr"));
    }
}
