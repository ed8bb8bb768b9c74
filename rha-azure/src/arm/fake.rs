//! A local stand-in for Azure AD and Resource Manager (feature `fake-arm`),
//! for tests, examples and benchmarks: Resource Manager has no emulator.
//!
//! [`FakeAzure`] is a small HTTP/1.1 server on 127.0.0.1 that follows the
//! documented REST contract for what a switchover uses:
//!
//! - Azure AD v2 `POST /{tenant}/oauth2/v2.0/token` (client credentials):
//!   an `access_token`, or the AADSTS error JSON for an unknown tenant
//!   (AADSTS90002, 400), an unknown application (AADSTS700016, 400), a
//!   wrong secret (AADSTS7000215, 401) or an expired one (AADSTS7000222, 401).
//! - `PUT` of managed disks (202 Accepted, `Azure-AsyncOperation` and
//!   `Location`), public IPs, NICs and VMs (201 Created with
//!   `provisioningState` `Creating`/`Updating` and `Azure-AsyncOperation`),
//!   checking the bodies (Import from an existing blob with a storage account
//!   id, an existing subnet, existing disks and NIC).
//! - `GET` of each (404 `ResourceNotFound` when absent), VMs with
//!   `$expand=instanceView` (provisioning and power states), subnets, VMs by
//!   location; `POST` `start` / `powerOff` / `deallocate` (202); `DELETE`
//!   (202, or 204 when absent; 409 for a disk or NIC still attached to a VM).
//! - `GET /operations/{id}`: `InProgress` for [`FakeAzure::set_pending_polls`]
//!   polls, then `Succeeded` (or `Failed` with the injected error); every
//!   answer carries `Retry-After: 0`.
//! - Replica blobs `HEAD`/`GET {url}/blob/{account}/{container}/{blob}`:
//!   a page blob with a fixed-VHD footer.
//!
//! Every request is recorded ([`FakeAzure::requests`]) with its JSON body,
//! and failures can be injected per step ([`Failure`]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use azure_core::Url;
use rha_core::volume::vhd::Footer;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::account::{AzureAccount, ClientSecret};

/// The identities the fake's token endpoint knows.
#[derive(Clone, Debug)]
pub struct FakeConfig {
    /// The subscription.
    pub subscription: String,
    /// The only tenant that exists.
    pub tenant: String,
    /// The only application.
    pub client_id: String,
    /// Its secret.
    pub secret: String,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            subscription: "11111111-2222-3333-4444-555555555555".into(),
            tenant: "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee".into(),
            client_id: "99999999-8888-7777-6666-555555555555".into(),
            secret: "fake-secret-value".into(),
        }
    }
}

/// A request the fake received.
#[derive(Clone, Debug, PartialEq)]
pub struct Recorded {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query string (`api-version=...`).
    pub query: String,
    /// The JSON body, if there was one (token requests: `null`, never the secret).
    pub body: Option<Value>,
}

/// An injected failure: the first requests matching `method` and `path_contains`
/// (case-insensitive) fail.
#[derive(Clone, Debug)]
pub struct Failure {
    /// `PUT`, `POST`, `DELETE`, `GET`.
    pub method: String,
    /// A piece of the path, such as `/networkInterfaces/`.
    pub path_contains: String,
    /// The HTTP status of a synchronous failure.
    pub status: u16,
    /// The ARM error code.
    pub code: String,
    /// The message.
    pub message: String,
    /// Accept the request (201/202) and fail its async operation instead.
    pub in_operation: bool,
    /// How many requests fail (then it is spent); 0 = every one.
    pub times: u32,
}

impl Failure {
    /// A synchronous failure of the first `method` on a path containing `path_contains`.
    pub fn now(method: &str, path_contains: &str, status: u16, code: &str, message: &str) -> Self {
        Failure {
            method: method.to_owned(),
            path_contains: path_contains.to_owned(),
            status,
            code: code.to_owned(),
            message: message.to_owned(),
            in_operation: false,
            times: 1,
        }
    }

    /// An accepted request whose operation ends `Failed`.
    pub fn in_operation(method: &str, path_contains: &str, code: &str, message: &str) -> Self {
        Failure {
            in_operation: true,
            ..Failure::now(method, path_contains, 200, code, message)
        }
    }
}

/// How the token endpoint answers the right credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenMode {
    /// A token.
    Ok,
    /// AADSTS7000222: the secret has expired.
    Expired,
}

#[derive(Debug)]
struct Operation {
    remaining: u32,
    failure: Option<(String, String)>,
    effect: Effect,
}

#[derive(Debug)]
enum Effect {
    Provisioned(String),
    Power(String, &'static str),
    Delete(String),
}

#[derive(Debug, Default)]
struct State {
    config: Option<FakeConfig>,
    base: String,
    token_mode: Option<TokenMode>,
    tokens_issued: u64,
    resources: BTreeMap<String, Value>,
    blobs: HashMap<String, u64>,
    requests: Vec<Recorded>,
    failures: Vec<Failure>,
    pending_polls: u32,
    operations: HashMap<u64, Operation>,
    next_op: u64,
    next_ip: u32,
}

/// A running fake of Azure AD, Resource Manager and the replica blobs.
pub struct FakeAzure {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
    config: FakeConfig,
}

impl Drop for FakeAzure {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeAzure {
    /// Starts the fake on a free port of 127.0.0.1.
    pub async fn start(config: FakeConfig) -> io::Result<FakeAzure> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            config: Some(config.clone()),
            base: format!("http://{addr}"),
            token_mode: Some(TokenMode::Ok),
            ..State::default()
        }));
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    let _ = connection(sock, st).await;
                });
            }
        });
        Ok(FakeAzure {
            addr,
            state,
            task,
            config,
        })
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("fake state")
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The identities.
    pub fn config(&self) -> &FakeConfig {
        &self.config
    }

    /// An account pointing at this fake, with the right secret.
    pub fn account(&self, name: &str) -> AzureAccount {
        AzureAccount {
            name: name.to_owned(),
            subscription_id: self.config.subscription.clone(),
            tenant_id: self.config.tenant.clone(),
            client_id: self.config.client_id.clone(),
            secret: ClientSecret::new(self.config.secret.clone()),
            authority_host: Some(self.url()),
            arm_endpoint: Some(self.url()),
            blob_endpoint: None,
        }
    }

    /// How the right credentials are answered.
    pub fn set_token_mode(&self, mode: TokenMode) {
        self.st().token_mode = Some(mode);
    }

    /// How many `InProgress` answers each operation gives before it ends.
    pub fn set_pending_polls(&self, n: u32) {
        self.st().pending_polls = n;
    }

    /// Adds a failure rule.
    pub fn fail(&self, f: Failure) {
        self.st().failures.push(f);
    }

    /// Tokens issued so far.
    pub fn tokens_issued(&self) -> u64 {
        self.st().tokens_issued
    }

    /// Creates a subnet `prefix` (such as `10.1.0.0/24`) in a virtual network.
    pub fn add_subnet(&self, resource_group: &str, vnet: &str, subnet: &str, prefix: &str) {
        let id = super::subnet_id(&self.config.subscription, resource_group, vnet, subnet);
        self.st().resources.insert(
            id.to_ascii_lowercase(),
            json!({
                "id": id, "name": subnet,
                "type": "Microsoft.Network/virtualNetworks/subnets",
                "properties": {"addressPrefix": prefix, "provisioningState": "Succeeded"}
            }),
        );
    }

    /// Adds a replica page blob of `virtual_size` bytes (plus a fixed-VHD
    /// footer) and returns its URL.
    pub fn add_blob(
        &self,
        account: &str,
        container: &str,
        blob: &str,
        virtual_size: u64,
    ) -> String {
        let path = format!("/blob/{account}/{container}/{blob}");
        self.st().blobs.insert(path.clone(), virtual_size);
        format!("{}{path}", self.url())
    }

    /// Makes a page blob served elsewhere (Azurite) importable: disk imports
    /// whose `sourceUri` has the path of `url` (its snapshots included)
    /// succeed as if it held `virtual_size` bytes. The fake does not serve it.
    pub fn add_blob_at(&self, url: &str, virtual_size: u64) {
        let path = Url::parse(url)
            .map(|u| u.path().to_owned())
            .unwrap_or_else(|_| url.to_owned());
        self.st().blobs.insert(path, virtual_size);
    }

    /// Adds an existing VM (an appliance, say) to the subscription.
    pub fn add_vm(
        &self,
        resource_group: &str,
        name: &str,
        location: &str,
        tags: &[(&str, &str)],
        power: &str,
    ) {
        let id = super::ResourceId::new(
            &self.config.subscription,
            resource_group,
            super::ResourceKind::VirtualMachine,
            name,
        )
        .to_string();
        let tags: BTreeMap<&str, &str> = tags.iter().copied().collect();
        self.st().resources.insert(
            id.to_ascii_lowercase(),
            json!({
                "id": id, "name": name, "location": location, "tags": tags,
                "type": "Microsoft.Compute/virtualMachines",
                "properties": {
                    "provisioningState": "Succeeded",
                    "hardwareProfile": {"vmSize": "Standard_B2s"},
                    "storageProfile": {"osDisk": {"osType": "Linux", "createOption": "FromImage"}},
                    "rhaPowerState": power,
                }
            }),
        );
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.st().requests.clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.st().requests.clear();
    }

    /// The resource with this id (any case), as the fake stores it.
    pub fn resource(&self, id: &str) -> Option<Value> {
        self.st().resources.get(&id.to_ascii_lowercase()).cloned()
    }

    /// The ids of the resources whose type is `provider_type`
    /// (`Microsoft.Compute/disks`, ...).
    pub fn ids_of(&self, provider_type: &str) -> Vec<String> {
        self.st()
            .resources
            .values()
            .filter(|v| {
                v.get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.eq_ignore_ascii_case(provider_type))
            })
            .filter_map(|v| v.get("id").and_then(Value::as_str).map(str::to_owned))
            .collect()
    }
}

struct Req {
    method: String,
    path: String,
    query: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn json(status: u16, v: Value) -> Resp {
        Resp {
            status,
            headers: vec![(
                "Content-Type".into(),
                "application/json; charset=utf-8".into(),
            )],
            body: v.to_string().into_bytes(),
        }
    }

    fn empty(status: u16) -> Resp {
        Resp {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    fn error(status: u16, code: &str, message: &str) -> Resp {
        Resp::json(status, json!({"error": {"code": code, "message": message}}))
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Resp {
        self.headers.push((name.to_owned(), value.into()));
        self
    }
}

async fn connection(sock: TcpStream, state: Arc<Mutex<State>>) -> io::Result<()> {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let line = line.trim_end().to_owned();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split(' ');
        let method = parts.next().unwrap_or("").to_owned();
        let target = parts.next().unwrap_or("/").to_owned();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).await? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let mut body = Vec::new();
        if headers
            .get("transfer-encoding")
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let mut size = String::new();
                r.read_line(&mut size).await?;
                let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0; n + 2];
                r.read_exact(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(n) = headers
            .get("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            body.resize(n.min(16 << 20), 0);
            r.read_exact(&mut body).await?;
        }
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_owned(), q.to_owned()),
            None => (target.clone(), String::new()),
        };
        let req = Req {
            method,
            path,
            query,
            headers,
            body,
        };
        let head = req.method == "HEAD";
        let resp = {
            let mut st = state.lock().expect("fake state");
            handle(&mut st, &req)
        };
        let mut out = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
        for (k, v) in &resp.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        if !resp.headers.iter().any(|(k, _)| k == "Content-Length") {
            out.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
        }
        out.push_str("\r\n");
        w.write_all(out.as_bytes()).await?;
        if !head {
            w.write_all(&resp.body).await?;
        }
        w.flush().await?;
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        _ => "Status",
    }
}

fn handle(st: &mut State, req: &Req) -> Resp {
    let segs: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    // Azure AD.
    if req.method == "POST" && segs.len() == 4 && segs[1..] == ["oauth2", "v2.0", "token"] {
        st.requests.push(Recorded {
            method: req.method.clone(),
            path: req.path.clone(),
            query: req.query.clone(),
            body: None,
        });
        return token(st, segs[0], &req.body);
    }
    // Replica blobs.
    if segs.first() == Some(&"blob") {
        st.requests.push(Recorded {
            method: req.method.clone(),
            path: req.path.clone(),
            query: req.query.clone(),
            body: None,
        });
        return blob(st, req);
    }
    let body: Option<Value> = if req.body.is_empty() {
        None
    } else {
        serde_json::from_slice(&req.body).ok()
    };
    st.requests.push(Recorded {
        method: req.method.clone(),
        path: req.path.clone(),
        query: req.query.clone(),
        body: body.clone(),
    });
    if !req
        .headers
        .get("authorization")
        .is_some_and(|a| a.starts_with("Bearer fake-token-"))
    {
        return Resp::error(
            401,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing or invalid.",
        );
    }
    if segs.first() == Some(&"operations") {
        return operation(st, segs.get(1).copied().unwrap_or(""));
    }
    if !req.query.contains("api-version=") {
        return Resp::error(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        );
    }
    // Injected failures.
    let lower = req.path.to_ascii_lowercase();
    let mut injected = None;
    if let Some(i) = st.failures.iter().position(|f| {
        f.method.eq_ignore_ascii_case(&req.method)
            && lower.contains(&f.path_contains.to_ascii_lowercase())
    }) {
        let f = st.failures[i].clone();
        if f.times == 1 {
            st.failures.remove(i);
        } else if f.times > 1 {
            st.failures[i].times -= 1;
        }
        if !f.in_operation {
            return Resp::error(f.status, &f.code, &f.message);
        }
        injected = Some((f.code, f.message));
    }
    // /subscriptions/{s}/providers/Microsoft.Compute/locations/{l}/virtualMachines
    if req.method == "GET"
        && segs.len() == 7
        && segs[2].eq_ignore_ascii_case("providers")
        && segs[4].eq_ignore_ascii_case("locations")
    {
        let loc = segs[5].to_ascii_lowercase();
        let vms: Vec<Value> = st
            .resources
            .values()
            .filter(|v| {
                v.get("type").and_then(Value::as_str) == Some("Microsoft.Compute/virtualMachines")
                    && v.get("location")
                        .and_then(Value::as_str)
                        .is_some_and(|l| l.eq_ignore_ascii_case(&loc))
            })
            .map(public_view)
            .collect();
        return Resp::json(200, json!({ "value": vms }));
    }
    // POST .../virtualMachines/{name}/{start|powerOff|deallocate}
    if req.method == "POST" {
        if let Some((key, power)) = power_action(&req.path) {
            if !st.resources.contains_key(&key) {
                let vm = req.path.rsplit_once('/').map(|(v, _)| v).unwrap_or("");
                return match super::ResourceId::parse(vm) {
                    Some(rid) => not_found(&rid),
                    None => Resp::error(404, "NotFound", "no such VM"),
                };
            }
            let op = new_operation(st, Effect::Power(key, power), injected);
            return Resp::empty(202)
                .header("Azure-AsyncOperation", op.clone())
                .header("Location", op)
                .header("Retry-After", "0");
        }
    }
    let Some(rid) = super::ResourceId::parse(&req.path) else {
        return Resp::error(404, "NotFound", &format!("no route for {}", req.path));
    };
    let key = rid.to_string().to_ascii_lowercase();
    match req.method.as_str() {
        "GET" => match st.resources.get(&key) {
            Some(v) => {
                let mut v = public_view(v);
                if req.query.contains("instanceView") {
                    v = with_instance_view(st.resources.get(&key).unwrap_or(&Value::Null));
                }
                Resp::json(200, v)
            }
            None => not_found(&rid),
        },
        "PUT" => put(st, &rid, key, body, injected),
        "DELETE" => delete(st, &rid, key, injected),
        "POST" => Resp::error(404, "NotFound", "unknown action"),
        _ => Resp::error(405, "MethodNotAllowed", "method not allowed"),
    }
}

/// Power actions arrive as `.../virtualMachines/{name}/{action}`, which
/// `ResourceId::parse` rejects (an odd tail): the VM's key and the power
/// state the action leads to.
fn power_action(path: &str) -> Option<(String, &'static str)> {
    let (vm, action) = path.rsplit_once('/')?;
    let effect = match action {
        "start" => "running",
        "powerOff" => "stopped",
        "deallocate" => "deallocated",
        _ => return None,
    };
    let rid = super::ResourceId::parse(vm)?;
    rid.is(super::ResourceKind::VirtualMachine)
        .then(|| (rid.to_string().to_ascii_lowercase(), effect))
}

fn not_found(rid: &super::ResourceId) -> Resp {
    Resp::error(
        404,
        "ResourceNotFound",
        &format!(
            "The Resource '{}/{}' under resource group '{}' was not found.",
            rid.provider_type, rid.name, rid.resource_group
        ),
    )
}

/// The stored resource without the fake's private fields.
fn public_view(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(p) = v.get_mut("properties").and_then(Value::as_object_mut) {
        p.remove("rhaPowerState");
    }
    v
}

fn with_instance_view(v: &Value) -> Value {
    let power = v
        .pointer("/properties/rhaPowerState")
        .and_then(Value::as_str)
        .unwrap_or("starting")
        .to_owned();
    let prov = v
        .pointer("/properties/provisioningState")
        .and_then(Value::as_str)
        .unwrap_or("Creating")
        .to_ascii_lowercase();
    let mut out = public_view(v);
    let mut statuses = vec![json!({"code": format!("ProvisioningState/{prov}")})];
    if prov == "failed" {
        statuses[0]["message"] = json!("provisioning failed");
    } else {
        statuses.push(json!({"code": format!("PowerState/{power}")}));
    }
    out["properties"]["instanceView"] = json!({ "statuses": statuses });
    out
}

fn new_operation(st: &mut State, effect: Effect, failure: Option<(String, String)>) -> String {
    st.next_op += 1;
    let id = st.next_op;
    st.operations.insert(
        id,
        Operation {
            remaining: st.pending_polls,
            failure,
            effect,
        },
    );
    format!("{}/operations/{id}?api-version=2024-07-01", st.base)
}

fn operation(st: &mut State, id: &str) -> Resp {
    let Ok(id) = id.parse::<u64>() else {
        return Resp::error(404, "NotFound", "no such operation");
    };
    let Some(op) = st.operations.get_mut(&id) else {
        return Resp::error(404, "NotFound", "no such operation");
    };
    if op.remaining > 0 {
        op.remaining -= 1;
        return Resp::json(200, json!({"status": "InProgress"})).header("Retry-After", "0");
    }
    let Some(op) = st.operations.remove(&id) else {
        return Resp::error(404, "NotFound", "no such operation");
    };
    let failed = op.failure.is_some();
    match op.effect {
        Effect::Provisioned(key) => {
            if let Some(v) = st.resources.get_mut(&key) {
                v["properties"]["provisioningState"] =
                    json!(if failed { "Failed" } else { "Succeeded" });
                if !failed && v["type"] == "Microsoft.Compute/virtualMachines" {
                    v["properties"]["rhaPowerState"] = json!("running");
                }
            }
        }
        Effect::Power(key, power) => {
            if !failed {
                if let Some(v) = st.resources.get_mut(&key) {
                    v["properties"]["rhaPowerState"] = json!(power);
                }
            }
        }
        Effect::Delete(key) => {
            if !failed {
                st.resources.remove(&key);
            }
        }
    }
    match op.failure {
        Some((code, message)) => Resp::json(
            200,
            json!({"status": "Failed", "error": {"code": code, "message": message}}),
        ),
        None => Resp::json(200, json!({"status": "Succeeded"})),
    }
    .header("Retry-After", "0")
}

fn put(
    st: &mut State,
    rid: &super::ResourceId,
    key: String,
    body: Option<Value>,
    injected: Option<(String, String)>,
) -> Resp {
    use super::ResourceKind as K;
    let Some(mut body) = body else {
        return Resp::error(
            400,
            "InvalidRequestContent",
            "The request content was invalid.",
        );
    };
    if body.get("location").and_then(Value::as_str).is_none() {
        return Resp::error(
            400,
            "LocationRequired",
            "The location property is required for this definition.",
        );
    }
    let exists = |st: &State, id: Option<&str>| {
        id.is_some_and(|i| st.resources.contains_key(&i.to_ascii_lowercase()))
    };
    let id = rid.to_string();
    body["id"] = json!(id);
    body["name"] = json!(rid.name);
    body["type"] = json!(rid.provider_type);
    if rid.is(K::Disk) {
        let cd = body
            .pointer("/properties/creationData")
            .cloned()
            .unwrap_or(Value::Null);
        if cd.get("createOption").and_then(Value::as_str) != Some("Import") {
            return Resp::error(400, "InvalidParameter", "rha's fake only imports disks.");
        }
        if cd.get("storageAccountId").and_then(Value::as_str).is_none() {
            return Resp::error(
                400,
                "InvalidParameter",
                "Required parameter 'storageAccountId' is missing (null).",
            );
        }
        let src = cd.get("sourceUri").and_then(Value::as_str).unwrap_or("");
        let path = Url::parse(src)
            .map(|u| u.path().to_owned())
            .unwrap_or_default();
        let Some(size) = st.blobs.get(&path).copied() else {
            return Resp::error(
                400,
                "InvalidParameter",
                &format!("The source blob {src} does not exist."),
            );
        };
        body["properties"]["diskSizeGB"] = json!(size.div_ceil(1 << 30));
        body["properties"]["provisioningState"] = json!("Updating");
        st.resources.insert(key.clone(), body);
        let op = new_operation(st, Effect::Provisioned(key), injected);
        return Resp::empty(202)
            .header("Azure-AsyncOperation", op.clone())
            .header("Location", op)
            .header("Retry-After", "0");
    }
    if rid.is(K::PublicIp) {
        st.next_ip += 1;
        body["properties"]["ipAddress"] = json!(format!("203.0.113.{}", st.next_ip % 250 + 1));
    } else if rid.is(K::NetworkInterface) {
        let ip = body
            .pointer("/properties/ipConfigurations/0/properties")
            .cloned()
            .unwrap_or(Value::Null);
        if !exists(st, ip.pointer("/subnet/id").and_then(Value::as_str)) {
            return Resp::error(
                400,
                "InvalidResourceReference",
                "Resource referenced by the network interface's subnet was not found.",
            );
        }
        if ip.get("publicIPAddress").is_some()
            && !exists(
                st,
                ip.pointer("/publicIPAddress/id").and_then(Value::as_str),
            )
        {
            return Resp::error(
                400,
                "InvalidResourceReference",
                "The public IP address was not found.",
            );
        }
        if ip.get("privateIPAddress").is_none() {
            st.next_ip += 1;
            body["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"] =
                json!(format!("10.1.0.{}", st.next_ip % 250 + 4));
        }
    } else if rid.is(K::VirtualMachine) {
        let p = body.get("properties").cloned().unwrap_or(Value::Null);
        if p.pointer("/hardwareProfile/vmSize")
            .and_then(Value::as_str)
            .is_none()
        {
            return Resp::error(
                400,
                "InvalidParameter",
                "Required parameter 'hardwareProfile.vmSize' is missing.",
            );
        }
        let mut refs = vec![p
            .pointer("/storageProfile/osDisk/managedDisk/id")
            .and_then(Value::as_str)];
        if let Some(dd) = p
            .pointer("/storageProfile/dataDisks")
            .and_then(Value::as_array)
        {
            refs.extend(
                dd.iter()
                    .map(|d| d.pointer("/managedDisk/id").and_then(Value::as_str)),
            );
        }
        if let Some(n) = p
            .pointer("/networkProfile/networkInterfaces")
            .and_then(Value::as_array)
        {
            refs.extend(n.iter().map(|d| d.get("id").and_then(Value::as_str)));
        }
        if let Some(missing) = refs.iter().find(|r| !exists(st, **r)) {
            return Resp::error(
                404,
                "NotFound",
                &format!(
                    "Resource {} referenced by the VM was not found.",
                    missing.unwrap_or("(none)")
                ),
            );
        }
        body["properties"]["rhaPowerState"] = json!("starting");
    } else {
        return Resp::error(
            400,
            "InvalidResourceType",
            "rha's fake does not create this type.",
        );
    }
    body["properties"]["provisioningState"] = json!(if rid.is(K::VirtualMachine) {
        "Creating"
    } else {
        "Updating"
    });
    let shown = public_view(&body);
    st.resources.insert(key.clone(), body);
    let op = new_operation(st, Effect::Provisioned(key), injected);
    Resp::json(201, shown)
        .header("Azure-AsyncOperation", op)
        .header("Retry-After", "0")
}

fn delete(
    st: &mut State,
    rid: &super::ResourceId,
    key: String,
    injected: Option<(String, String)>,
) -> Resp {
    use super::ResourceKind as K;
    if !st.resources.contains_key(&key) {
        return Resp::empty(204);
    }
    let id = rid.to_string();
    // A disk or NIC still attached to a VM cannot be deleted.
    if rid.is(K::Disk) || rid.is(K::NetworkInterface) {
        let attached = st.resources.values().any(|v| {
            v["type"] == "Microsoft.Compute/virtualMachines"
                && v.to_string()
                    .to_ascii_lowercase()
                    .contains(&format!("\"{}\"", id.to_ascii_lowercase()))
        });
        if attached {
            return if rid.is(K::Disk) {
                Resp::error(
                    409,
                    "OperationNotAllowed",
                    &format!("Disk {} is attached to a VM.", rid.name),
                )
            } else {
                Resp::error(
                    400,
                    "NicInUse",
                    &format!("Network Interface {} is used by an existing VM.", rid.name),
                )
            };
        }
    }
    if rid.is(K::PublicIp) {
        let used = st.resources.values().any(|v| {
            v["type"] == "Microsoft.Network/networkInterfaces"
                && v.to_string()
                    .to_ascii_lowercase()
                    .contains(&format!("\"{}\"", id.to_ascii_lowercase()))
        });
        if used {
            return Resp::error(
                400,
                "PublicIPAddressInUse",
                "The public IP address is in use.",
            );
        }
    }
    let op = new_operation(st, Effect::Delete(key), injected);
    Resp::empty(202)
        .header("Azure-AsyncOperation", op.clone())
        .header("Location", op)
        .header("Retry-After", "0")
}

fn token(st: &mut State, tenant: &str, body: &[u8]) -> Resp {
    let Some(cfg) = st.config.clone() else {
        return Resp::empty(500);
    };
    let form = String::from_utf8_lossy(body);
    let parsed = Url::parse(&format!("http://form/?{form}")).ok();
    let field = |name: &str| {
        parsed.as_ref().and_then(|u| {
            u.query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        })
    };
    let aad = |status: u16, error: &str, code: u64, text: &str| {
        Resp::json(
            status,
            json!({
                "error": error,
                "error_description": format!("AADSTS{code}: {text}\r\nTrace ID: 00000000-0000-0000-0000-000000000000\r\nCorrelation ID: 00000000-0000-0000-0000-000000000000\r\nTimestamp: 2026-01-01 00:00:00Z"),
                "error_codes": [code],
                "timestamp": "2026-01-01 00:00:00Z",
                "trace_id": "00000000-0000-0000-0000-000000000000",
                "correlation_id": "00000000-0000-0000-0000-000000000000",
                "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
            }),
        )
    };
    if field("grant_type").as_deref() != Some("client_credentials") {
        return aad(
            400,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    if !tenant.eq_ignore_ascii_case(&cfg.tenant) {
        return aad(400, "invalid_request", 90002, &format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."));
    }
    if field("client_id").as_deref() != Some(cfg.client_id.as_str()) {
        return aad(
            400,
            "unauthorized_client",
            700016,
            "Application with identifier was not found in the directory.",
        );
    }
    if st.token_mode == Some(TokenMode::Expired) {
        return aad(401, "invalid_client", 7000222, "The provided client secret keys for app are expired. Visit the Azure portal to create new keys for your app.");
    }
    if field("client_secret").as_deref() != Some(cfg.secret.as_str()) {
        return aad(401, "invalid_client", 7000215, "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.");
    }
    st.tokens_issued += 1;
    Resp::json(
        200,
        json!({
            "token_type": "Bearer",
            "expires_in": 3599,
            "ext_expires_in": 3599,
            "access_token": format!("fake-token-{}", st.tokens_issued),
        }),
    )
}

fn blob(st: &mut State, req: &Req) -> Resp {
    if !req
        .headers
        .get("authorization")
        .is_some_and(|a| a.starts_with("Bearer fake-token-"))
    {
        return Resp::empty(401).header("x-ms-error-code", "NoAuthenticationInformation");
    }
    let Some(&size) = st.blobs.get(&req.path) else {
        return Resp::empty(404).header("x-ms-error-code", "BlobNotFound");
    };
    let len = size + 512;
    match req.method.as_str() {
        "HEAD" => Resp::empty(200)
            .header("Content-Length", len.to_string())
            .header("x-ms-blob-type", "PageBlob"),
        "GET" => {
            let footer = Footer::new_fixed(size).to_bytes();
            let range = req
                .headers
                .get("x-ms-range")
                .or_else(|| req.headers.get("range"))
                .cloned()
                .unwrap_or_default();
            let start = range
                .strip_prefix("bytes=")
                .and_then(|r| r.split('-').next())
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
            let body = if start == size {
                footer.to_vec()
            } else {
                vec![0; 512]
            };
            Resp {
                status: 206,
                headers: vec![("x-ms-blob-type".into(), "PageBlob".into())],
                body,
            }
        }
        _ => Resp::empty(405),
    }
}
