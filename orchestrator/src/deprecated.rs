//! Flag spellings that were renamed so that one concept has one name across verbs. Scripts
//! that use an old spelling keep working for one release: [`rewrite`] turns it into the new
//! one before clap parses the command line and says so on stderr. `--help` and completions
//! show only the new names. This table is the one place the old spellings live.
//!
//! | concept | name | old spellings |
//! |---|---|---|
//! | starting checkpoint of a training verb | `--base` | `opd --student` |
//! | checkpoint a verb reads | `--checkpoint` | `model quantize --in` |
//! | domains (a name or a pattern) | `--domains` | `grpo --domain`, `tasks sample --domain` |
//! | reasoning modes | `--modes` | `eval --mode` |
//! | prompts per step (RL verbs) | `--prompts-per-step` | `grpo --prompts`, `opd --batch` |
//! | a dataset file | `--data` | `opd --prompts`, `sft --prompts` |
//! | micro-batches per optimizer step | `--accum` | `sft --grad-accum`, `pretrain --grad-accum` |
//! | queue URL | `--queue` | `bench queue --redis` |
//! | run name | `--name` | `worker --run` (`--run` is a run directory, as in `dashboard`) |
//! | Anticipatory Routing | `--routing free --anticipatory spike --anticipatory-dt DT` | `grpo --routing anticipatory:DT` |

use std::ffi::OsString;

/// A renamed flag of the verb `verb` (`"grpo"`, `"tasks sample"`).
struct Renamed {
    verb: &'static str,
    old: &'static str,
    new: &'static str,
}

const RENAMED: &[Renamed] = &[
    Renamed { verb: "opd", old: "--student", new: "--base" },
    Renamed { verb: "model quantize", old: "--in", new: "--checkpoint" },
    Renamed { verb: "grpo", old: "--domain", new: "--domains" },
    Renamed { verb: "tasks sample", old: "--domain", new: "--domains" },
    Renamed { verb: "eval", old: "--mode", new: "--modes" },
    Renamed { verb: "grpo", old: "--prompts", new: "--prompts-per-step" },
    Renamed { verb: "opd", old: "--batch", new: "--prompts-per-step" },
    Renamed { verb: "opd", old: "--prompts", new: "--data" },
    Renamed { verb: "sft", old: "--prompts", new: "--data" },
    Renamed { verb: "sft", old: "--grad-accum", new: "--accum" },
    Renamed { verb: "pretrain", old: "--grad-accum", new: "--accum" },
    Renamed { verb: "bench queue", old: "--redis", new: "--queue" },
    Renamed { verb: "worker", old: "--run", new: "--name" },
];

/// Verbs with subcommands: their verb is two words.
const GROUPS: [&str; 4] = ["model", "bench", "tasks", "trajectories"];

/// Global flags that take a value (they may come before the verb).
const GLOBAL_WITH_VALUE: [&str; 1] = ["--redis-password-file"];

/// The command line with every old spelling replaced by the new one, and one warning per
/// replacement. Arguments after `--` are left alone.
pub fn rewrite(args: Vec<OsString>) -> (Vec<OsString>, Vec<String>) {
    let verb = verb_of(&args);
    let mut out = Vec::with_capacity(args.len() + 4);
    let mut warnings = Vec::new();
    let mut iter = args.into_iter().enumerate().peekable();
    let mut rest_literal = false;
    while let Some((i, a)) = iter.next() {
        let Some(text) = a.to_str().filter(|_| i > 0 && !rest_literal).map(str::to_string) else {
            out.push(a);
            continue;
        };
        if text == "--" {
            rest_literal = true;
            out.push(a);
            continue;
        }
        let (flag, inline) = match text.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (text.clone(), None),
        };
        if verb == "grpo" && flag == "--routing" {
            let value = match inline.clone() {
                Some(v) => Some(v),
                None => iter.peek().and_then(|(_, v)| v.to_str()).map(str::to_string),
            };
            if let Some(dt) = value.as_deref().and_then(|v| v.strip_prefix("anticipatory:")) {
                if !text.contains('=') {
                    iter.next(); // the value was the next argument
                }
                warnings.push(format!(
                    "`--routing anticipatory:{dt}` is deprecated; use `--routing free --anticipatory spike --anticipatory-dt {dt}` (the old spelling is accepted until the next release)"
                ));
                out.extend(
                    ["--routing", "free", "--anticipatory", "spike", "--anticipatory-dt", dt].map(OsString::from),
                );
                continue;
            }
        }
        match RENAMED.iter().find(|r| r.verb == verb && r.old == flag) {
            Some(r) => {
                warnings.push(format!(
                    "`{} {}` is deprecated; use `{}` (the old spelling is accepted until the next release)",
                    r.verb, r.old, r.new
                ));
                out.push(match inline {
                    Some(v) => OsString::from(format!("{}={v}", r.new)),
                    None => OsString::from(r.new),
                });
            }
            None => out.push(a),
        }
    }
    (out, warnings)
}

/// `"grpo"`, `"tasks sample"`, or `""` when no verb is given.
fn verb_of(args: &[OsString]) -> String {
    let mut words = Vec::new();
    let mut skip_value = false;
    for a in args.iter().skip(1) {
        let Some(a) = a.to_str() else { break };
        if skip_value {
            skip_value = false;
            continue;
        }
        if a.starts_with('-') {
            if words.is_empty() && GLOBAL_WITH_VALUE.contains(&a) {
                skip_value = true;
            }
            if words.is_empty() {
                continue;
            }
            break;
        }
        words.push(a);
        if words.len() == 2 || !GROUPS.contains(&words[0]) {
            break;
        }
    }
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(line: &str) -> (String, Vec<String>) {
        let args = line.split(' ').map(OsString::from).collect();
        let (out, w) = rewrite(args);
        (out.iter().map(|a| a.to_str().unwrap()).collect::<Vec<_>>().join(" "), w)
    }

    #[test]
    fn old_spellings_become_new_ones_with_a_warning() {
        let (line, w) = run("v4post grpo --domain math.add --prompts 4 --out x");
        assert_eq!(line, "v4post grpo --domains math.add --prompts-per-step 4 --out x");
        assert_eq!(w.len(), 2);
        assert!(w[0].contains("`grpo --domain` is deprecated; use `--domains`"), "{}", w[0]);
        let (line, _) = run("v4post -v --redis-password-file f opd --student=s --prompts p.jsonl --batch 3");
        assert_eq!(line, "v4post -v --redis-password-file f opd --base=s --data p.jsonl --prompts-per-step 3");
        let (line, w) = run("v4post model quantize --in a --out b");
        assert_eq!((line.as_str(), w.len()), ("v4post model quantize --checkpoint a --out b", 1));
        let (line, w) = run("v4post tasks sample --domain math.add --out p.jsonl");
        assert_eq!((line.as_str(), w.len()), ("v4post tasks sample --domains math.add --out p.jsonl", 1));
    }

    #[test]
    fn legacy_anticipatory_routing_is_spelled_out() {
        let (line, w) = run("v4post grpo --routing anticipatory:3 --steps 2");
        assert_eq!(line, "v4post grpo --routing free --anticipatory spike --anticipatory-dt 3 --steps 2");
        assert_eq!(w.len(), 1);
        let (line, _) = run("v4post grpo --routing=anticipatory:3");
        assert_eq!(line, "v4post grpo --routing free --anticipatory spike --anticipatory-dt 3");
        let (line, w) = run("v4post grpo --routing keep");
        assert_eq!((line.as_str(), w.len()), ("v4post grpo --routing keep", 0));
    }

    /// New names, other verbs' flags of the same spelling, values and everything after `--`
    /// pass untouched.
    #[test]
    fn everything_else_passes_through() {
        for line in [
            "v4post eval --modes think_high --checkpoint c",
            "v4post dashboard --run runs/demo",
            "v4post score --in completions.jsonl",
            "v4post run --base b --name n",
            "v4post sft --data d --accum 2 --out o",
            "v4post grpo --domains x --out -- --domain",
            "v4post",
            "v4post --help",
        ] {
            let (out, w) = run(line);
            assert_eq!((out.as_str(), w.len()), (line, 0));
        }
    }
}
