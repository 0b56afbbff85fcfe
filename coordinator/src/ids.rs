//! Typed ids that cannot be mixed up: a job id is never taken for a batch id.
//! On the wire they are strings with a prefix (`b12`, `j345`, `w3`); the bare
//! number is accepted too, so `stylefarm watch 12` works.

use std::fmt;

use crate::error::CoordError;

macro_rules! typed_id {
    ($name:ident, $prefix:literal, $what:literal) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// Parses `b12` or `12`; `field` names the request field in the error.
            pub fn parse(text: &str, field: &str) -> Result<$name, CoordError> {
                let digits = text.strip_prefix($prefix).unwrap_or(text);
                match digits.parse::<i64>() {
                    Ok(n) if n > 0 => Ok($name(n)),
                    _ => Err(CoordError::invalid(field, format!("`{text}` is not a {} id (like {}12)", $what, $prefix))),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", $prefix, self.0)
            }
        }
    };
}

typed_id!(BatchId, "b", "batch");
typed_id!(JobId, "j", "job");
typed_id!(WorkerId, "w", "worker");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_with_or_without_prefix_and_reject_others() {
        assert_eq!(BatchId::parse("b12", "batch_id").unwrap(), BatchId(12));
        assert_eq!(JobId::parse("7", "job_id").unwrap(), JobId(7));
        assert_eq!(JobId(7).to_string(), "j7");
        let e = BatchId::parse("j12", "batch_id").unwrap_err().to_string();
        assert!(e.contains("batch_id") && e.contains("j12"), "{e}");
        assert!(WorkerId::parse("w0", "worker_id").is_err());
        assert!(WorkerId::parse("", "worker_id").is_err());
    }
}
