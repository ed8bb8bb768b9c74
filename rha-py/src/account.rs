//! Cloud accounts: `rha.CloudAccount` and `rha.AccountStore`
//! (`rha_azure::account`). The secret never appears in a `repr`, a `str`,
//! an error or a dict; it is readable only through `reveal_secret()`.

use std::path::PathBuf;

use pyo3::prelude::*;
use rha_azure::account::{self, AccountInfo};
use rha_azure::{AccountStore, AzureAccount, ClientSecret};

use crate::errors::{self, to_py};

/// An Azure account: a subscription and the service principal rha acts as.
#[pyclass(module = "rha", name = "CloudAccount", frozen)]
pub(crate) struct PyCloudAccount {
    inner: AzureAccount,
}

fn info_dict<'py>(py: Python<'py>, info: &AccountInfo) -> PyResult<Bound<'py, PyAny>> {
    let v = serde_json::to_value(info).map_err(to_py(errors::cloud))?;
    crate::json_to_py(py, &v)
}

#[pymethods]
impl PyCloudAccount {
    /// An account; its fields are checked (name, GUIDs, URLs, a non-empty
    /// secret) and `CloudError` names the one that is wrong.
    #[new]
    #[pyo3(signature = (name, subscription_id, tenant_id, client_id, secret, authority_host = None, arm_endpoint = None, blob_endpoint = None))]
    // One keyword argument per account field, as Python callers expect.
    #[allow(clippy::too_many_arguments)]
    fn new(
        name: String,
        subscription_id: String,
        tenant_id: String,
        client_id: String,
        secret: String,
        authority_host: Option<String>,
        arm_endpoint: Option<String>,
        blob_endpoint: Option<String>,
    ) -> PyResult<Self> {
        let inner = AzureAccount {
            name,
            subscription_id,
            tenant_id,
            client_id,
            secret: ClientSecret::new(secret),
            authority_host,
            arm_endpoint,
            blob_endpoint,
        };
        inner.check().map_err(to_py(errors::cloud))?;
        Ok(PyCloudAccount { inner })
    }

    /// The name scenarios refer to (`replica.azure.account`).
    #[getter]
    fn name(&self) -> &str {
        &self.inner.name
    }

    /// The subscription id.
    #[getter]
    fn subscription_id(&self) -> &str {
        &self.inner.subscription_id
    }

    /// The directory (tenant) id.
    #[getter]
    fn tenant_id(&self) -> &str {
        &self.inner.tenant_id
    }

    /// The application (client) id of the service principal.
    #[getter]
    fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// Azure AD's authority host for this account.
    #[getter]
    fn authority_host(&self) -> &str {
        self.inner.authority_host()
    }

    /// Azure Resource Manager's endpoint for this account.
    #[getter]
    fn arm_endpoint(&self) -> &str {
        self.inner.arm_endpoint()
    }

    /// The client secret itself (for handing to another tool; never printed by rha).
    fn reveal_secret(&self) -> &str {
        self.inner.secret.expose()
    }

    /// The account without its secret.
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        info_dict(py, &self.inner.info())
    }

    /// Proves the account: gets a Resource Manager token with the
    /// service-principal flow (the token is dropped). Returns `account`,
    /// `scope` and `expires_in_secs`; `CloudError` says what Azure AD refused.
    #[pyo3(signature = (timeout = Some(60.0)))]
    fn test<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
        let account = self.inner.clone();
        let check = crate::block_on(py, crate::seconds(timeout)?, async move {
            account::test_account(&account).await
        })?
        .map_err(to_py(errors::cloud))?;
        let v = serde_json::json!({
            "account": check.account,
            "scope": check.scope,
            "expires_in_secs": check.expires_in_secs,
        });
        crate::json_to_py(py, &v)
    }

    fn __repr__(&self) -> String {
        format!(
            "CloudAccount(name={:?}, subscription_id={:?}, tenant_id={:?}, client_id={:?}, secret=****)",
            self.inner.name, self.inner.subscription_id, self.inner.tenant_id, self.inner.client_id
        )
    }

    fn __str__(&self) -> String {
        self.__repr__()
    }
}

/// Where accounts are kept: one JSON file of mode 0600 (by default
/// `~/.config/rha/accounts.json`, or `$RHA_ACCOUNTS`), shared with `rha cloud account`.
#[pyclass(module = "rha", name = "AccountStore", frozen)]
pub(crate) struct PyAccountStore {
    inner: AccountStore,
}

#[pymethods]
impl PyAccountStore {
    /// The store at `path`, else at `$RHA_ACCOUNTS`, else at the default place.
    #[new]
    #[pyo3(signature = (path = None))]
    fn new(path: Option<PathBuf>) -> PyResult<Self> {
        let inner = AccountStore::locate(path.as_deref()).map_err(to_py(errors::cloud))?;
        Ok(PyAccountStore { inner })
    }

    /// The file's path.
    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.path().to_path_buf()
    }

    /// Adds `account`; replaces one of the same name only when `replace`.
    #[pyo3(signature = (account, replace = false))]
    fn add(
        &self,
        py: Python<'_>,
        account: PyRef<'_, PyCloudAccount>,
        replace: bool,
    ) -> PyResult<()> {
        let a = account.inner.clone();
        py.detach(|| self.inner.add(&a, replace))
            .map_err(to_py(errors::cloud))
    }

    /// The account named `name`.
    fn get(&self, py: Python<'_>, name: &str) -> PyResult<PyCloudAccount> {
        let inner = py
            .detach(|| self.inner.get(name))
            .map_err(to_py(errors::cloud))?;
        Ok(PyCloudAccount { inner })
    }

    /// Every account without its secret (dicts), in the order they were added.
    fn list<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let infos = py
            .detach(|| self.inner.list())
            .map_err(to_py(errors::cloud))?;
        infos.iter().map(|i| info_dict(py, i)).collect()
    }

    /// Removes the account named `name`; returns what it was (without its secret).
    fn remove<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        let info = py
            .detach(|| self.inner.remove(name))
            .map_err(to_py(errors::cloud))?;
        info_dict(py, &info)
    }

    fn __repr__(&self) -> String {
        format!(
            "AccountStore(path={:?})",
            self.inner.path().display().to_string()
        )
    }
}

/// Adds the classes to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyCloudAccount>()?;
    m.add_class::<PyAccountStore>()?;
    Ok(())
}
