//! Worker labels and the requirements batches place on them: worker pools.
//!
//! A worker carries labels (`pool=studio-b`, `vram=80`); a batch or a job may
//! require some (`pool=studio-b`, `vram>=48`, `gpu!=t4`). A job goes only to
//! workers whose labels meet every requirement. One policy for the worker's
//! flags, the coordinator's validation and the client's flags.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Most labels one worker carries.
pub const MAX_LABELS: usize = 32;
/// Most requirements on one batch or job.
pub const MAX_REQUIREMENTS: usize = 16;
/// Longest label key or value.
pub const MAX_LEN: usize = 63;

/// A worker's labels, key → value.
pub type Labels = BTreeMap<String, String>;

fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_LEN {
        return Err(format!("label key `{key}` must be 1..={MAX_LEN} characters"));
    }
    if !key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_./".contains(&b)) {
        return Err(format!("label key `{key}` may hold only a-z, 0-9, `-`, `_`, `.` and `/`"));
    }
    Ok(())
}

fn check_value(key: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_LEN {
        return Err(format!("the value of label `{key}` is longer than {MAX_LEN} characters"));
    }
    if !value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:".contains(&b)) {
        return Err(format!("the value of label `{key}` may hold only letters, digits, `-`, `_`, `.`, `/` and `:`"));
    }
    Ok(())
}

/// Parses `key=value` (a worker's `--label`).
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').ok_or_else(|| format!("label `{text}`: write KEY=VALUE, e.g. pool=studio-b"))?;
    let (key, value) = (key.trim(), value.trim());
    check_key(key)?;
    check_value(key, value)?;
    Ok((key.to_string(), value.to_string()))
}

/// Parses a comma-separated list, `pool=studio-b,vram=80` (what
/// `STYLEFARM_LABELS` and a KEDA trigger's `labels` hold), and checks the set.
pub fn parse_labels(text: &str) -> Result<Labels, String> {
    let labels = text.split(',').filter(|l| !l.trim().is_empty()).map(parse_label).collect::<Result<Labels, String>>()?;
    check_labels(&labels)?;
    Ok(labels)
}

/// Checks a whole label set (count, keys, values).
pub fn check_labels(labels: &Labels) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!("{} labels: at most {MAX_LABELS}", labels.len()));
    }
    for (key, value) in labels {
        check_key(key)?;
        check_value(key, value)?;
    }
    Ok(())
}

/// How a requirement compares a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Eq,
    Ne,
    /// The numeric comparisons: the label's value and the requirement's must both be numbers.
    Ge,
    Le,
    Gt,
    Lt,
}

impl Op {
    fn symbol(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Ge => ">=",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Lt => "<",
        }
    }

    fn numeric(self) -> bool {
        matches!(self, Op::Ge | Op::Le | Op::Gt | Op::Lt)
    }
}

/// One requirement, e.g. `pool=studio-b` or `vram>=48`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
    pub value: String,
}

impl Requirement {
    /// Whether `labels` meet it. A missing label meets only `!=`; a numeric
    /// comparison needs a numeric label.
    pub fn matches(&self, labels: &Labels) -> bool {
        let Some(have) = labels.get(&self.key) else { return self.op == Op::Ne };
        if !self.op.numeric() {
            return (have == &self.value) == (self.op == Op::Eq);
        }
        let (Ok(have), Ok(want)) = (have.parse::<f64>(), self.value.parse::<f64>()) else { return false };
        match self.op {
            Op::Ge => have >= want,
            Op::Le => have <= want,
            Op::Gt => have > want,
            Op::Lt => have < want,
            Op::Eq | Op::Ne => false,
        }
    }
}

/// Whether `labels` meet every requirement.
pub fn satisfied(requirements: &[Requirement], labels: &Labels) -> bool {
    requirements.iter().all(|r| r.matches(labels))
}

impl FromStr for Requirement {
    type Err = String;

    fn from_str(text: &str) -> Result<Requirement, String> {
        let text = text.trim();
        // the two-character operators first, so `>=` is not read as `>`
        let found = [Op::Ne, Op::Ge, Op::Le, Op::Eq, Op::Gt, Op::Lt].into_iter().find_map(|op| text.find(op.symbol()).map(|at| (at, op)));
        let Some((at, op)) = found else {
            return Err(format!("requirement `{text}`: write KEY=VALUE, KEY!=VALUE or KEY>=N (also >, <=, <), e.g. pool=studio-b or vram>=48"));
        };
        let (key, value) = (text[..at].trim(), text[at + op.symbol().len()..].trim());
        check_key(key).map_err(|e| format!("requirement `{text}`: {e}"))?;
        if value.is_empty() {
            return Err(format!("requirement `{text}`: no value after `{}`", op.symbol()));
        }
        check_value(key, value).map_err(|e| format!("requirement `{text}`: {e}"))?;
        if op.numeric() && !value.parse::<f64>().is_ok_and(f64::is_finite) {
            return Err(format!("requirement `{text}`: `{}` compares numbers, and `{value}` is not one", op.symbol()));
        }
        Ok(Requirement { key: key.to_string(), op, value: value.to_string() })
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.key, self.op.symbol(), self.value)
    }
}

/// Stored and sent as its text (`vram>=48`).
impl serde::Serialize for Requirement {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Requirement {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Requirement, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses a list of requirements, at most [`MAX_REQUIREMENTS`]; errors name
/// the entry (`{field}[i]`).
pub fn parse_requirements(texts: &[String], field: &str) -> Result<Vec<Requirement>, (String, String)> {
    if texts.len() > MAX_REQUIREMENTS {
        return Err((field.to_string(), format!("{} requirements: at most {MAX_REQUIREMENTS}", texts.len())));
    }
    texts.iter().enumerate().map(|(i, t)| t.parse().map_err(|e| (format!("{field}[{i}]"), e))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn req(text: &str) -> Requirement {
        text.parse().unwrap()
    }

    #[test]
    fn requirements_match_labels() {
        let studio = labels(&[("pool", "studio-b"), ("vram", "80")]);
        let small = labels(&[("pool", "render"), ("vram", "24")]);
        assert!(req("pool=studio-b").matches(&studio) && !req("pool=studio-b").matches(&small));
        assert!(req("vram>=48").matches(&studio) && !req("vram>=48").matches(&small));
        assert!(req("vram<48").matches(&small) && req("vram<=24").matches(&small) && !req("vram>24").matches(&small));
        assert!(req("pool!=studio-b").matches(&small) && req("gpu!=t4").matches(&small), "a missing label meets !=");
        assert!(!req("gpu=a100").matches(&small) && !req("gpu>=1").matches(&small), "and nothing else");
        assert!(!req("pool>=1").matches(&studio), "a numeric comparison of a non-number fails");
        assert!(satisfied(&[req("pool=studio-b"), req("vram>=48")], &studio));
        assert!(!satisfied(&[req("pool=studio-b"), req("vram>=96")], &studio));
        assert!(satisfied(&[], &Labels::new()));
        for text in ["pool=studio-b", "vram>=48", "a!=b", "x<1.5", "y>2", "z<=3"] {
            assert_eq!(req(text).to_string(), text);
        }
        assert_eq!(req(" vram >= 48 ").to_string(), "vram>=48");
    }

    #[test]
    fn bad_labels_and_requirements_are_named() {
        assert!("pool".parse::<Requirement>().unwrap_err().contains("KEY=VALUE"));
        assert!("vram>=lots".parse::<Requirement>().unwrap_err().contains("compares numbers"));
        assert!("vram>=inf".parse::<Requirement>().unwrap_err().contains("compares numbers"));
        assert!("Pool=x".parse::<Requirement>().unwrap_err().contains("a-z"));
        assert!("pool=".parse::<Requirement>().unwrap_err().contains("no value"));
        assert!("pool=a b".parse::<Requirement>().unwrap_err().contains("letters"));
        assert!(parse_label("pool").unwrap_err().contains("KEY=VALUE"));
        assert_eq!(parse_label("pool=studio-b").unwrap(), ("pool".into(), "studio-b".into()));
        assert_eq!(parse_labels("pool=studio-b, vram=80").unwrap(), labels(&[("pool", "studio-b"), ("vram", "80")]));
        assert!(parse_labels("pool=a,Pool=b").unwrap_err().contains("a-z"));
        assert!(parse_label(&format!("k={}", "v".repeat(64))).unwrap_err().contains("63"));
        let many: Labels = (0..33).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(check_labels(&many).unwrap_err().contains("at most 32"));
        let texts: Vec<String> = vec!["pool=a".into(), "vram>x".into()];
        assert_eq!(parse_requirements(&texts, "requires").unwrap_err().0, "requires[1]");
        let texts: Vec<String> = (0..17).map(|i| format!("k{i}=v")).collect();
        assert!(parse_requirements(&texts, "requires").unwrap_err().1.contains("at most 16"));
    }
}
