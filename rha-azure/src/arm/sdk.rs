//! [`AzureApi`] through the legacy 0.21 SDK: `azure_mgmt_compute`
//! (API 2024-07-01, disks 2024-03-02) and `azure_mgmt_network` (2024-03-01).
//!
//! The SDK builds the URLs, adds the api-version and the bearer token,
//! retries throttling and server errors, and (de)serialises the models. Its
//! own awaited long-running-operation polling is not used (in 0.21 it
//! re-sends the PUT and may return while the resource is still
//! `Creating`): each request is only `.send()`, and [`SdkArm`] polls the
//! `Azure-AsyncOperation` URL, else the `Location` URL, else the resource's
//! `provisioningState`, honouring `Retry-After` within a [`PollPolicy`].
//!
//! Request bodies are written as the documented REST JSON and checked by
//! deserialising them into the SDK's models, which then serialise them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_core::auth::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::headers::{HeaderName, AZURE_ASYNCOPERATION, LOCATION, RETRY_AFTER};
use azure_core::{
    ClientOptions, Context, HttpClient, Method, Pipeline, Request, Response, RetryOptions,
    TransportOptions, Url,
};
use azure_mgmt_compute::package_2024_07_01 as compute;
use azure_mgmt_network::package_2024_03 as network;
use futures::StreamExt;
use rha_core::scenario::{HyperVGeneration, Os};
use rha_core::volume::vhd::{Footer, FOOTER_SIZE};
use serde_json::{json, Value};

use super::{
    ArmError, ArmErrorKind, AzureApi, BlobProbe, Created, DiskImport, NicSpec, PowerAction,
    PublicIpSpec, ResourceId, ResourceKind, VmCreate, VmResource,
};
use crate::account::{auth_failure_of, error_chain, AccountError, AzureAccount};

/// The OAuth scope of Azure Storage tokens (reading the replica blobs' footers).
pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";

/// The Blob service version rha asks for (Azure AD tokens need 2017-11-09 or later).
const STORAGE_VERSION: &str = "2021-08-06";

/// How long-running operations are polled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PollPolicy {
    /// The wait between polls when the service gives no `Retry-After`.
    pub default_interval: Duration,
    /// The longest wait between polls, whatever `Retry-After` says.
    pub max_interval: Duration,
    /// The longest an operation may take before rha gives up on it.
    pub timeout: Duration,
}

impl Default for PollPolicy {
    fn default() -> Self {
        PollPolicy {
            default_interval: Duration::from_secs(5),
            max_interval: Duration::from_secs(30),
            timeout: Duration::from_secs(30 * 60),
        }
    }
}

/// Options of [`SdkArm`].
#[derive(Clone, Debug)]
pub struct ArmOptions {
    /// Polling of long-running operations.
    pub poll: PollPolicy,
    /// Let the SDK retry throttled and failed requests (default true; tests turn it off).
    pub retry: bool,
    /// The scope of storage tokens.
    pub storage_scope: String,
}

impl Default for ArmOptions {
    fn default() -> Self {
        ArmOptions {
            poll: PollPolicy::default(),
            retry: true,
            storage_scope: STORAGE_SCOPE.to_owned(),
        }
    }
}

/// Instance views read at once when a region's VMs are listed.
const INSTANCE_VIEWS_IN_FLIGHT: usize = 8;

/// Counts the requests sent through it.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn HttpClient>,
    calls: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl HttpClient for Counting {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<Response> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        // The method and path only: the query may hold a signature, and the
        // headers a bearer token (see `crate::logging`).
        tracing::debug!(
            method = %request.method(),
            host = request.url().host_str().unwrap_or(""),
            path = request.url().path(),
            "Resource Manager request"
        );
        self.inner.execute_request(request).await
    }
}

/// Resource Manager through `azure_mgmt_compute` and `azure_mgmt_network`.
pub struct SdkArm {
    subscription: String,
    endpoint: Url,
    compute: compute::Client,
    network: network::Client,
    /// For polls (plain GETs on URLs the service gave).
    pipeline: Pipeline,
    /// For blob probes (not counted as Resource Manager calls).
    storage: Pipeline,
    credential: Arc<dyn TokenCredential>,
    scope: String,
    storage_scope: String,
    calls: Arc<AtomicU64>,
    poll: PollPolicy,
}

impl std::fmt::Debug for SdkArm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdkArm")
            .field("subscription", &self.subscription)
            .field("endpoint", &self.endpoint.as_str())
            .field("calls", &self.calls.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl SdkArm {
    /// Resource Manager for `account` (its endpoint, scope and credential).
    pub fn new(account: &AzureAccount, options: ArmOptions) -> Result<SdkArm, AccountError> {
        SdkArm::with_http(account, azure_core::new_http_client(), options)
    }

    /// [`SdkArm::new`] sending through `http` (tokens included).
    pub fn with_http(
        account: &AzureAccount,
        http: Arc<dyn HttpClient>,
        options: ArmOptions,
    ) -> Result<SdkArm, AccountError> {
        account.check()?;
        let endpoint = Url::parse(account.arm_endpoint()).map_err(|_| AccountError::Invalid {
            field: "arm-endpoint",
            reason: format!("`{}` is not a URL", account.arm_endpoint()),
        })?;
        let credential: Arc<dyn TokenCredential> =
            crate::account::AccountCredential::new(account, http.clone())?;
        let calls = Arc::new(AtomicU64::new(0));
        let storage_transport = TransportOptions::new(http.clone());
        let transport = TransportOptions::new(Arc::new(Counting {
            inner: http,
            calls: calls.clone(),
        }));
        let retry = if options.retry {
            RetryOptions::default()
        } else {
            RetryOptions::none()
        };
        let scope = account.arm_scope();
        let compute = compute::Client::builder(credential.clone())
            .endpoint(endpoint.clone())
            .scopes(&[&scope])
            .transport(transport.clone())
            .retry(retry.clone())
            .build()
            .map_err(|e| AccountError::Invalid {
                field: "arm-endpoint",
                reason: e.to_string(),
            })?;
        let network = network::Client::builder(credential.clone())
            .endpoint(endpoint.clone())
            .scopes(&[&scope])
            .transport(transport.clone())
            .retry(retry.clone())
            .build()
            .map_err(|e| AccountError::Invalid {
                field: "arm-endpoint",
                reason: e.to_string(),
            })?;
        let pipeline = Pipeline::new(
            option_env!("CARGO_PKG_NAME"),
            option_env!("CARGO_PKG_VERSION"),
            ClientOptions::new(transport).retry(retry.clone()),
            Vec::new(),
            Vec::new(),
        );
        let storage = Pipeline::new(
            option_env!("CARGO_PKG_NAME"),
            option_env!("CARGO_PKG_VERSION"),
            ClientOptions::new(storage_transport).retry(retry),
            Vec::new(),
            Vec::new(),
        );
        Ok(SdkArm {
            subscription: account.subscription_id.clone(),
            endpoint,
            compute,
            network,
            pipeline,
            storage,
            credential,
            scope,
            storage_scope: options.storage_scope,
            calls,
            poll: options.poll,
        })
    }

    fn id(&self, kind: ResourceKind, rg: &str, name: &str) -> String {
        ResourceId::new(&self.subscription, rg, kind, name).to_string()
    }

    /// The URL of a resource (for polling its `provisioningState`).
    fn resource_url(&self, id: &str, api_version: &str) -> Result<Url, ArmErrorKind> {
        let mut url = self.endpoint.clone();
        url.set_path(id);
        url.query_pairs_mut()
            .append_pair("api-version", api_version);
        Ok(url)
    }

    /// A GET of a URL the service gave (an operation or a resource).
    async fn get_url(&self, url: &Url, scope: &str) -> Result<(u16, Response), ArmErrorKind> {
        let token = self
            .credential
            .get_token(&[scope])
            .await
            .map_err(|e| kind_of(&e))?;
        let mut req = Request::new(url.clone(), Method::Get);
        req.insert_header(
            azure_core::headers::AUTHORIZATION,
            format!("Bearer {}", token.token.secret()),
        );
        let rsp = self
            .pipeline
            .send(&Context::default(), &mut req)
            .await
            .map_err(|e| kind_of(&e))?;
        Ok((rsp.status() as u16, rsp))
    }

    fn wait_for(&self, rsp_headers: &azure_core::headers::Headers) -> Duration {
        let secs = rsp_headers
            .get_optional_str(&RETRY_AFTER)
            .and_then(|s| s.trim().parse::<u64>().ok());
        match secs {
            Some(s) => Duration::from_secs(s).min(self.poll.max_interval),
            None => self.poll.default_interval,
        }
    }

    /// Waits for the long-running operation a request started, then returns
    /// the resource's JSON (`resource` is `Some(url)` for PUTs) or the last
    /// answer's.
    async fn finish(&self, rsp: Response, resource: Option<Url>) -> Result<Value, ArmErrorKind> {
        let start = Instant::now();
        let status = rsp.status() as u16;
        let headers = rsp.headers().clone();
        let body = body_json(rsp).await?;
        let async_op = header_url(&headers, &AZURE_ASYNCOPERATION);
        let location = header_url(&headers, &LOCATION);
        let mut wait = self.wait_for(&headers);

        if let Some(op) = async_op {
            let mut last = "Accepted".to_owned();
            loop {
                self.check_deadline(start, &last)?;
                tokio::time::sleep(wait).await;
                let (_, rsp) = self.get_url(&op, &self.scope).await?;
                wait = self.wait_for(rsp.headers());
                let v = body_json(rsp).await?;
                last = v
                    .get("status")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                match last.to_ascii_lowercase().as_str() {
                    "succeeded" => break,
                    "failed" | "canceled" | "cancelled" => {
                        return Err(ArmErrorKind::Failed {
                            status: last,
                            code: str_at(&v, "/error/code"),
                            message: str_at(&v, "/error/message"),
                        })
                    }
                    "" => {
                        return Err(ArmErrorKind::Unexpected(format!(
                            "an operation status without `status`: {v}"
                        )))
                    }
                    _ => {}
                }
            }
            return match resource {
                Some(url) => self.poll_resource(&url, start, Duration::ZERO).await,
                None => Ok(Value::Null),
            };
        }
        if status == 202 {
            if let Some(loc) = location {
                loop {
                    self.check_deadline(start, "Accepted")?;
                    tokio::time::sleep(wait).await;
                    let (st, rsp) = self.get_url(&loc, &self.scope).await?;
                    wait = self.wait_for(rsp.headers());
                    let v = body_json(rsp).await?;
                    if st != 202 {
                        return match resource {
                            Some(url) => self.poll_resource(&url, start, Duration::ZERO).await,
                            None => Ok(v),
                        };
                    }
                }
            }
        }
        match resource {
            Some(url) if !is_terminal(&body) => self.poll_resource(&url, start, wait).await,
            _ => {
                provisioning_failed(&body)?;
                Ok(body)
            }
        }
    }

    /// GETs the resource until its `provisioningState` is terminal.
    async fn poll_resource(
        &self,
        url: &Url,
        start: Instant,
        mut wait: Duration,
    ) -> Result<Value, ArmErrorKind> {
        loop {
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let (_, rsp) = self.get_url(url, &self.scope).await?;
            wait = self.wait_for(rsp.headers());
            let v = body_json(rsp).await?;
            if is_terminal(&v) {
                provisioning_failed(&v)?;
                return Ok(v);
            }
            let state = str_at(&v, "/properties/provisioningState").unwrap_or_default();
            self.check_deadline(start, &state)?;
        }
    }

    fn check_deadline(&self, start: Instant, last: &str) -> Result<(), ArmErrorKind> {
        if start.elapsed() > self.poll.timeout {
            Err(ArmErrorKind::Timeout {
                after: self.poll.timeout,
                last_status: last.to_owned(),
            })
        } else {
            Ok(())
        }
    }

    /// Sends a PUT made by the SDK and waits for it; returns the resource.
    async fn put(
        &self,
        op: &str,
        id: String,
        api_version: &str,
        sent: azure_core::Result<Response>,
    ) -> Result<Created, ArmError> {
        let err = |k| ArmError::new(op, &id, k);
        let rsp = sent.map_err(|e| err(kind_of(&e)))?;
        let url = self.resource_url(&id, api_version).map_err(err)?;
        let body = self.finish(rsp, Some(url)).await.map_err(err)?;
        let id = str_at(&body, "/id").unwrap_or(id);
        Ok(Created { id, body })
    }

    /// Sends a POST or DELETE made by the SDK and waits for it.
    async fn act(
        &self,
        op: &str,
        id: &str,
        sent: azure_core::Result<Response>,
    ) -> Result<(), ArmError> {
        let rsp = sent.map_err(|e| ArmError::new(op, id, kind_of(&e)))?;
        self.finish(rsp, None)
            .await
            .map(|_| ())
            .map_err(|k| ArmError::new(op, id, k))
    }
}

/// API versions of the resources rha polls (as the SDK features fix them).
const DISK_API: &str = "2024-03-02";
const COMPUTE_API: &str = "2024-07-01";
const NETWORK_API: &str = "2024-03-01";

#[async_trait::async_trait]
impl AzureApi for SdkArm {
    fn subscription_id(&self) -> &str {
        &self.subscription
    }

    fn arm_calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    async fn get_vm(
        &self,
        resource_group: &str,
        name: &str,
        instance_view: bool,
    ) -> Result<Option<VmResource>, ArmError> {
        let id = self.id(ResourceKind::VirtualMachine, resource_group, name);
        let mut b =
            self.compute
                .virtual_machines_client()
                .get(resource_group, name, &self.subscription);
        if instance_view {
            b = b.expand("instanceView");
        }
        match b.send().await {
            Ok(rsp) => {
                let v = body_json(rsp.into_raw_response())
                    .await
                    .map_err(|k| ArmError::new("get VM", &id, k))?;
                Ok(Some(VmResource::from_json(&v)))
            }
            Err(e) => match kind_of(&e) {
                ArmErrorKind::NotFound => Ok(None),
                k => Err(ArmError::new("get VM", id, k)),
            },
        }
    }

    async fn list_vms(&self, location: &str) -> Result<Vec<VmResource>, ArmError> {
        let what = format!("in {location} of subscription {}", self.subscription);
        let mut pages = self
            .compute
            .virtual_machines_client()
            .list_by_location(location, &self.subscription)
            .into_stream();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| ArmError::new("list VMs", &what, kind_of(&e)))?;
            for vm in page.value {
                let v = serde_json::to_value(&vm).map_err(|e| {
                    ArmError::new("list VMs", &what, ArmErrorKind::Unexpected(e.to_string()))
                })?;
                out.push(VmResource::from_json(&v));
            }
        }
        // The listing has no power states: one instance view per VM, at
        // most 8 at a time (a region with many VMs lists in seconds, not in
        // one round trip per VM one after the other).
        let keys: Vec<(String, String)> = out
            .iter()
            .map(|vm| (vm.resource_group.clone(), vm.name.clone()))
            .collect();
        let mut views = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(INSTANCE_VIEWS_IN_FLIGHT) {
            let reads: Vec<_> = chunk
                .iter()
                .map(|(rg, name)| Box::pin(self.get_vm(rg, name, true)))
                .collect();
            views.extend(futures::future::join_all(reads).await);
        }
        for (vm, view) in out.iter_mut().zip(views) {
            if let Ok(Some(v)) = view {
                vm.power_state = v.power_state;
                vm.failure = v.failure;
            }
        }
        Ok(out)
    }

    async fn get_subnet(&self, subnet_id: &str) -> Result<Option<String>, ArmError> {
        let op = "get subnet";
        let r = ResourceId::parse(subnet_id).ok_or_else(|| {
            ArmError::new(
                op,
                subnet_id,
                ArmErrorKind::Unexpected("not a subnet id".into()),
            )
        })?;
        let Some((_, subnet)) = &r.child else {
            return Err(ArmError::new(
                op,
                subnet_id,
                ArmErrorKind::Unexpected("not a subnet id".into()),
            ));
        };
        let sent = self
            .network
            .subnets_client()
            .get(&r.resource_group, &r.name, subnet, &r.subscription)
            .send()
            .await;
        match sent {
            Ok(rsp) => {
                let v = body_json(rsp.into_raw_response())
                    .await
                    .map_err(|k| ArmError::new(op, subnet_id, k))?;
                Ok(Some(
                    str_at(&v, "/properties/addressPrefix")
                        .or_else(|| str_at(&v, "/properties/addressPrefixes/0"))
                        .unwrap_or_default(),
                ))
            }
            Err(e) => match kind_of(&e) {
                ArmErrorKind::NotFound => Ok(None),
                k => Err(ArmError::new(op, subnet_id, k)),
            },
        }
    }

    async fn create_disk(&self, d: &DiskImport) -> Result<Created, ArmError> {
        let op = "import managed disk";
        let id = self.id(ResourceKind::Disk, &d.resource_group, &d.name);
        let body = disk_body(d);
        let model: compute::models::Disk = from_body(op, &id, body)?;
        let sent = self
            .compute
            .disks_client()
            // Disks take the subscription first.
            .create_or_update(&self.subscription, &d.resource_group, &d.name, model)
            .send()
            .await
            .map(|r| r.into_raw_response());
        self.put(op, id, DISK_API, sent).await
    }

    async fn create_public_ip(&self, p: &PublicIpSpec) -> Result<Created, ArmError> {
        let op = "create public IP address";
        let id = self.id(ResourceKind::PublicIp, &p.resource_group, &p.name);
        let model: network::models::PublicIpAddress = from_body(op, &id, public_ip_body(p))?;
        let sent = self
            .network
            .public_ip_addresses_client()
            .create_or_update(&p.resource_group, &p.name, model, &self.subscription)
            .send()
            .await
            .map(|r| r.into_raw_response());
        self.put(op, id, NETWORK_API, sent).await
    }

    async fn create_nic(&self, n: &NicSpec) -> Result<Created, ArmError> {
        let op = "create network interface";
        let id = self.id(ResourceKind::NetworkInterface, &n.resource_group, &n.name);
        let model: network::models::NetworkInterface = from_body(op, &id, nic_body(n))?;
        let sent = self
            .network
            .network_interfaces_client()
            .create_or_update(&n.resource_group, &n.name, model, &self.subscription)
            .send()
            .await
            .map(|r| r.into_raw_response());
        self.put(op, id, NETWORK_API, sent).await
    }

    async fn create_vm(&self, v: &VmCreate) -> Result<Created, ArmError> {
        let op = "create VM";
        let id = self.id(ResourceKind::VirtualMachine, &v.resource_group, &v.name);
        let model: compute::models::VirtualMachine = from_body(op, &id, vm_body(v))?;
        let sent = self
            .compute
            .virtual_machines_client()
            // VMs take the subscription last.
            .create_or_update(&v.resource_group, &v.name, model, &self.subscription)
            .send()
            .await
            .map(|r| r.into_raw_response());
        self.put(op, id, COMPUTE_API, sent).await
    }

    async fn power(
        &self,
        resource_group: &str,
        name: &str,
        action: PowerAction,
    ) -> Result<(), ArmError> {
        let id = self.id(ResourceKind::VirtualMachine, resource_group, name);
        let vms = self.compute.virtual_machines_client();
        let (op, sent) = match action {
            PowerAction::Start => (
                "start VM",
                vms.start(resource_group, name, &self.subscription)
                    .send()
                    .await
                    .map(|r| r.into_raw_response()),
            ),
            PowerAction::PowerOff => (
                "power off VM",
                vms.power_off(resource_group, name, &self.subscription)
                    .send()
                    .await
                    .map(|r| r.into_raw_response()),
            ),
            PowerAction::Deallocate => (
                "deallocate VM",
                vms.deallocate(resource_group, name, &self.subscription)
                    .send()
                    .await
                    .map(|r| r.into_raw_response()),
            ),
        };
        self.act(op, &id, sent).await
    }

    async fn delete(
        &self,
        kind: ResourceKind,
        resource_group: &str,
        name: &str,
    ) -> Result<(), ArmError> {
        let id = self.id(kind, resource_group, name);
        let op = format!("delete {}", kind.noun());
        let sub = &self.subscription;
        let sent = match kind {
            ResourceKind::VirtualMachine => self
                .compute
                .virtual_machines_client()
                .delete(resource_group, name, sub)
                .send()
                .await
                .map(|r| r.into_raw_response()),
            ResourceKind::Disk => self
                .compute
                .disks_client()
                .delete(sub, resource_group, name)
                .send()
                .await
                .map(|r| r.into_raw_response()),
            ResourceKind::NetworkInterface => self
                .network
                .network_interfaces_client()
                .delete(resource_group, name, sub)
                .send()
                .await
                .map(|r| r.into_raw_response()),
            ResourceKind::PublicIp => self
                .network
                .public_ip_addresses_client()
                .delete(resource_group, name, sub)
                .send()
                .await
                .map(|r| r.into_raw_response()),
        };
        match self.act(&op, &id, sent).await {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    async fn probe_blob(&self, url: &str) -> Result<BlobProbe, ArmError> {
        let op = "check replica blob";
        let parsed = Url::parse(url).map_err(|_| {
            ArmError::new(
                op,
                url,
                ArmErrorKind::Unexpected(
                    "not a URL; a replica disk of an Azure scenario is a page blob URL".into(),
                ),
            )
        })?;
        let token = match self.credential.get_token(&[&self.storage_scope]).await {
            Ok(t) => t,
            Err(e) => return Err(ArmError::new(op, url, kind_of(&e))),
        };
        let send = |method: Method, range: Option<String>| {
            let mut req = Request::new(parsed.clone(), method);
            req.insert_header(
                azure_core::headers::AUTHORIZATION,
                format!("Bearer {}", token.token.secret()),
            );
            req.insert_header(azure_core::headers::VERSION, STORAGE_VERSION);
            if let Some(r) = range {
                req.insert_header(azure_core::headers::MS_RANGE, r);
            }
            async move { self.storage.send(&Context::default(), &mut req).await }
        };
        let head = match send(Method::Head, None).await {
            Ok(r) => r,
            Err(e) => {
                return match kind_of(&e) {
                    ArmErrorKind::NotFound => Ok(BlobProbe::Missing),
                    ArmErrorKind::Status {
                        status: 403, code, ..
                    } => Ok(BlobProbe::Unchecked {
                        reason: format!(
                            "the storage service refused to show the blob (403{}); give the \
                             service principal `Storage Blob Data Reader` on the storage account \
                             so rha can check the replica before a switchover",
                            code.map(|c| format!(" {c}")).unwrap_or_default()
                        ),
                    }),
                    k => Err(ArmError::new(op, url, k)),
                }
            }
        };
        let h = head.headers();
        let length = h
            .get_optional_str(&azure_core::headers::CONTENT_LENGTH)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        let blob_type = h
            .get_optional_str(&azure_core::headers::BLOB_TYPE)
            .unwrap_or("")
            .to_owned();
        let mut vhd_size = None;
        if length >= FOOTER_SIZE as u64 {
            let range = format!("bytes={}-{}", length - FOOTER_SIZE as u64, length - 1);
            let rsp = send(Method::Get, Some(range))
                .await
                .map_err(|e| ArmError::new(op, url, kind_of(&e)))?;
            let bytes = rsp
                .into_body()
                .collect()
                .await
                .map_err(|e| ArmError::new(op, url, kind_of(&e)))?;
            vhd_size = Footer::parse(&bytes).ok().map(|f| f.current_size);
        }
        Ok(BlobProbe::Found {
            length,
            blob_type,
            vhd_size,
        })
    }
}

/// The body of a managed disk imported from a blob.
pub fn disk_body(d: &DiskImport) -> Value {
    let mut props = json!({
        "creationData": {
            "createOption": "Import",
            "sourceUri": d.source_uri,
            "storageAccountId": d.storage_account_id,
        }
    });
    if let Some(os) = d.os_type {
        props["osType"] = json!(os_name(os));
    }
    if let Some(g) = d.generation {
        props["hyperVGeneration"] = json!(generation_name(g));
    }
    json!({
        "location": d.location,
        "tags": d.tags,
        "sku": {"name": d.sku},
        "properties": props,
    })
}

/// The body of a static Standard public IP address.
pub fn public_ip_body(p: &PublicIpSpec) -> Value {
    json!({
        "location": p.location,
        "tags": p.tags,
        "sku": {"name": "Standard", "tier": "Regional"},
        "properties": {
            "publicIPAllocationMethod": "Static",
            "publicIPAddressVersion": "IPv4",
        }
    })
}

/// The body of a network interface.
pub fn nic_body(n: &NicSpec) -> Value {
    let mut ip = json!({
        "subnet": {"id": n.subnet_id},
        "primary": true,
        "privateIPAddressVersion": "IPv4",
    });
    match &n.private_ip {
        Some(addr) => {
            ip["privateIPAllocationMethod"] = json!("Static");
            ip["privateIPAddress"] = json!(addr);
        }
        None => ip["privateIPAllocationMethod"] = json!("Dynamic"),
    }
    if let Some(pip) = &n.public_ip_id {
        ip["publicIPAddress"] = json!({"id": pip, "properties": {"deleteOption": "Delete"}});
    }
    json!({
        "location": n.location,
        "tags": n.tags,
        "properties": {
            "ipConfigurations": [{"name": "ipconfig1", "properties": ip}],
        }
    })
}

/// The body of a VM booting from an attached OS disk.
pub fn vm_body(v: &VmCreate) -> Value {
    let data: Vec<Value> = v
        .data_disk_ids
        .iter()
        .enumerate()
        .map(|(lun, id)| {
            json!({
                "lun": lun,
                "createOption": "Attach",
                "managedDisk": {"id": id, "storageAccountType": v.disk_sku},
                "deleteOption": "Detach",
            })
        })
        .collect();
    json!({
        "location": v.location,
        "tags": v.tags,
        "properties": {
            "hardwareProfile": {"vmSize": v.size},
            "storageProfile": {
                "osDisk": {
                    "osType": os_name(v.os_type),
                    "createOption": "Attach",
                    "managedDisk": {"id": v.os_disk_id, "storageAccountType": v.disk_sku},
                    "deleteOption": "Detach",
                },
                "dataDisks": data,
            },
            "networkProfile": {
                "networkInterfaces": [{
                    "id": v.nic_id,
                    "properties": {"primary": true, "deleteOption": "Delete"},
                }],
            },
            "diagnosticsProfile": {"bootDiagnostics": {"enabled": true}},
        }
    })
}

fn os_name(os: Os) -> &'static str {
    match os {
        Os::Windows => "Windows",
        Os::Linux => "Linux",
    }
}

fn generation_name(g: HyperVGeneration) -> &'static str {
    match g {
        HyperVGeneration::V1 => "V1",
        HyperVGeneration::V2 => "V2",
    }
}

/// Checks a body against the SDK's model.
fn from_body<T: serde::de::DeserializeOwned>(
    op: &str,
    id: &str,
    body: Value,
) -> Result<T, ArmError> {
    serde_json::from_value(body).map_err(|e| {
        ArmError::new(
            op,
            id,
            ArmErrorKind::Unexpected(format!("the request does not fit the SDK's model: {e}")),
        )
    })
}

fn header_url(headers: &azure_core::headers::Headers, name: &HeaderName) -> Option<Url> {
    headers
        .get_optional_str(name)
        .and_then(|s| Url::parse(s).ok())
}

async fn body_json(rsp: Response) -> Result<Value, ArmErrorKind> {
    let bytes = rsp
        .into_body()
        .collect()
        .await
        .map_err(|e| ArmErrorKind::Transport(error_chain(&e)))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ArmErrorKind::Unexpected(format!("a body that is not JSON ({e})")))
}

fn str_at(v: &Value, pointer: &str) -> Option<String> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn is_terminal(v: &Value) -> bool {
    match v
        .pointer("/properties/provisioningState")
        .and_then(Value::as_str)
    {
        None => true,
        Some(s) => matches!(
            s.to_ascii_lowercase().as_str(),
            "succeeded" | "failed" | "canceled"
        ),
    }
}

fn provisioning_failed(v: &Value) -> Result<(), ArmErrorKind> {
    match v
        .pointer("/properties/provisioningState")
        .and_then(Value::as_str)
    {
        Some(s) if s.eq_ignore_ascii_case("failed") || s.eq_ignore_ascii_case("canceled") => {
            Err(ArmErrorKind::Failed {
                status: s.to_owned(),
                code: None,
                message: Some("the resource's provisioningState is failed".into()),
            })
        }
        _ => Ok(()),
    }
}

/// What an SDK error means for rha.
pub(crate) fn kind_of(e: &azure_core::Error) -> ArmErrorKind {
    if let Some(a) = auth_failure_of(e) {
        return ArmErrorKind::Auth(a.clone());
    }
    match e.kind() {
        ErrorKind::HttpResponse { status, error_code } => {
            let status = *status as u16;
            let message = e
                .as_http_error()
                .and_then(|h| h.error_message())
                .map(str::to_owned);
            if status == 404 {
                return ArmErrorKind::NotFound;
            }
            ArmErrorKind::Status {
                status,
                code: error_code.clone(),
                message,
            }
        }
        ErrorKind::Io => ArmErrorKind::Transport(error_chain(e)),
        _ => ArmErrorKind::Unexpected(error_chain(e)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn bodies_fit_the_sdk_models() {
        let tags = BTreeMap::from([("created-by".to_owned(), "rha".to_owned())]);
        let d = DiskImport {
            resource_group: "rg".into(),
            name: "d".into(),
            location: "westeurope".into(),
            source_uri: "https://sa.blob.core.windows.net/c/os.vhd".into(),
            storage_account_id:
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/sa"
                    .into(),
            os_type: Some(Os::Windows),
            generation: Some(HyperVGeneration::V2),
            sku: "Premium_LRS".into(),
            tags: tags.clone(),
        };
        let sent: compute::models::Disk = from_body("t", "d", disk_body(&d)).unwrap();
        let again = serde_json::to_value(&sent).unwrap();
        assert_eq!(
            again["properties"]["creationData"]["createOption"],
            "Import"
        );
        assert_eq!(again["properties"]["hyperVGeneration"], "V2");
        assert_eq!(again["properties"]["osType"], "Windows");
        assert_eq!(again["sku"]["name"], "Premium_LRS");

        let n = NicSpec {
            resource_group: "rg".into(),
            name: "n".into(),
            location: "westeurope".into(),
            subnet_id: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/s".into(),
            private_ip: Some("10.0.0.5".into()),
            public_ip_id: Some("pip".into()),
            tags: tags.clone(),
        };
        let sent: network::models::NetworkInterface = from_body("t", "n", nic_body(&n)).unwrap();
        let again = serde_json::to_value(&sent).unwrap();
        let ip = &again["properties"]["ipConfigurations"][0]["properties"];
        assert_eq!(ip["privateIPAllocationMethod"], "Static");
        assert_eq!(ip["privateIPAddress"], "10.0.0.5");
        assert_eq!(ip["publicIPAddress"]["id"], "pip");

        let p = PublicIpSpec {
            resource_group: "rg".into(),
            name: "p".into(),
            location: "westeurope".into(),
            tags: tags.clone(),
        };
        let sent: network::models::PublicIpAddress =
            from_body("t", "p", public_ip_body(&p)).unwrap();
        let again = serde_json::to_value(&sent).unwrap();
        assert_eq!(again["properties"]["publicIPAllocationMethod"], "Static");

        let v = VmCreate {
            resource_group: "rg".into(),
            name: "vm".into(),
            location: "westeurope".into(),
            size: "Standard_D2s_v3".into(),
            os_type: Os::Linux,
            os_disk_id: "d0".into(),
            data_disk_ids: vec!["d1".into()],
            disk_sku: "StandardSSD_LRS".into(),
            nic_id: "n0".into(),
            tags,
        };
        let sent: compute::models::VirtualMachine = from_body("t", "vm", vm_body(&v)).unwrap();
        let again = serde_json::to_value(&sent).unwrap();
        let sp = &again["properties"]["storageProfile"];
        assert_eq!(sp["osDisk"]["createOption"], "Attach");
        assert_eq!(sp["osDisk"]["managedDisk"]["id"], "d0");
        assert_eq!(sp["dataDisks"][0]["lun"], 0);
        assert_eq!(
            again["properties"]["networkProfile"]["networkInterfaces"][0]["id"],
            "n0"
        );
        assert!(again["properties"].get("osProfile").is_none());
    }
}
