//! Scenarios: `rha.Scenario`, `rha.Validation`, `rha.Finding`.
//!
//! A scenario is loaded from a TOML file or text, made from a template, or
//! built from a dict (the TOML file's structure); every way goes through
//! `rha_core::scenario`'s loader, so unknown keys, typos and secrets are
//! refused the same way as in files.

use pyo3::prelude::*;
use pyo3::types::PyList;
use rha_core::scenario::{Finding as CoreFinding, Scenario as CoreScenario, Template, Validation};

use crate::errors::{self, to_py, ValidationError};

/// A replication scenario (what to replicate, where to, how to switch over).
#[pyclass(module = "rha", name = "Scenario", frozen)]
#[derive(Clone)]
pub(crate) struct PyScenario {
    pub(crate) inner: CoreScenario,
}

#[pymethods]
impl PyScenario {
    /// Reads and parses a scenario file; errors name the file, line, column and key.
    #[staticmethod]
    fn load(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Self> {
        let inner = py
            .detach(|| CoreScenario::load(&path))
            .map_err(to_py(errors::validation))?;
        Ok(PyScenario { inner })
    }

    /// Parses a scenario from TOML text.
    #[staticmethod]
    fn from_toml(text: &str) -> PyResult<Self> {
        let inner = CoreScenario::from_toml_str(text).map_err(to_py(errors::validation))?;
        Ok(PyScenario { inner })
    }

    /// A complete scenario to start from: `"local"` or `"azure"`.
    #[staticmethod]
    #[pyo3(signature = (kind = "local"))]
    fn template(kind: &str) -> PyResult<Self> {
        let t: Template = kind.parse().map_err(to_py(errors::validation))?;
        Ok(PyScenario {
            inner: CoreScenario::template(t),
        })
    }

    /// Builds a scenario from a dict shaped like the TOML file (as `to_dict` returns).
    #[staticmethod]
    fn from_dict(data: &Bound<'_, PyAny>) -> PyResult<Self> {
        let json = crate::py_to_json(data)?;
        let text = toml::to_string(&json).map_err(|e| {
            ValidationError::new_err(format!(
                "the scenario dict cannot be written as TOML: {e} (use only strings, numbers, booleans, lists and dicts, no None)"
            ))
        })?;
        Self::from_toml(&text)
    }

    /// The scenario as TOML text that `from_toml` reads back to an equal scenario.
    fn to_toml(&self) -> PyResult<String> {
        self.inner
            .to_toml_string()
            .map_err(to_py(errors::validation))
    }

    /// The scenario as a dict shaped like the TOML file.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let text = self.to_toml()?;
        let value: toml::Value = toml::from_str(&text).map_err(to_py(errors::validation))?;
        let json = serde_json::to_value(value).map_err(to_py(errors::validation))?;
        crate::json_to_py(py, &json)
    }

    /// Checks the settings; returns every error and warning found.
    fn validate(&self) -> PyValidation {
        PyValidation::from(self.inner.validate())
    }

    /// Validates and raises `ValidationError` (with `findings`) when there are errors.
    fn check(&self, py: Python<'_>) -> PyResult<PyValidation> {
        let v = self.validate();
        if v.inner.is_ok() {
            return Ok(v);
        }
        let err = ValidationError::new_err(v.inner.to_string());
        let findings = PyList::new(py, v.findings())?;
        err.value(py).setattr("findings", findings)?;
        Err(err)
    }

    /// The scenario's name.
    #[getter]
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn __eq__(&self, other: &Self) -> bool {
        self.inner == other.inner
    }

    fn __repr__(&self) -> String {
        format!(
            "Scenario(name={:?}, volumes={})",
            self.inner.name,
            self.inner.volumes.len()
        )
    }
}

/// One problem found in a scenario.
#[pyclass(module = "rha", name = "Finding", frozen)]
#[derive(Clone)]
pub(crate) struct PyFinding {
    inner: CoreFinding,
}

#[pymethods]
impl PyFinding {
    /// `"error"` or `"warning"`.
    #[getter]
    fn severity(&self) -> String {
        self.inner.severity.to_string()
    }

    /// The key path of the setting concerned, such as `volumes[1].exclude`.
    #[getter]
    fn path(&self) -> &str {
        &self.inner.path
    }

    /// What is wrong and what to do about it.
    #[getter]
    fn message(&self) -> &str {
        &self.inner.message
    }

    fn __str__(&self) -> String {
        self.inner.to_string()
    }

    fn __repr__(&self) -> String {
        format!(
            "Finding(severity={:?}, path={:?}, message={:?})",
            self.inner.severity.to_string(),
            self.inner.path,
            self.inner.message
        )
    }
}

/// The result of `Scenario.validate()`: every finding, errors first.
#[pyclass(module = "rha", name = "Validation", frozen)]
pub(crate) struct PyValidation {
    inner: Validation,
}

impl From<Validation> for PyValidation {
    fn from(inner: Validation) -> Self {
        PyValidation { inner }
    }
}

impl PyValidation {
    fn findings(&self) -> Vec<PyFinding> {
        self.inner
            .findings()
            .iter()
            .map(|f| PyFinding { inner: f.clone() })
            .collect()
    }
}

#[pymethods]
impl PyValidation {
    /// No errors (warnings allowed).
    #[getter]
    fn ok(&self) -> bool {
        self.inner.is_ok()
    }

    /// No findings at all.
    #[getter]
    fn clean(&self) -> bool {
        self.inner.is_clean()
    }

    /// Every finding, errors first.
    #[getter(findings)]
    fn py_findings(&self) -> Vec<PyFinding> {
        self.findings()
    }

    /// The errors only.
    #[getter]
    fn errors(&self) -> Vec<PyFinding> {
        self.inner
            .errors()
            .map(|f| PyFinding { inner: f.clone() })
            .collect()
    }

    /// The warnings only.
    #[getter]
    fn warnings(&self) -> Vec<PyFinding> {
        self.inner
            .warnings()
            .map(|f| PyFinding { inner: f.clone() })
            .collect()
    }

    /// The finding about the setting at `path`, if any.
    fn find(&self, path: &str) -> Option<PyFinding> {
        self.inner
            .find(path)
            .map(|f| PyFinding { inner: f.clone() })
    }

    fn __str__(&self) -> String {
        self.inner.to_string()
    }

    fn __repr__(&self) -> String {
        format!(
            "Validation(ok={}, errors={}, warnings={})",
            if self.inner.is_ok() { "True" } else { "False" },
            self.inner.errors().count(),
            self.inner.warnings().count()
        )
    }
}

/// Adds the classes to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyScenario>()?;
    m.add_class::<PyFinding>()?;
    m.add_class::<PyValidation>()?;
    Ok(())
}
