//! Who a caller is, once authenticated: a [`Principal`] with a [`Role`]. A
//! leaf: the scheduler, the API and the dashboard name callers with it, and
//! [`crate::auth`] makes them from tokens.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Submit,
    Worker,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Submit => "submit",
            Role::Worker => "worker",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(text: &str) -> std::result::Result<Role, String> {
        match text {
            "submit" => Ok(Role::Submit),
            "worker" => Ok(Role::Worker),
            "admin" => Ok(Role::Admin),
            other => Err(format!("`{other}` is not a role (submit, worker, admin)")),
        }
    }
}

/// An authenticated caller: the token's name and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

/// The name every caller has while authentication is off.
pub const LOCAL: &str = "local";

impl Principal {
    pub fn local() -> Principal {
        Principal { name: LOCAL.into(), role: Role::Admin }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether this caller may see and act on something `owner` made.
    pub fn owns(&self, owner: &str) -> bool {
        self.is_admin() || self.name == owner
    }
}
