//! Cloud accounts: the Azure service principals rha acts as.
//!
//! An account is a name for a subscription plus the application (client) id,
//! tenant id and client secret of a service principal. Scenarios name the
//! account (`replica.azure.account`); the secret never appears in a
//! scenario file, a log line, an error or a `Debug` (a [`ClientSecret`]
//! shows as `ClientSecret(****)`).
//!
//! Accounts live in one JSON file, by default
//! `$XDG_CONFIG_HOME/rha/accounts.json` (or `~/.config/rha/accounts.json`),
//! elsewhere with `RHA_ACCOUNTS` or an explicit path. The file is created
//! with mode 0600 in a directory of mode 0700 and replaced atomically; a
//! file that other users can read, or that another user owns, is refused
//! when loading, with the `chmod` that fixes it.
//!
//! [`test_account`] proves an account by getting a token with the
//! service-principal (client credentials) flow, `azure_identity`'s
//! `ClientSecretCredential`, and turns Azure AD's answers into
//! [`AuthFailure`]s that say what to do: a wrong secret (AADSTS7000215), an
//! expired one (AADSTS7000222), an unknown tenant (AADSTS90002), an unknown
//! application (AADSTS700016).

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use azure_core::auth::{AccessToken, TokenCredential};
use azure_core::error::ErrorKind;
use azure_core::{BytesStream, HttpClient, Request, Response, Url};
use azure_identity::ClientSecretCredential;
use serde::{Deserialize, Serialize};

/// Azure AD's authority host in the public cloud.
pub const PUBLIC_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";

/// Azure Resource Manager's endpoint in the public cloud.
pub const PUBLIC_ARM_ENDPOINT: &str = "https://management.azure.com";

/// The environment variable naming the accounts file.
pub const ACCOUNTS_ENV: &str = "RHA_ACCOUNTS";

/// Version of the accounts file format.
const FILE_VERSION: u32 = 1;

/// A service principal's client secret.
///
/// It has no `Display` and its `Debug` is masked, so it cannot end up in a
/// message by accident; [`ClientSecret::expose`] is the one way to read it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSecret(String);

impl ClientSecret {
    /// Wraps a secret (surrounding white space, such as the newline of a
    /// line read from standard input, is removed).
    pub fn new(secret: impl Into<String>) -> ClientSecret {
        let s: String = secret.into();
        ClientSecret(s.trim().to_owned())
    }

    /// The secret itself, for the token request only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecret(****)")
    }
}

/// An Azure account: a subscription and the service principal rha uses in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AzureAccount {
    /// The name scenarios refer to (`replica.azure.account`).
    pub name: String,
    /// The subscription id (a GUID).
    pub subscription_id: String,
    /// The directory (tenant) id: a GUID or a domain such as `contoso.onmicrosoft.com`.
    pub tenant_id: String,
    /// The application (client) id of the service principal (a GUID).
    pub client_id: String,
    /// The service principal's client secret.
    pub secret: ClientSecret,
    /// Azure AD's authority host; the public cloud's when `None`.
    pub authority_host: Option<String>,
    /// Azure Resource Manager's endpoint; the public cloud's when `None`.
    pub arm_endpoint: Option<String>,
    /// The blob service of the scenarios' storage accounts; the public
    /// cloud's (`https://ACCOUNT.blob.core.windows.net`) when `None`. An
    /// Azurite address (`http://127.0.0.1:10000/devstoreaccount1`) selects
    /// Azurite's well-known development account instead of tokens.
    pub blob_endpoint: Option<String>,
}

impl AzureAccount {
    /// Checks the fields (name, GUIDs, URLs, a non-empty secret).
    pub fn check(&self) -> Result<(), AccountError> {
        check_name(&self.name)?;
        check_guid("subscription", &self.subscription_id)?;
        check_tenant(&self.tenant_id)?;
        check_guid("app-id", &self.client_id)?;
        if self.secret.is_empty() {
            return Err(AccountError::Invalid {
                field: "secret",
                reason: "the client secret is empty; pass the secret's value (not its id) on \
                         standard input or in the environment variable named by --secret-env"
                    .into(),
            });
        }
        for (field, url) in [
            ("authority-host", &self.authority_host),
            ("arm-endpoint", &self.arm_endpoint),
            ("blob-endpoint", &self.blob_endpoint),
        ] {
            if let Some(u) = url {
                parse_url(field, u)?;
            }
        }
        Ok(())
    }

    /// Azure AD's authority host for this account.
    pub fn authority_host(&self) -> &str {
        self.authority_host
            .as_deref()
            .unwrap_or(PUBLIC_AUTHORITY_HOST)
    }

    /// Azure Resource Manager's endpoint for this account, without a trailing `/`.
    pub fn arm_endpoint(&self) -> &str {
        self.arm_endpoint
            .as_deref()
            .unwrap_or(PUBLIC_ARM_ENDPOINT)
            .trim_end_matches('/')
    }

    /// The OAuth scope of Resource Manager tokens
    /// (`https://management.azure.com/.default` in the public cloud).
    pub fn arm_scope(&self) -> String {
        format!("{}/.default", self.arm_endpoint())
    }

    /// What may be shown of the account: everything but the secret.
    pub fn info(&self) -> AccountInfo {
        AccountInfo {
            name: self.name.clone(),
            subscription_id: self.subscription_id.clone(),
            tenant_id: self.tenant_id.clone(),
            client_id: self.client_id.clone(),
            authority_host: self.authority_host().to_owned(),
            arm_endpoint: self.arm_endpoint().to_owned(),
            blob_endpoint: self.blob_endpoint.clone(),
        }
    }

    /// The account's credential: a `ClientSecretCredential` whose failures
    /// carry an [`AuthFailure`] (see [`auth_failure_of`]).
    pub fn credential(&self) -> Result<Arc<AccountCredential>, AccountError> {
        AccountCredential::new(self, azure_core::new_http_client())
    }
}

/// An account without its secret, for listings (`rha cloud account list --json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountInfo {
    /// The account's name.
    pub name: String,
    /// The subscription id.
    pub subscription_id: String,
    /// The tenant id.
    pub tenant_id: String,
    /// The application (client) id.
    pub client_id: String,
    /// Azure AD's authority host.
    pub authority_host: String,
    /// Azure Resource Manager's endpoint.
    pub arm_endpoint: String,
    /// The blob service override, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob_endpoint: Option<String>,
}

/// The accounts file's contents (the only place the secret is serialised).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    version: u32,
    #[serde(default)]
    accounts: Vec<StoredAccount>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredAccount {
    name: String,
    subscription_id: String,
    tenant_id: String,
    client_id: String,
    client_secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    authority_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    arm_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    blob_endpoint: Option<String>,
}

impl From<StoredAccount> for AzureAccount {
    fn from(s: StoredAccount) -> Self {
        AzureAccount {
            name: s.name,
            subscription_id: s.subscription_id,
            tenant_id: s.tenant_id,
            client_id: s.client_id,
            secret: ClientSecret(s.client_secret),
            authority_host: s.authority_host,
            arm_endpoint: s.arm_endpoint,
            blob_endpoint: s.blob_endpoint,
        }
    }
}

impl From<&AzureAccount> for StoredAccount {
    fn from(a: &AzureAccount) -> Self {
        StoredAccount {
            name: a.name.clone(),
            subscription_id: a.subscription_id.clone(),
            tenant_id: a.tenant_id.clone(),
            client_id: a.client_id.clone(),
            client_secret: a.secret.0.clone(),
            authority_host: a.authority_host.clone(),
            arm_endpoint: a.arm_endpoint.clone(),
            blob_endpoint: a.blob_endpoint.clone(),
        }
    }
}

/// An exclusive lock on an accounts file, released when dropped.
struct StoreLock {
    _file: fs::File,
}

/// Where accounts are kept: one JSON file, mode 0600.
#[derive(Clone, Debug)]
pub struct AccountStore {
    path: PathBuf,
}

impl AccountStore {
    /// The store in `path`.
    pub fn new(path: impl Into<PathBuf>) -> AccountStore {
        AccountStore { path: path.into() }
    }

    /// The store at `explicit`, else at `$RHA_ACCOUNTS`, else at the default
    /// place ([`AccountStore::default_path`]).
    pub fn locate(explicit: Option<&Path>) -> Result<AccountStore, AccountError> {
        if let Some(p) = explicit {
            return Ok(AccountStore::new(p));
        }
        if let Some(p) = std::env::var_os(ACCOUNTS_ENV).filter(|p| !p.is_empty()) {
            return Ok(AccountStore::new(PathBuf::from(p)));
        }
        AccountStore::default_path().map(AccountStore::new)
    }

    /// `$XDG_CONFIG_HOME/rha/accounts.json`, or `$HOME/.config/rha/accounts.json`.
    pub fn default_path() -> Result<PathBuf, AccountError> {
        let config = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|p| !p.is_empty())
                    .map(|h| PathBuf::from(h).join(".config"))
            })
            .ok_or(AccountError::NoConfigDir)?;
        Ok(config.join("rha").join("accounts.json"))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every account, in the order they were added; none when the file does
    /// not exist. Refuses a file other users can read.
    pub fn load(&self) -> Result<Vec<AzureAccount>, AccountError> {
        let meta = match fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(e)),
        };
        check_private(&self.path, &meta)?;
        let text = fs::read_to_string(&self.path).map_err(|e| self.io(e))?;
        let file: StoreFile = serde_json::from_str(&text).map_err(|e| AccountError::Corrupt {
            path: self.path.clone(),
            // serde_json's message names the line and column, never the value.
            reason: e.to_string(),
        })?;
        if file.version != FILE_VERSION {
            return Err(AccountError::Corrupt {
                path: self.path.clone(),
                reason: format!(
                    "format version {} is not {FILE_VERSION}, the one this rha reads",
                    file.version
                ),
            });
        }
        Ok(file.accounts.into_iter().map(AzureAccount::from).collect())
    }

    /// The account named `name`.
    pub fn get(&self, name: &str) -> Result<AzureAccount, AccountError> {
        let accounts = self.load()?;
        let known: Vec<String> = accounts.iter().map(|a| a.name.clone()).collect();
        accounts
            .into_iter()
            .find(|a| a.name == name)
            .ok_or_else(|| AccountError::Unknown {
                name: name.to_owned(),
                store: self.path.clone(),
                known,
            })
    }

    /// The accounts without their secrets.
    pub fn list(&self) -> Result<Vec<AccountInfo>, AccountError> {
        Ok(self.load()?.iter().map(AzureAccount::info).collect())
    }

    /// Adds `account`; replaces one of the same name only when `replace`.
    pub fn add(&self, account: &AzureAccount, replace: bool) -> Result<(), AccountError> {
        account.check()?;
        let _lock = self.lock()?;
        let mut accounts = self.load()?;
        match accounts.iter().position(|a| a.name == account.name) {
            Some(_) if !replace => {
                return Err(AccountError::Exists {
                    name: account.name.clone(),
                })
            }
            Some(i) => accounts[i] = account.clone(),
            None => accounts.push(account.clone()),
        }
        self.save(&accounts)
    }

    /// Removes the account named `name` and returns what it was.
    pub fn remove(&self, name: &str) -> Result<AccountInfo, AccountError> {
        let _lock = self.lock()?;
        let removed = self.get(name)?.info();
        let mut accounts = self.load()?;
        accounts.retain(|a| a.name != name);
        self.save(&accounts)?;
        Ok(removed)
    }

    /// Writes the file atomically: a 0600 temporary file in the same
    /// directory, synced, renamed over the old one.
    /// The directory of the file, made (mode 0700) when missing.
    fn dir(&self) -> Result<PathBuf, AccountError> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| AccountError::Io {
                    path: dir.clone(),
                    source: e,
                })?;
        }
        Ok(dir)
    }

    /// The file's name (for the temporary and lock files beside it).
    fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "accounts.json".into())
    }

    /// Holds `.NAME.lock` beside the file exclusively (`flock`) until the
    /// guard is dropped, so that two `rha cloud account add` (or an add and
    /// a remove) running at once never lose one another's change.
    fn lock(&self) -> Result<StoreLock, AccountError> {
        use std::os::fd::AsRawFd;
        let path = self.dir()?.join(format!(".{}.lock", self.file_name()));
        let io = |source| AccountError::Io {
            path: path.clone(),
            source,
        };
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        loop {
            // SAFETY: flock on a descriptor this function owns for the call.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(StoreLock { _file: file });
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(io(e));
            }
        }
    }

    fn save(&self, accounts: &[AzureAccount]) -> Result<(), AccountError> {
        let dir = self.dir()?;
        let file = StoreFile {
            version: FILE_VERSION,
            accounts: accounts.iter().map(StoredAccount::from).collect(),
        };
        let mut text = serde_json::to_string_pretty(&file).map_err(|e| AccountError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        text.push('\n');
        let tmp = dir.join(format!(".{}.{}.tmp", self.file_name(), std::process::id()));
        let write = || -> io::Result<()> {
            let _ = fs::remove_file(&tmp);
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            // The mode given to open() is filtered by the umask; make sure.
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            if let Ok(d) = fs::File::open(&dir) {
                let _ = d.sync_all();
            }
            Ok(())
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            self.io(e)
        })
    }

    fn io(&self, source: io::Error) -> AccountError {
        AccountError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

/// Refuses an accounts file that is not private to its owner.
fn check_private(path: &Path, meta: &fs::Metadata) -> Result<(), AccountError> {
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(AccountError::NotPrivate {
            path: path.to_path_buf(),
            mode,
        });
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(AccountError::NotOwner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), AccountError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(AccountError::Invalid {
            field: "name",
            reason: format!(
                "`{name}` is not a valid account name; use up to 64 letters, digits, `.`, `_` \
                 and `-`, not starting with `.` or `-`"
            ),
        })
    }
}

/// Whether `s` is a GUID such as `00000000-0000-0000-0000-000000000000`.
pub fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

fn check_guid(field: &'static str, value: &str) -> Result<(), AccountError> {
    if is_guid(value) {
        Ok(())
    } else {
        Err(AccountError::Invalid {
            field,
            reason: format!(
                "`{value}` is not a GUID such as `0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0`; copy \
                 it from the Azure portal (`az account show` for the subscription, the app \
                 registration's overview for the application id)"
            ),
        })
    }
}

fn check_tenant(value: &str) -> Result<(), AccountError> {
    let domain = value.contains('.')
        && value
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if is_guid(value) || domain {
        Ok(())
    } else {
        Err(AccountError::Invalid {
            field: "tenant",
            reason: format!(
                "`{value}` is neither a tenant GUID nor a domain such as \
                 `contoso.onmicrosoft.com`; see `az account show --query tenantId`"
            ),
        })
    }
}

fn parse_url(field: &'static str, value: &str) -> Result<Url, AccountError> {
    match Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "https" | "http") && u.host().is_some() => Ok(u),
        _ => Err(AccountError::Invalid {
            field,
            reason: format!("`{value}` is not an http(s) URL such as `{PUBLIC_AUTHORITY_HOST}`"),
        }),
    }
}

/// Why an account operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccountError {
    /// The accounts file could not be read or written.
    #[error("accounts file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The accounts file can be read by other users.
    #[error(
        "accounts file {} is readable by other users (mode {mode:o}) and holds client secrets: \
         run `chmod 600 {}` (and consider rotating the secrets)",
        path.display(), path.display()
    )]
    NotPrivate {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The accounts file belongs to another user.
    #[error(
        "accounts file {} belongs to uid {owner}, not to this user (uid {me}); use your own \
         file with --store or RHA_ACCOUNTS, or `chown` it",
        path.display()
    )]
    NotOwner {
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's effective uid.
        me: u32,
    },
    /// The accounts file is not what rha writes.
    #[error("accounts file {} cannot be read: {reason}; fix or remove it", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Neither `XDG_CONFIG_HOME` nor `HOME` is set.
    #[error("no configuration directory: neither XDG_CONFIG_HOME nor HOME is set; pass --store PATH or set RHA_ACCOUNTS")]
    NoConfigDir,
    /// No account has that name.
    #[error("no cloud account named `{name}` in {}{}", store.display(), known_names(known))]
    Unknown {
        /// The name asked for.
        name: String,
        /// The accounts file.
        store: PathBuf,
        /// The names there are.
        known: Vec<String>,
    },
    /// An account of that name exists already.
    #[error("a cloud account named `{name}` exists already; remove it first (`rha cloud account remove {name}`) or pass --replace")]
    Exists {
        /// The name.
        name: String,
    },
    /// A field of the account is invalid.
    #[error("--{field}: {reason}")]
    Invalid {
        /// The field (as the CLI option is named).
        field: &'static str,
        /// What is wrong and what to do.
        reason: String,
    },
    /// Azure AD refused the credentials or could not be reached.
    #[error("{0}")]
    Auth(#[from] AuthFailure),
}

fn known_names(known: &[String]) -> String {
    if known.is_empty() {
        "; it has no accounts: add one with `rha cloud account add NAME --subscription ID --tenant ID --app-id ID`".to_owned()
    } else {
        format!(
            "; it has {} (see `rha cloud account list`)",
            known
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// Why Azure AD gave no token, with what to do about it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthFailure {
    /// AADSTS7000215: the secret is not the application's.
    #[error("Azure AD refused the client secret of application {client_id} (AADSTS7000215: invalid client secret): pass the secret's *value*, not its id, as shown once when it was created under the app registration's \"Certificates & secrets\"; create a new secret if it was lost, then `rha cloud account add {account} ... --replace`")]
    WrongSecret {
        /// The account.
        account: String,
        /// The application id.
        client_id: String,
    },
    /// AADSTS7000222: the secret has expired.
    #[error("the client secret of application {client_id} has expired (AADSTS7000222): create a new secret under the app registration's \"Certificates & secrets\" (or `az ad app credential reset --id {client_id}`), then `rha cloud account add {account} ... --replace`")]
    ExpiredSecret {
        /// The account.
        account: String,
        /// The application id.
        client_id: String,
    },
    /// AADSTS90002 (or 404): the tenant does not exist.
    #[error("Azure AD does not know tenant `{tenant_id}` (AADSTS90002: tenant not found): check the directory (tenant) id with `az account show --query tenantId`, and that the authority host {authority_host} is the right cloud; then `rha cloud account add {account} ... --replace`")]
    UnknownTenant {
        /// The account.
        account: String,
        /// The tenant asked for.
        tenant_id: String,
        /// The authority host used.
        authority_host: String,
    },
    /// AADSTS700016: no such application in the tenant.
    #[error("application {client_id} was not found in tenant {tenant_id} (AADSTS700016): check the application (client) id on the app registration's overview, and that it belongs to this tenant")]
    UnknownApplication {
        /// The application id.
        client_id: String,
        /// The tenant.
        tenant_id: String,
    },
    /// Any other refusal.
    #[error("Azure AD refused the token request for account `{account}` (HTTP {status}{}): {description}", code.as_deref().map(|c| format!(", {c}")).unwrap_or_default())]
    Refused {
        /// The account.
        account: String,
        /// The HTTP status.
        status: u16,
        /// The `AADSTS` code, when there is one.
        code: Option<String>,
        /// Azure AD's description (first line).
        description: String,
    },
    /// The authority host could not be reached.
    #[error("could not reach Azure AD at {authority_host} for account `{account}`: {detail}; check the network path (DNS, proxy, firewall) to it")]
    Unreachable {
        /// The account.
        account: String,
        /// The authority host.
        authority_host: String,
        /// The transport's error.
        detail: String,
    },
}

impl AuthFailure {
    /// True when retrying cannot help: the credentials themselves are wrong.
    pub fn is_credentials(&self) -> bool {
        !matches!(self, AuthFailure::Unreachable { .. })
    }
}

/// The error body of Azure AD's token endpoint.
#[derive(Clone, Debug, Default, Deserialize)]
struct AadErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    error_codes: Vec<u64>,
}

/// What the token endpoint answered, when it was an error.
#[derive(Clone, Debug)]
struct AadAnswer {
    status: u16,
    body: AadErrorBody,
}

/// An `HttpClient` that passes requests on and keeps the last error answer
/// of the token endpoint, so that failures can be classified by AADSTS code.
#[derive(Debug)]
struct AadCapture {
    inner: Arc<dyn HttpClient>,
    last: Mutex<Option<AadAnswer>>,
}

#[async_trait::async_trait]
impl HttpClient for AadCapture {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<Response> {
        let response = self.inner.execute_request(request).await?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let (status, headers, body) = response.deconstruct();
        let bytes = body.collect().await?;
        let parsed: AadErrorBody = serde_json::from_slice(&bytes).unwrap_or_default();
        if let Ok(mut last) = self.last.lock() {
            *last = Some(AadAnswer {
                status: status as u16,
                body: parsed,
            });
        }
        Ok(Response::new(
            status,
            headers,
            Box::pin(BytesStream::new(bytes)),
        ))
    }
}

/// An account's credential: `ClientSecretCredential` through a client that
/// classifies Azure AD's refusals. Its errors carry an [`AuthFailure`]
/// (see [`auth_failure_of`]); its `Debug` shows no secret.
pub struct AccountCredential {
    inner: ClientSecretCredential,
    capture: Arc<AadCapture>,
    account: String,
    tenant_id: String,
    client_id: String,
    authority_host: String,
}

impl fmt::Debug for AccountCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountCredential")
            .field("account", &self.account)
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("authority_host", &self.authority_host)
            .field("secret", &"****")
            .finish()
    }
}

impl AccountCredential {
    /// The credential of `account`, sending through `http`.
    pub fn new(
        account: &AzureAccount,
        http: Arc<dyn HttpClient>,
    ) -> Result<Arc<AccountCredential>, AccountError> {
        let authority = parse_url("authority-host", account.authority_host())?;
        let capture = Arc::new(AadCapture {
            inner: http,
            last: Mutex::new(None),
        });
        let inner = ClientSecretCredential::new(
            capture.clone(),
            authority,
            account.tenant_id.clone(),
            account.client_id.clone(),
            account.secret.expose().to_owned(),
        );
        Ok(Arc::new(AccountCredential {
            inner,
            capture,
            account: account.name.clone(),
            tenant_id: account.tenant_id.clone(),
            client_id: account.client_id.clone(),
            authority_host: account.authority_host().to_owned(),
        }))
    }

    /// Gets a token for `scopes`, classifying a failure.
    pub async fn token(&self, scopes: &[&str]) -> Result<AccessToken, AuthFailure> {
        if let Ok(mut last) = self.capture.last.lock() {
            *last = None;
        }
        match self.inner.get_token(scopes).await {
            Ok(t) => Ok(t),
            Err(e) => {
                let answer = self.capture.last.lock().ok().and_then(|mut l| l.take());
                Err(self.classify(answer, &e))
            }
        }
    }

    fn classify(&self, answer: Option<AadAnswer>, err: &azure_core::Error) -> AuthFailure {
        let account = self.account.clone();
        let Some(AadAnswer { status, body }) = answer else {
            return AuthFailure::Unreachable {
                account,
                authority_host: self.authority_host.clone(),
                detail: error_chain(err),
            };
        };
        let has = |code: u64| {
            body.error_codes.contains(&code)
                || body
                    .error_description
                    .starts_with(&format!("AADSTS{code}:"))
        };
        if has(7_000_215) {
            AuthFailure::WrongSecret {
                account,
                client_id: self.client_id.clone(),
            }
        } else if has(7_000_222) {
            AuthFailure::ExpiredSecret {
                account,
                client_id: self.client_id.clone(),
            }
        } else if has(90_002) || (status == 404 && body.error_codes.is_empty()) {
            AuthFailure::UnknownTenant {
                account,
                tenant_id: self.tenant_id.clone(),
                authority_host: self.authority_host.clone(),
            }
        } else if has(700_016) {
            AuthFailure::UnknownApplication {
                client_id: self.client_id.clone(),
                tenant_id: self.tenant_id.clone(),
            }
        } else {
            let code = body.error_codes.first().map(|c| format!("AADSTS{c}"));
            let first = body.error_description.lines().next().unwrap_or("").trim();
            let description = if first.is_empty() {
                if body.error.is_empty() {
                    "no description".to_owned()
                } else {
                    body.error.clone()
                }
            } else {
                first.to_owned()
            };
            AuthFailure::Refused {
                account,
                status,
                code,
                description,
            }
        }
    }
}

#[async_trait::async_trait]
impl TokenCredential for AccountCredential {
    async fn get_token(&self, scopes: &[&str]) -> azure_core::Result<AccessToken> {
        self.token(scopes).await.map_err(|f| {
            let message = f.to_string();
            azure_core::Error::full(ErrorKind::Credential, f, message)
        })
    }

    async fn clear_cache(&self) -> azure_core::Result<()> {
        self.inner.clear_cache().await
    }
}

/// The [`AuthFailure`] inside an error of an [`AccountCredential`] (as the
/// SDK clients return it), if any.
pub fn auth_failure_of(err: &azure_core::Error) -> Option<&AuthFailure> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(f) = e.downcast_ref::<AuthFailure>() {
            return Some(f);
        }
        if let Some(inner) = e
            .downcast_ref::<azure_core::Error>()
            .and_then(|a| a.get_ref())
        {
            if let Some(f) = inner.downcast_ref::<AuthFailure>() {
                return Some(f);
            }
        }
        cur = e.source();
    }
    None
}

/// An error and its causes on one line.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

/// What [`test_account`] proved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TokenCheck {
    /// The account.
    pub account: String,
    /// The scope the token was issued for.
    pub scope: String,
    /// Seconds until the token expires (negative if the clock is off).
    pub expires_in_secs: i64,
}

/// Proves an account: gets a Resource Manager token with the
/// service-principal flow. The token itself is dropped, never shown.
pub async fn test_account(account: &AzureAccount) -> Result<TokenCheck, AccountError> {
    test_account_with(account, azure_core::new_http_client()).await
}

/// [`test_account`] through a given HTTP client.
pub async fn test_account_with(
    account: &AzureAccount,
    http: Arc<dyn HttpClient>,
) -> Result<TokenCheck, AccountError> {
    account.check()?;
    let credential = AccountCredential::new(account, http)?;
    let scope = account.arm_scope();
    let token = credential.token(&[&scope]).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Ok(TokenCheck {
        account: account.name.clone(),
        scope,
        expires_in_secs: token.expires_on.unix_timestamp() - now,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn account(name: &str) -> AzureAccount {
        AzureAccount {
            name: name.into(),
            subscription_id: "00000000-0000-0000-0000-000000000001".into(),
            tenant_id: "00000000-0000-0000-0000-000000000002".into(),
            client_id: "00000000-0000-0000-0000-000000000003".into(),
            secret: ClientSecret::new("s3cr3t-value\n"),
            authority_host: None,
            arm_endpoint: None,
            blob_endpoint: None,
        }
    }

    #[test]
    fn debug_masks_the_secret() {
        let a = account("prod");
        assert_eq!(a.secret.expose(), "s3cr3t-value");
        let dbg = format!("{a:?}");
        assert!(!dbg.contains("s3cr3t"), "{dbg}");
        assert!(dbg.contains("ClientSecret(****)"), "{dbg}");
        let cred = a.credential().unwrap();
        let dbg = format!("{cred:?}");
        assert!(!dbg.contains("s3cr3t"), "{dbg}");
    }

    #[test]
    fn store_round_trip_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let store = AccountStore::new(dir.path().join("sub/accounts.json"));
        assert!(store.load().unwrap().is_empty());
        store.add(&account("prod"), false).unwrap();
        store.add(&account("test"), false).unwrap();
        let mode = fs::metadata(store.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = fs::metadata(dir.path().join("sub"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        assert_eq!(store.get("prod").unwrap(), account("prod"));
        assert!(matches!(
            store.add(&account("prod"), false),
            Err(AccountError::Exists { .. })
        ));
        store.add(&account("prod"), true).unwrap();
        let names: Vec<_> = store.list().unwrap().into_iter().map(|a| a.name).collect();
        assert_eq!(names, ["prod", "test"]);
        let listed = serde_json::to_string(&store.list().unwrap()).unwrap();
        assert!(!listed.contains("s3cr3t"), "{listed}");
        store.remove("prod").unwrap();
        let e = store.get("prod").unwrap_err().to_string();
        assert!(e.contains("`test`"), "{e}");
    }

    #[test]
    fn readable_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = AccountStore::new(dir.path().join("accounts.json"));
        store.add(&account("prod"), false).unwrap();
        fs::set_permissions(store.path(), fs::Permissions::from_mode(0o644)).unwrap();
        let e = store.load().unwrap_err();
        assert!(matches!(e, AccountError::NotPrivate { mode: 0o644, .. }));
        let msg = e.to_string();
        assert!(msg.contains("chmod 600"), "{msg}");
        assert!(!msg.contains("s3cr3t"), "{msg}");
    }

    #[test]
    fn fields_are_checked() {
        let mut a = account("prod");
        a.subscription_id = "not-a-guid".into();
        assert!(matches!(
            a.check(),
            Err(AccountError::Invalid {
                field: "subscription",
                ..
            })
        ));
        let mut a = account("prod");
        a.tenant_id = "contoso.onmicrosoft.com".into();
        a.check().unwrap();
        let mut a = account("bad name");
        a.secret = ClientSecret::new("x");
        assert!(a.check().is_err());
        let mut a = account("prod");
        a.secret = ClientSecret::new("  \n");
        assert!(matches!(
            a.check(),
            Err(AccountError::Invalid {
                field: "secret",
                ..
            })
        ));
        assert_eq!(
            account("p").arm_scope(),
            "https://management.azure.com/.default"
        );
    }
}
