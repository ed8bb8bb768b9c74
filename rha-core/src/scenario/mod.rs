//! Scenarios: what to replicate, where to, and how to switch over.
//!
//! A scenario is a TOML file describing one full-system replication or
//! high-availability setup: the master server and its volumes, the replica
//! (fixed-VHD files on a local appliance, or Azure page blobs), the journal,
//! is-alive monitoring, and the virtual machine started from the replica disks
//! at switchover.
//!
//! ```text
//!   scenario.toml ──Scenario::load──► Scenario ──validate()──► Validation
//!        ▲            (syntax, unknown    │                     (every error and
//!        │             keys, secrets:     │                      warning at once)
//!        │             ScenarioError)     │
//!        └──────── to_toml_string() ◄─────┘
//! ```
//!
//! Loading fails fast with a [`ScenarioError`] that names the file, line,
//! column and key path, and suggests the intended key for a typo. Secrets are
//! refused outright: cloud credentials are added with `rha cloud account add`
//! and referenced by name. [`Scenario::validate`] then checks the meaning of
//! the settings and reports every [`Finding`] in one go.
//!
//! Durations are integers with the unit in the key (`interval_secs`,
//! `fsync_interval_ms`); sizes likewise (`max_size_mb`, `size_bytes`).
//!
//! # Example
//!
//! ```
//! use rha_core::scenario::{Scenario, Template};
//!
//! let text = Scenario::template(Template::Local).to_toml_string()?;
//! let scenario = Scenario::from_toml_str(&text)?;
//! let validation = scenario.validate();
//! assert!(validation.is_ok(), "{validation}");
//! # Ok::<(), rha_core::scenario::ScenarioError>(())
//! ```

mod load;
mod model;
pub mod suggest;
mod validate;

use std::path::{Path, PathBuf};

pub use load::{Location, ScenarioError};
pub use model::*;
pub use validate::{Finding, Severity, Validation, SMALL_JOURNAL_MB};

impl Scenario {
    /// Parses a scenario from TOML text.
    ///
    /// Errors carry the line, column and key path; see [`ScenarioError`].
    pub fn from_toml_str(text: &str) -> Result<Scenario, ScenarioError> {
        load::parse(text, None)
    }

    /// Reads and parses a scenario file; errors name the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Scenario, ScenarioError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        load::parse(&text, Some(path))
    }

    /// Writes the scenario as TOML that [`Scenario::from_toml_str`] reads back
    /// to an equal scenario.
    pub fn to_toml_string(&self) -> Result<String, ScenarioError> {
        Ok(toml::to_string(self)?)
    }

    /// Checks the settings and returns every error and warning found.
    pub fn validate(&self) -> Validation {
        validate::validate(self)
    }

    /// A complete scenario to start from; it validates without findings.
    pub fn template(template: Template) -> Scenario {
        match template {
            Template::Local => Scenario {
                name: "web01-ha".to_owned(),
                product: Product::Ha,
                run_after_reboot: true,
                master: Master {
                    host: "web01.example.internal".to_owned(),
                    port: DEFAULT_PORT,
                    os: Os::Linux,
                    nat: false,
                },
                replica: Replica::Local(LocalReplica {
                    appliance: "rha-appliance.example.internal".to_owned(),
                    port: DEFAULT_PORT,
                    data_dir: PathBuf::from("/var/lib/rha/replicas/web01"),
                }),
                volumes: vec![
                    VolumeSpec {
                        id: "/".to_owned(),
                        system: true,
                        exclude: false,
                        size_bytes: None,
                        path: None,
                    },
                    VolumeSpec {
                        id: "/boot".to_owned(),
                        system: false,
                        exclude: false,
                        size_bytes: None,
                        path: None,
                    },
                ],
                sync: SyncSettings::default(),
                journal: JournalSettings {
                    directory: PathBuf::from("/var/lib/rha/journal"),
                    max_size_mb: 4096,
                    fsync: FsyncPolicy::Always,
                    fsync_interval_ms: 100,
                    memory_mb: 64,
                },
                is_alive: IsAlive {
                    enabled: true,
                    interval_secs: 30,
                    timeout_secs: 300,
                    checks: vec![
                        Check::Heartbeat,
                        Check::Tcp {
                            host: "web01.example.internal".to_owned(),
                            port: 22,
                        },
                    ],
                },
                switchover: Switchover {
                    mode: SwitchoverMode::Automatic,
                    wait_for_journal: true,
                    disable_master_network: Some(CommandSpec {
                        program: "ip".to_owned(),
                        args: vec![
                            "link".to_owned(),
                            "set".to_owned(),
                            "eth0".to_owned(),
                            "down".to_owned(),
                        ],
                    }),
                },
                vm: VmSettings {
                    name: "web01-replica".to_owned(),
                    size: None,
                    cpus: Some(2),
                    memory_mb: Some(4096),
                    resource_group: None,
                    storage_account_type: None,
                    generation: HyperVGeneration::V2,
                    os_type: None,
                },
                network: Network {
                    virtual_network: Some("br0".to_owned()),
                    subnet: None,
                    private_ip: None,
                    public_ip: false,
                },
                capture: Capture::default(),
            },
            Template::Azure => Scenario {
                name: "sql01-azure-ha".to_owned(),
                product: Product::Ha,
                run_after_reboot: true,
                master: Master {
                    host: "sql01.example.internal".to_owned(),
                    port: DEFAULT_PORT,
                    os: Os::Windows,
                    nat: false,
                },
                replica: Replica::Azure(AzureReplica {
                    appliance: "rha-appliance.example.internal".to_owned(),
                    port: DEFAULT_PORT,
                    account: "production".to_owned(),
                    region: "westeurope".to_owned(),
                    resource_group: "rg-rha-dr".to_owned(),
                    storage_account: "rhareplicas01".to_owned(),
                    container: "sql01".to_owned(),
                }),
                volumes: vec![
                    VolumeSpec {
                        id: "C:".to_owned(),
                        system: true,
                        exclude: false,
                        size_bytes: None,
                        path: None,
                    },
                    VolumeSpec {
                        id: "D:".to_owned(),
                        system: false,
                        exclude: false,
                        size_bytes: None,
                        path: None,
                    },
                ],
                sync: SyncSettings::default(),
                journal: JournalSettings {
                    directory: PathBuf::from("E:\\rha\\journal"),
                    max_size_mb: 8192,
                    fsync: FsyncPolicy::Always,
                    fsync_interval_ms: 100,
                    memory_mb: 64,
                },
                is_alive: IsAlive::default(),
                switchover: Switchover {
                    mode: SwitchoverMode::Manual,
                    wait_for_journal: true,
                    disable_master_network: Some(CommandSpec {
                        program: "netsh".to_owned(),
                        args: vec![
                            "interface".to_owned(),
                            "set".to_owned(),
                            "interface".to_owned(),
                            "Ethernet".to_owned(),
                            "admin=disabled".to_owned(),
                        ],
                    }),
                },
                vm: VmSettings {
                    name: "sql01-dr".to_owned(),
                    size: Some("Standard_D2s_v3".to_owned()),
                    cpus: None,
                    memory_mb: None,
                    resource_group: None,
                    storage_account_type: Some(StorageAccountType::PremiumLrs),
                    generation: HyperVGeneration::V2,
                    os_type: Some(Os::Windows),
                },
                network: Network {
                    virtual_network: Some("vnet-dr".to_owned()),
                    subnet: Some("snet-servers".to_owned()),
                    private_ip: Some("10.20.1.10".to_owned()),
                    public_ip: false,
                },
                capture: Capture::default(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_round_trip_and_validate_clean() {
        for t in [Template::Local, Template::Azure] {
            let s = Scenario::template(t);
            let text = s.to_toml_string().expect("serialises");
            let back = Scenario::from_toml_str(&text).expect("parses");
            assert_eq!(back, s, "{text}");
            let v = s.validate();
            assert!(v.is_clean(), "{t:?}: {v}");
        }
    }

    #[test]
    fn template_from_str() {
        assert_eq!("azure".parse::<Template>(), Ok(Template::Azure));
        assert!("gcp".parse::<Template>().is_err());
    }
}
