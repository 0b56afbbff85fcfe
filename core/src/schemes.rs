//! The URL schemes the farm's storage opens: one list, for the storage layer,
//! the input policy (`policy`, which re-exports it) and the clients, which
//! treat a string of one of these schemes as a URL and anything else as a
//! local path. The Python client's copy is checked against this file.

/// Every scheme the storage layer opens.
pub const STORE_SCHEMES: [&str; 11] = ["file", "s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "memory", "http", "https"];

/// Whether the storage layer knows `scheme`.
pub fn known_scheme(scheme: &str) -> bool {
    STORE_SCHEMES.contains(&scheme)
}

/// Whether `text` is a URL of a scheme the storage knows (`s3://b/a.png`), rather than a path.
pub fn is_store_url(text: &str) -> bool {
    text.split_once("://").is_some_and(|(scheme, _)| known_scheme(scheme))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_of_known_schemes_only() {
        assert!(is_store_url("s3://bucket/a.png") && is_store_url("http://host/a.png"));
        assert!(!is_store_url("photos/a.png") && !is_store_url("ftp://host/a.png") && !is_store_url("C:/x"));
    }
}
