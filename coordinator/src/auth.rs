//! Who is calling: API tokens, roles and the rule for when they are enforced.
//!
//! Tokens are `sf1_<id>_<secret>` (a 64-bit public id, a 256-bit secret). The
//! coordinator keeps only the secret's SHA-256, in `auth.sqlite` under the data
//! dir, next to the job state, so `stylefarm-coordinator token create|list|revoke`
//! work against a running coordinator's data dir as well as a stopped one: the
//! coordinator notices any change (SQLite's `data_version`) on the next call, so
//! a revocation takes effect at once, with no restart.
//!
//! Enforcement: as soon as the store holds any token (revoked ones included, so
//! revoking the last token does not open the coordinator), or with `--auth
//! required`. Before that, every caller is the local admin: the zero-config
//! mode, which the server allows only on loopback.
//!
//! Roles: `submit` (its own batches), `worker` (the WorkerApi), `admin`
//! (everything). Another submitter's batch or job answers NOT_FOUND, so a
//! submitter cannot even learn that it exists.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use tonic::Request;

use crate::error::{CoordError, Result};
use crate::secrets::{ApiToken, SecretHash};
use crate::store::StoreError;

pub use crate::identity::{Principal, Role, LOCAL};

/// When calls need a token (`--auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Enforced as soon as the data dir holds any token (revoked ones too).
    #[default]
    Auto,
    /// Always, even before any token exists.
    Required,
}

impl std::str::FromStr for AuthMode {
    type Err = String;
    fn from_str(text: &str) -> std::result::Result<AuthMode, String> {
        match text {
            "auto" => Ok(AuthMode::Auto),
            "required" => Ok(AuthMode::Required),
            other => Err(format!("`{other}` is not auto or required")),
        }
    }
}

/// Whether WorkerApi callers must present a TLS client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerCerts {
    /// A token is enough (no client CA configured).
    NotRequired,
    /// Mutual TLS: a certificate the configured client CA signed, and a token.
    Required,
}

/// Which part of the API a call belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// Submitting and following one's own batches: `submit` or `admin`.
    Client,
    /// The WorkerApi: `worker` or `admin`.
    Worker,
    /// The whole farm (e.g. every worker): `admin` only.
    Admin,
}

impl Api {
    fn allows(self, role: Role) -> bool {
        matches!((self, role), (_, Role::Admin) | (Api::Client, Role::Submit) | (Api::Worker, Role::Worker))
    }
}

/// A caller the gate (`crate::gate`) authenticated from the headers,
/// handed to the handler in the request's extensions. Only this crate
/// makes one; a client cannot (extensions never cross the wire).
#[derive(Debug, Clone)]
pub struct Authenticated(Principal);

impl Authenticated {
    pub(crate) fn new(principal: Principal) -> Authenticated {
        Authenticated(principal)
    }
}

/// What importing a token did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imported {
    Added,
    /// The same token was there already.
    Present,
    /// The same token was there, revoked: it stays revoked.
    Revoked,
}

/// A token as `token list` shows it (never the secret).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
}

#[derive(Debug, Clone)]
struct TokenRow {
    name: String,
    role: Role,
    hash: SecretHash,
    revoked: bool,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    revoked_ms INTEGER
);
";

/// The token table (`DATA_DIR/auth.sqlite`).
pub struct TokenStore {
    conn: Mutex<Connection>,
    /// Says when another process (`token create/revoke`) may have written.
    watch: crate::filewatch::FileWatch,
}

/// `token list` reads the role column as a [`Role`]; a value this version
/// does not know is an error naming it.
impl rusqlite::types::FromSql for Role {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Role> {
        value.as_str()?.parse().map_err(|e: String| rusqlite::types::FromSqlError::Other(e.into()))
    }
}

fn db_err(e: rusqlite::Error) -> CoordError {
    CoordError::Store(StoreError::Tokens(std::sync::Arc::new(e)))
}

fn now_ms() -> i64 {
    crate::clock::now_ms()
}

impl TokenStore {
    pub fn open(data_dir: &Path) -> Result<TokenStore> {
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::io("cannot create the data directory", e))?;
        let conn = Connection::open(data_dir.join("auth.sqlite")).map_err(db_err)?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA busy_timeout=5000;").map_err(db_err)?;
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        let (db, wal) = (data_dir.join("auth.sqlite"), data_dir.join("auth.sqlite-wal"));
        let watch = crate::filewatch::FileWatch::new(&[&db, &wal]);
        Ok(TokenStore { conn: Mutex::new(conn), watch })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a token; the only time its text exists is this return value.
    pub fn create(&self, name: &str, role: Role) -> Result<String> {
        let token = ApiToken::generate();
        self.insert(name, role, &token)?;
        Ok(token.expose())
    }

    /// Takes in a token made elsewhere (`stylefarm-coordinator init`, or an
    /// operator's secret store), so deployments can hand the same text to the
    /// coordinator and to its callers. Importing it again is a no-op; a
    /// different token under a name already taken is refused (names are
    /// never reused), and a revoked one stays revoked.
    pub fn import(&self, name: &str, role: Role, token: &str) -> Result<Imported> {
        let malformed = || CoordError::invalid("token", format!("`{name}` is not sf1_<16 hex digits>_<64 hex digits>"));
        let token = ApiToken::parse(token).filter(ApiToken::is_canonical).ok_or_else(malformed)?;
        let existing: Option<(String, String, String, Option<i64>)> = self
            .conn()
            .query_row("SELECT id, role, secret_sha256, revoked_ms FROM tokens WHERE name = ?1", params![name], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()
            .map_err(db_err)?;
        match existing {
            None => {
                self.insert(name, role, &token)?;
                Ok(Imported::Added)
            }
            Some((known_id, known_role, hash, revoked))
                if known_id == token.id() && known_role == role.as_str() && SecretHash::from_hex(&hash).verify(token.secret()) =>
            {
                Ok(if revoked.is_some() { Imported::Revoked } else { Imported::Present })
            }
            Some(_) => Err(CoordError::FailedPrecondition(format!(
                "a different token named `{name}` exists (names are never reused): import this one under a new name, or revoke and rename"
            ))),
        }
    }

    fn insert(&self, name: &str, role: Role, token: &ApiToken) -> Result<()> {
        if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b)) {
            return Err(CoordError::invalid("name", "1..=64 characters of a-z A-Z 0-9 - _ . @"));
        }
        if name == LOCAL {
            return Err(CoordError::invalid("name", "`local` is the name of the unauthenticated caller"));
        }
        let conn = self.conn();
        let taken: Option<String> =
            conn.query_row("SELECT id FROM tokens WHERE name = ?1 OR id = ?2", params![name, token.id()], |r| r.get(0)).optional().map_err(db_err)?;
        if taken.is_some() {
            return Err(CoordError::FailedPrecondition(format!(
                "a token named `{name}` (or with its id) exists (names are never reused, even after revocation)"
            )));
        }
        conn.execute(
            "INSERT INTO tokens (id, name, role, secret_sha256, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![token.id(), name, role.as_str(), SecretHash::of(token.secret()).to_hex(), now_ms()],
        )
        .map_err(db_err)?;
        Ok(())
    }

    /// Imports every token file of `dir` (see [`TokenStore::import`]): each
    /// is named `ROLE.NAME` (`admin.ops`, `worker.workers`, `submit.alice`)
    /// and holds the token. Anything unreadable or malformed is an error: a
    /// coordinator that cannot read the tokens it was given does not start.
    pub fn import_dir(&self, dir: &Path) -> Result<Vec<(String, Imported)>> {
        let unreadable = |e: std::io::Error| CoordError::FailedPrecondition(format!("reading the tokens in {}: {e}", dir.display()));
        let mut entries: Vec<_> = std::fs::read_dir(dir).map_err(unreadable)?.collect::<std::io::Result<_>>().map_err(unreadable)?;
        entries.sort_by_key(|e| e.file_name());
        let mut imported = Vec::new();
        for entry in entries {
            let file = entry.file_name().to_string_lossy().into_owned();
            // Kubernetes mounts a Secret as links beside a `..data` folder
            if file.starts_with('.') || entry.path().is_dir() {
                continue;
            }
            let (role, name) =
                file.split_once('.').ok_or_else(|| CoordError::invalid("tokens", format!("{file}: name token files ROLE.NAME, e.g. worker.workers")))?;
            let role: Role = role.parse().map_err(|e: String| CoordError::invalid("tokens", format!("{file}: {e}")))?;
            let text = std::fs::read_to_string(entry.path()).map_err(unreadable)?;
            imported.push((name.to_string(), self.import(name, role, &text)?));
        }
        Ok(imported)
    }

    pub fn list(&self) -> Result<Vec<TokenInfo>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id, name, role, created_ms, revoked_ms FROM tokens ORDER BY created_ms, name").map_err(db_err)?;
        let rows = stmt
            .query_map([], |r| Ok(TokenInfo { id: r.get(0)?, name: r.get(1)?, role: r.get(2)?, created_ms: r.get(3)?, revoked_ms: r.get(4)? }))
            .map_err(db_err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(db_err)
    }

    /// Revokes the token named `name`; false if it was revoked already.
    pub fn revoke(&self, name: &str) -> Result<bool> {
        let conn = self.conn();
        let exists: Option<Option<i64>> =
            conn.query_row("SELECT revoked_ms FROM tokens WHERE name = ?1", params![name], |r| r.get(0)).optional().map_err(db_err)?;
        match exists {
            None => Err(CoordError::not_found("token", name)),
            Some(Some(_)) => Ok(false),
            Some(None) => {
                conn.execute("UPDATE tokens SET revoked_ms = ?2 WHERE name = ?1", params![name, now_ms()]).map_err(db_err)?;
                Ok(true)
            }
        }
    }

    /// `Some(rows)` if the table changed since `version` (another connection
    /// committed), with the new version.
    fn reload_if_changed(&self, version: i64) -> Result<Option<(i64, HashMap<String, TokenRow>)>> {
        let conn = self.conn();
        let now: i64 = conn.prepare_cached("PRAGMA data_version").and_then(|mut st| st.query_row([], |r| r.get(0))).map_err(db_err)?;
        if now == version {
            return Ok(None);
        }
        let mut stmt = conn.prepare("SELECT id, name, role, secret_sha256, revoked_ms FROM tokens").map_err(db_err)?;
        let rows = stmt
            .query_map([], |r| {
                let role: String = r.get(2)?;
                let hash: String = r.get(3)?;
                let revoked: Option<i64> = r.get(4)?;
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, role, hash, revoked.is_some()))
            })
            .map_err(db_err)?;
        let mut tokens = HashMap::new();
        for row in rows {
            let (id, name, role, hash, revoked) = row.map_err(db_err)?;
            // a row this version cannot read is skipped (and so refused), never fatal
            let Ok(role) = role.parse::<Role>() else {
                tracing::warn!(token = %name, "token with an unknown role is ignored");
                continue;
            };
            tokens.insert(id, TokenRow { name, role, hash: SecretHash::from_hex(&hash), revoked });
        }
        Ok(Some((now, tokens)))
    }
}

struct Cache {
    version: i64,
    tokens: HashMap<String, TokenRow>,
}

/// Checks every call's credentials (and, under mutual TLS, a worker's certificate).
pub struct Authenticator {
    store: TokenStore,
    mode: AuthMode,
    worker_certs: WorkerCerts,
    cache: Mutex<Cache>,
}

impl Authenticator {
    pub fn new(store: TokenStore, mode: AuthMode, worker_certs: WorkerCerts) -> Authenticator {
        Authenticator { store, mode, worker_certs, cache: Mutex::new(Cache { version: -1, tokens: HashMap::new() }) }
    }

    /// Whether calls need a token now.
    pub fn enforced(&self) -> Result<bool> {
        let cache = self.refreshed()?;
        Ok(self.mode == AuthMode::Required || !cache.tokens.is_empty())
    }

    /// The token cache, reloaded if the table changed. The file watch is
    /// asked under the cache's lock, so no call can see a change "taken" by
    /// another call that has not reloaded yet.
    fn refreshed(&self) -> Result<std::sync::MutexGuard<'_, Cache>> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let maybe_changed = self.store.watch.changed();
        if cache.version < 0 || maybe_changed {
            self.reload(&mut cache)?;
        }
        Ok(cache)
    }

    fn reload(&self, cache: &mut Cache) -> Result<()> {
        if let Some((version, tokens)) = self.store.reload_if_changed(cache.version)? {
            cache.version = version;
            cache.tokens = tokens;
        }
        Ok(())
    }

    /// The caller of `request`, allowed to use `api`.
    pub fn authenticate<T>(&self, request: &Request<T>, api: Api) -> Result<Principal> {
        if api == Api::Worker && self.worker_certs == WorkerCerts::Required && request.peer_certs().is_none_or(|c| c.is_empty()) {
            return Err(CoordError::Unauthenticated("the WorkerApi needs a client certificate (mutual TLS)".into()));
        }
        if let Some(Authenticated(principal)) = request.extensions().get::<Authenticated>() {
            // the gate checked the token before the message was read
            return self.authorize(principal.clone(), api);
        }
        self.authenticate_headers(request.metadata().as_ref(), api)
    }

    /// The caller named by the `authorization` header of `headers`, allowed
    /// to use `api` (the gate's check, before the message is read).
    pub fn authenticate_headers(&self, headers: &http::HeaderMap, api: Api) -> Result<Principal> {
        let header = match headers.get("authorization") {
            Some(value) => Some(value.to_str().map_err(|_| CoordError::Unauthenticated("malformed authorization metadata".into()))?),
            None => None,
        };
        self.authenticate_token(header, api, "missing `authorization: Bearer TOKEN` metadata (--token-file or STYLEFARM_TOKEN)")
    }

    /// The caller presenting `credential` (`Bearer TOKEN` or the bare token;
    /// None: `missing` is the error once tokens are needed), allowed to use `api`.
    pub fn authenticate_token(&self, credential: Option<&str>, api: Api, missing: &str) -> Result<Principal> {
        let principal = {
            let cache = self.refreshed()?;
            if self.mode == AuthMode::Auto && cache.tokens.is_empty() {
                return Ok(Principal::local());
            }
            let text = credential.ok_or_else(|| CoordError::Unauthenticated(missing.into()))?;
            let token = text.strip_prefix("Bearer ").unwrap_or(text).trim();
            let invalid = || CoordError::Unauthenticated("invalid or revoked token".into());
            let (id, secret) = ApiToken::split(token).ok_or_else(invalid)?;
            let row = cache.tokens.get(id).ok_or_else(invalid)?;
            if !row.hash.verify(secret) || row.revoked {
                return Err(invalid());
            }
            Principal { name: row.name.clone(), role: row.role }
        };
        self.authorize(principal, api)
    }

    /// `principal`, if its role may use `api`.
    fn authorize(&self, principal: Principal, api: Api) -> Result<Principal> {
        if !api.allows(principal.role) {
            tracing::warn!(principal = %principal.name, role = %principal.role, api = ?api, "call refused: wrong role");
            return Err(CoordError::PermissionDenied(format!("`{}` has role {}, which may not call this", principal.name, principal.role)));
        }
        Ok(principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(token: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(t) = token {
            r.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        r
    }

    #[test]
    fn open_until_a_token_exists_then_roles_and_revocation_apply_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Authenticator::new(TokenStore::open(dir.path()).unwrap(), AuthMode::Auto, WorkerCerts::NotRequired);
        assert_eq!(auth.authenticate(&request(None), Api::Admin).unwrap(), Principal::local());
        // another connection (as `token create` in another process) adds tokens
        let cli = TokenStore::open(dir.path()).unwrap();
        let alice = cli.create("alice", Role::Submit).unwrap();
        let gpu = cli.create("gpu-07", Role::Worker).unwrap();
        assert!(alice.starts_with("sf1_") && alice.len() >= 4 + 16 + 1 + 64);
        assert!(cli.create("alice", Role::Admin).is_err(), "names are unique");
        let e = auth.authenticate(&request(None), Api::Client).unwrap_err();
        assert!(matches!(e, CoordError::Unauthenticated(_)), "{e}");
        let p = auth.authenticate(&request(Some(&alice)), Api::Client).unwrap();
        assert_eq!((p.name.as_str(), p.role), ("alice", Role::Submit));
        assert!(matches!(auth.authenticate(&request(Some(&alice)), Api::Worker), Err(CoordError::PermissionDenied(_))));
        assert!(matches!(auth.authenticate(&request(Some(&gpu)), Api::Client), Err(CoordError::PermissionDenied(_))));
        assert!(auth.authenticate(&request(Some(&gpu)), Api::Worker).is_ok());
        let last = if alice.ends_with('0') { '1' } else { '0' };
        let forged = format!("{}{last}", &alice[..alice.len() - 1]);
        assert!(matches!(auth.authenticate(&request(Some(&forged)), Api::Client), Err(CoordError::Unauthenticated(_))));
        assert!(matches!(auth.authenticate(&request(Some("sf1_nope")), Api::Client), Err(CoordError::Unauthenticated(_))));
        assert!(cli.revoke("alice").unwrap());
        assert!(!cli.revoke("alice").unwrap());
        assert!(matches!(auth.authenticate(&request(Some(&alice)), Api::Client), Err(CoordError::Unauthenticated(_))));
        cli.revoke("gpu-07").unwrap();
        assert!(auth.enforced().unwrap(), "revoking every token does not open the coordinator");
        let list = cli.list().unwrap();
        assert_eq!(list.len(), 2);
        assert!(list.iter().all(|t| t.revoked_ms.is_some()));
        let text = std::fs::read(dir.path().join("auth.sqlite")).unwrap();
        let secret = alice.rsplit('_').next().unwrap();
        assert!(!String::from_utf8_lossy(&text).contains(secret), "only hashes are stored");
    }

    #[test]
    fn tokens_made_elsewhere_are_imported_once_and_never_replace_another() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let made = TokenStore::open(elsewhere.path()).unwrap().create("x", Role::Worker).unwrap();
        let store = TokenStore::open(dir.path()).unwrap();
        assert_eq!(store.import("workers", Role::Worker, &format!("{made}\n")).unwrap(), Imported::Added);
        assert_eq!(store.import("workers", Role::Worker, &made).unwrap(), Imported::Present, "again: nothing changes");
        let auth = Authenticator::new(TokenStore::open(dir.path()).unwrap(), AuthMode::Auto, WorkerCerts::NotRequired);
        assert_eq!(auth.authenticate(&request(Some(&made)), Api::Worker).unwrap().name, "workers");
        let other = TokenStore::open(elsewhere.path()).unwrap().create("y", Role::Worker).unwrap();
        assert!(matches!(store.import("workers", Role::Worker, &other), Err(CoordError::FailedPrecondition(_))), "a name is never reused");
        assert!(store.import("ops", Role::Admin, &made).is_err(), "nor an id");
        assert!(matches!(store.import("bad", Role::Submit, "sf1_zz_00"), Err(CoordError::InvalidArgument { .. })));
        store.revoke("workers").unwrap();
        assert_eq!(store.import("workers", Role::Worker, &made).unwrap(), Imported::Revoked, "a revoked token stays revoked");
        // a folder of ROLE.NAME files, as a mounted Kubernetes Secret
        let files = tempfile::tempdir().unwrap();
        std::fs::write(files.path().join("submit.alice"), &other).unwrap();
        std::fs::create_dir(files.path().join("..2026_12_07")).unwrap();
        let imported = store.import_dir(files.path()).unwrap();
        assert_eq!(imported, vec![("alice".to_string(), Imported::Added)]);
        std::fs::write(files.path().join("boss.bob"), &other).unwrap();
        assert!(store.import_dir(files.path()).unwrap_err().to_string().contains("boss.bob"));
        assert!(store.import_dir(&files.path().join("missing")).is_err(), "an unreadable folder is an error");
    }

    #[test]
    fn required_mode_refuses_everyone_without_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Authenticator::new(TokenStore::open(dir.path()).unwrap(), AuthMode::Required, WorkerCerts::NotRequired);
        assert!(matches!(auth.authenticate(&request(None), Api::Client), Err(CoordError::Unauthenticated(_))));
    }
}
