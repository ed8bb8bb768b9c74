//! The connection to one container of an Azure storage account: the SDK
//! clients, an internal tokio runtime that the synchronous rha traits block
//! on, and the retry loop every request goes through.
//!
//! ```text
//!  Volume / ReplicaSink (sync) ──block_on──► runtime ──► call(): attempt ─┬─► ok
//!                                                        │   timeout,     │
//!                                                        │   429/5xx, I/O └─► backoff, again
//!                                                        └── other errors: fail at once
//! ```

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_core::error::ErrorKind as SdkErrorKind;
use azure_storage::{CloudLocation, StorageCredentials};
use azure_storage_blobs::prelude::{BlobClient, ClientBuilder, ContainerClient};

use crate::error::{AzureError, AzureErrorKind};

/// Where the storage account is and how to authenticate.
#[derive(Clone)]
#[non_exhaustive]
pub enum Endpoint {
    /// The Azurite emulator (well-known development account) at `host:port`.
    Emulator {
        /// Host name or address (`127.0.0.1`).
        host: String,
        /// Blob service port (Azurite's default is 10000).
        port: u16,
    },
    /// A storage account in the public Azure cloud, with an account key.
    AccessKey {
        /// The storage account name.
        account: String,
        /// One of the account's access keys (base64).
        key: String,
    },
    /// A storage account in the public Azure cloud, with a SAS token.
    SasToken {
        /// The storage account name.
        account: String,
        /// The SAS token (the query string, with or without the leading `?`).
        token: String,
    },
    /// A storage account reached with Azure AD tokens (a service
    /// principal's; it needs the role Storage Blob Data Contributor on the
    /// account).
    Token {
        /// The storage account name.
        account: String,
        /// The blob service's base URL; the public cloud's
        /// (`https://ACCOUNT.blob.core.windows.net`) when `None`.
        blob_endpoint: Option<String>,
        /// Where the tokens come from (scope `https://storage.azure.com/.default`).
        credential: Arc<dyn azure_core::auth::TokenCredential>,
    },
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print keys or tokens.
        match self {
            Endpoint::Emulator { host, port } => write!(f, "Emulator({host}:{port})"),
            Endpoint::AccessKey { account, .. } => write!(f, "AccessKey({account}, <key>)"),
            Endpoint::SasToken { account, .. } => write!(f, "SasToken({account}, <token>)"),
            Endpoint::Token {
                account,
                blob_endpoint,
                ..
            } => write!(f, "Token({account}, {blob_endpoint:?}, <credential>)"),
        }
    }
}

/// How failed requests are retried.
///
/// Retried: throttling and server errors (408, 429, 500, 502, 503, 504),
/// dropped or refused connections, and attempts that got no answer within
/// `attempt_timeout`. Every page operation rha makes is idempotent (absolute
/// offsets, whole pages), so a retried write whose first answer was lost is
/// harmless. Anything else (403, 404, 412 lease conflicts, ...) fails at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request, the first included (at least 1).
    pub max_attempts: u32,
    /// Delay before the first retry; it doubles on each further retry.
    pub initial_backoff: Duration,
    /// The longest delay between two attempts.
    pub max_backoff: Duration,
    /// How long one attempt may take (sending a 4 MiB page write included).
    pub attempt_timeout: Duration,
    /// Give up once this long has passed since the first attempt.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    /// 10 attempts, 200 ms doubling up to 15 s, 60 s per attempt, 5 minutes in all.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(15),
            attempt_timeout: Duration::from_secs(60),
            max_elapsed: Duration::from_secs(300),
        }
    }
}

/// The largest page write Azure accepts in one request.
pub const MAX_PUT_PAGES: usize = 4 << 20;

/// Settings of a [`BlobStore`].
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The storage account.
    pub endpoint: Endpoint,
    /// The container that holds the replicas (created when missing).
    pub container: String,
    /// Retries of failed requests.
    pub retry: RetryPolicy,
    /// Page reads and writes kept in flight per operation (at least 1).
    pub max_in_flight: usize,
    /// The largest page write or ranged read per request (a multiple of 512, at most 4 MiB).
    pub max_request_bytes: usize,
}

impl StoreConfig {
    /// Default settings for `container` at `endpoint`: default retries, 8 requests in flight, 4 MiB requests.
    pub fn new(endpoint: Endpoint, container: impl Into<String>) -> Self {
        StoreConfig {
            endpoint,
            container: container.into(),
            retry: RetryPolicy::default(),
            max_in_flight: 8,
            max_request_bytes: MAX_PUT_PAGES,
        }
    }
}

/// Counters of the requests a [`BlobStore`] made, for tests and statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreStats {
    /// Requests attempted (retries included).
    pub attempts: u64,
    /// Attempts that were retried.
    pub retries: u64,
    /// Of those, answers 429 or 503 (throttling).
    pub throttled: u64,
    /// Of those, attempts that timed out.
    pub timeouts: u64,
    /// Of those, connections refused, reset or dropped.
    pub transport_errors: u64,
    /// Page writes completed.
    pub put_pages: u64,
    /// Bytes written by page writes.
    pub bytes_written: u64,
    /// Page clears completed.
    pub clear_pages: u64,
    /// Bytes cleared.
    pub bytes_cleared: u64,
    /// Ranged reads completed.
    pub reads: u64,
    /// Bytes read.
    pub bytes_read: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    attempts: AtomicU64,
    retries: AtomicU64,
    throttled: AtomicU64,
    timeouts: AtomicU64,
    transport_errors: AtomicU64,
    pub(crate) put_pages: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) clear_pages: AtomicU64,
    pub(crate) bytes_cleared: AtomicU64,
    pub(crate) reads: AtomicU64,
    pub(crate) bytes_read: AtomicU64,
}

pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// The internal runtime, shut down without blocking when dropped (so a
/// store dropped inside some other async context does not panic).
struct Runtime(Option<tokio::runtime::Runtime>);

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

struct Inner {
    /// Owns the runtime `handle` points into (kept alive, never read).
    _runtime: Runtime,
    handle: tokio::runtime::Handle,
    container: ContainerClient,
    container_url: String,
    config: StoreConfig,
    caller: Caller,
}

/// The retry loop and the counters, without the runtime: what a request
/// spawned onto the runtime carries (so the runtime is never dropped from
/// one of its own tasks).
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    retry: RetryPolicy,
    counters: Arc<Counters>,
}

/// One container of a storage account, shared by the page-blob volumes and
/// sinks made from it (cheap to clone).
///
/// It owns a small tokio runtime: the synchronous [`Volume`](rha_core::volume::Volume)
/// and [`ReplicaSink`](rha_core::sink::ReplicaSink) methods block on it,
/// from any thread, including threads of another tokio runtime.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("container", &self.inner.container_url)
            .field("endpoint", &self.inner.config.endpoint)
            .finish()
    }
}

impl BlobStore {
    /// Connects to the container (creating it when missing).
    pub fn connect(config: StoreConfig) -> Result<BlobStore, AzureError> {
        let store = Self::connect_lazily(config)?;
        store.ensure_container()?;
        Ok(store)
    }

    /// Builds the clients without making any request.
    pub fn connect_lazily(config: StoreConfig) -> Result<BlobStore, AzureError> {
        let invalid = |reason: String| {
            AzureError::local(
                "connect to",
                format!("container {}", config.container),
                None,
                AzureErrorKind::Invalid { reason },
            )
        };
        if config.max_in_flight == 0 {
            return Err(invalid("max_in_flight must be at least 1".into()));
        }
        if config.max_request_bytes == 0
            || config.max_request_bytes % 512 != 0
            || config.max_request_bytes > MAX_PUT_PAGES
        {
            return Err(invalid(format!(
                "max_request_bytes {} must be a multiple of 512 between 512 and {MAX_PUT_PAGES}",
                config.max_request_bytes
            )));
        }
        if config.retry.max_attempts == 0 {
            return Err(invalid("retry.max_attempts must be at least 1".into()));
        }
        let (location, credentials) = match &config.endpoint {
            Endpoint::Emulator { host, port } => (
                CloudLocation::Emulator {
                    address: host.clone(),
                    port: *port,
                },
                StorageCredentials::emulator(),
            ),
            Endpoint::AccessKey { account, key } => (
                CloudLocation::Public {
                    account: account.clone(),
                },
                StorageCredentials::access_key(account.clone(), key.clone()),
            ),
            Endpoint::SasToken { account, token } => (
                CloudLocation::Public {
                    account: account.clone(),
                },
                StorageCredentials::sas_token(token.trim_start_matches('?')).map_err(|e| {
                    invalid(format!(
                        "the SAS token cannot be parsed ({e}); copy it again"
                    ))
                })?,
            ),
            Endpoint::Token {
                account,
                blob_endpoint,
                credential,
            } => (
                match blob_endpoint {
                    Some(uri) => CloudLocation::Custom {
                        account: account.clone(),
                        uri: uri.trim_end_matches('/').to_owned(),
                    },
                    None => CloudLocation::Public {
                        account: account.clone(),
                    },
                },
                StorageCredentials::token_credential(credential.clone()),
            ),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("rha-azure")
            .enable_all()
            .build()
            .map_err(|e| invalid(format!("cannot start the I/O runtime: {e}")))?;
        let handle = runtime.handle().clone();
        // Retries are ours (`call`), so the SDK's own policy is off.
        let container = ClientBuilder::with_location(location, credentials)
            .retry(azure_core::RetryOptions::none())
            .container_client(config.container.clone());
        let container_url = container
            .url()
            .map(|u| u.to_string())
            .unwrap_or_else(|_| config.container.clone());
        Ok(BlobStore {
            inner: Arc::new(Inner {
                _runtime: Runtime(Some(runtime)),
                handle,
                container,
                container_url,
                caller: Caller {
                    retry: config.retry.clone(),
                    counters: Arc::new(Counters::default()),
                },
                config,
            }),
        })
    }

    /// Creates the container unless it exists.
    pub fn ensure_container(&self) -> Result<(), AzureError> {
        let c = self.inner.container.clone();
        let r = self.block_on(self.call(
            "create container",
            &self.inner.container_url,
            None,
            || c.create().into_future(),
        ));
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.has_code("ContainerAlreadyExists") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The container's name.
    pub fn container_name(&self) -> &str {
        &self.inner.config.container
    }

    /// The container's URL.
    pub fn container_url(&self) -> &str {
        &self.inner.container_url
    }

    /// The settings the store was made with.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// What the store's requests did so far.
    pub fn stats(&self) -> StoreStats {
        let c = &self.inner.caller.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StoreStats {
            attempts: g(&c.attempts),
            retries: g(&c.retries),
            throttled: g(&c.throttled),
            timeouts: g(&c.timeouts),
            transport_errors: g(&c.transport_errors),
            put_pages: g(&c.put_pages),
            bytes_written: g(&c.bytes_written),
            clear_pages: g(&c.clear_pages),
            bytes_cleared: g(&c.bytes_cleared),
            reads: g(&c.reads),
            bytes_read: g(&c.bytes_read),
        }
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.inner.caller.counters
    }

    /// The retry loop, to carry into spawned requests.
    pub(crate) fn caller(&self) -> &Caller {
        &self.inner.caller
    }

    /// Runs `fut` in the background on the store's runtime.
    pub(crate) fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.inner.handle.spawn(fut);
    }

    /// A client for the blob `name` in the container.
    pub(crate) fn blob(&self, name: &str) -> BlobClient {
        self.inner.container.blob_client(name)
    }

    pub(crate) fn container(&self) -> &ContainerClient {
        &self.inner.container
    }

    /// The URL of blob `name` (for messages).
    pub fn blob_url(&self, name: &str) -> String {
        format!(
            "{}/{}",
            self.inner.container_url.trim_end_matches('/'),
            name
        )
    }

    /// Runs `fut` to completion on the store's runtime, from synchronous code.
    ///
    /// From a thread that is itself inside a tokio runtime (where blocking
    /// on another runtime would panic), the future runs on a short-lived
    /// scoped thread instead.
    pub(crate) fn block_on<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        let handle = &self.inner.handle;
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| match s.spawn(|| handle.block_on(fut)).join() {
                Ok(v) => v,
                Err(panic) => std::panic::resume_unwind(panic),
            })
        } else {
            handle.block_on(fut)
        }
    }

    /// Makes a request with the store's retry policy: `attempt()` builds and
    /// sends it afresh each time.
    pub(crate) async fn call<T, Fut, F>(
        &self,
        op: &'static str,
        url: &str,
        offset: Option<u64>,
        attempt: F,
    ) -> Result<T, AzureError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = azure_core::Result<T>>,
    {
        self.inner.caller.call(op, url, offset, attempt).await
    }
}

impl Caller {
    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The retry loop (see [`RetryPolicy`]).
    pub(crate) async fn call<T, Fut, F>(
        &self,
        op: &'static str,
        url: &str,
        offset: Option<u64>,
        mut attempt: F,
    ) -> Result<T, AzureError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = azure_core::Result<T>>,
    {
        let policy = &self.retry;
        let c = &self.counters;
        let started = Instant::now();
        let mut n = 0u32;
        loop {
            n += 1;
            add(&c.attempts, 1);
            let kind = match tokio::time::timeout(policy.attempt_timeout, attempt()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => classify(&e),
                Err(_) => Failure::Retry(AzureErrorKind::Timeout {
                    after: policy.attempt_timeout,
                }),
            };
            let kind = match kind {
                Failure::Fatal(kind) => {
                    return Err(AzureError {
                        op,
                        url: url.to_string(),
                        offset,
                        attempts: n,
                        kind,
                    })
                }
                Failure::Retry(kind) => kind,
            };
            let elapsed = started.elapsed();
            if n >= policy.max_attempts || elapsed >= policy.max_elapsed {
                return Err(AzureError {
                    op,
                    url: url.to_string(),
                    offset,
                    attempts: n,
                    kind,
                });
            }
            add(&c.retries, 1);
            match &kind {
                AzureErrorKind::Service {
                    status: 429 | 503, ..
                } => add(&c.throttled, 1),
                AzureErrorKind::Timeout { .. } => add(&c.timeouts, 1),
                AzureErrorKind::Transport { .. } => add(&c.transport_errors, 1),
                _ => {}
            }
            let delay = backoff(policy, n);
            tracing::debug!(
                op,
                url,
                offset,
                attempt = n,
                ?delay,
                error = %kind,
                "Azure request failed; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }
}

enum Failure {
    Retry(AzureErrorKind),
    Fatal(AzureErrorKind),
}

/// Which SDK errors are worth another attempt.
fn classify(e: &azure_core::Error) -> Failure {
    match e.kind() {
        SdkErrorKind::HttpResponse { status, error_code } => {
            let status = u16::from(*status);
            let message = e
                .as_http_error()
                .and_then(|h| h.error_message().map(str::to_string));
            let kind = AzureErrorKind::Service {
                status,
                code: error_code.clone(),
                message,
            };
            if matches!(status, 408 | 429 | 500 | 502 | 503 | 504) {
                Failure::Retry(kind)
            } else {
                Failure::Fatal(kind)
            }
        }
        SdkErrorKind::Io => Failure::Retry(AzureErrorKind::Transport {
            detail: error_chain(e),
        }),
        _ => Failure::Fatal(AzureErrorKind::Sdk {
            detail: error_chain(e),
        }),
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let m = inner.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = inner.source();
    }
    s
}

/// Exponential backoff with jitter: between half and all of
/// `initial × 2^(n-1)`, at most `max_backoff`.
fn backoff(policy: &RetryPolicy, n: u32) -> Duration {
    let exp = policy
        .initial_backoff
        .saturating_mul(1u32 << (n - 1).min(20))
        .min(policy.max_backoff);
    let nanos = Instant::now().elapsed().as_nanos() as u64 ^ jitter_seed();
    let frac = 0.5 + (nanos % 1000) as f64 / 2000.0;
    exp.mul_f64(frac)
}

fn jitter_seed() -> u64 {
    use std::time::SystemTime;
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    // xorshift of the clock's nanoseconds
    let mut x = t ^ 0x9E37_79B9_7F4A_7C15;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        for n in 1..30 {
            let d = backoff(&p, n);
            let full = Duration::from_millis(100)
                .saturating_mul(1 << (n - 1).min(20))
                .min(Duration::from_secs(1));
            assert!(d <= full && d >= full / 2, "attempt {n}: {d:?} vs {full:?}");
        }
    }

    #[test]
    fn bad_settings_are_refused() {
        let mut c = StoreConfig::new(
            Endpoint::Emulator {
                host: "127.0.0.1".into(),
                port: 1,
            },
            "c",
        );
        c.max_request_bytes = 1000;
        let e = BlobStore::connect_lazily(c).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("multiple of 512")));
    }
}
