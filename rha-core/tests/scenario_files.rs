//! Scenario files: the samples, mistaken fixtures, round trips and templates.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use rha_core::scenario::{
    Check, Replica, Scenario, ScenarioError, Severity, StorageAccountType, Template, Validation,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/scenarios")
        .join(name)
}

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/scenarios")
        .join(name)
}

/// Loads a fixture that must parse, and validates it.
fn validate_fixture(name: &str) -> Validation {
    match Scenario::load(fixture(name)) {
        Ok(s) => s.validate(),
        Err(e) => panic!("{name} should load: {e}"),
    }
}

/// Loads a fixture that must fail to load.
fn load_error(name: &str) -> ScenarioError {
    match Scenario::load(fixture(name)) {
        Ok(s) => panic!("{name} should not load, got {s:?}"),
        Err(e) => e,
    }
}

/// Asserts that `v` has an error at `path` whose message contains every one of `needles`.
fn assert_error(v: &Validation, path: &str, needles: &[&str]) {
    let found = v
        .errors()
        .find(|f| f.path == path && needles.iter().all(|n| f.message.contains(n)));
    assert!(
        found.is_some(),
        "no error at `{path}` containing {needles:?}; findings:\n{v}"
    );
}

fn assert_warning(v: &Validation, path: &str, needle: &str) {
    assert!(
        v.warnings()
            .any(|f| f.path == path && f.message.contains(needle)),
        "no warning at `{path}` containing {needle:?}; findings:\n{v}"
    );
}

#[test]
fn samples_load_and_validate_clean() {
    for name in ["local-ha.toml", "azure-ha.toml"] {
        let s = Scenario::load(sample(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let v = s.validate();
        assert!(v.is_clean(), "{name}:\n{v}");
        assert!(v.is_ok());
        assert_eq!(v.to_string(), "no problems found");
    }
}

#[test]
fn samples_have_expected_shape() {
    let local = Scenario::load(sample("local-ha.toml")).expect("loads");
    assert!(matches!(local.replica, Replica::Local(_)));
    assert_eq!(local.volumes.len(), 3);
    assert!(local.volumes[2].exclude);
    assert_eq!(local.is_alive.checks.len(), 3);
    assert!(matches!(
        local.is_alive.checks[1],
        Check::Tcp { port: 22, .. }
    ));

    let azure = Scenario::load(sample("azure-ha.toml")).expect("loads");
    let Replica::Azure(r) = &azure.replica else {
        panic!("azure sample has an azure replica")
    };
    assert_eq!(r.account, "production");
    assert_eq!(
        azure.vm.storage_account_type,
        Some(StorageAccountType::PremiumLrs)
    );
    assert_eq!(azure.master.port, 25000);
}

#[test]
fn typo_key_suggests_the_right_one() {
    let e = load_error("typo_key.toml");
    let text = e.to_string();
    assert!(text.contains("typo_key.toml:22:1"), "{text}");
    assert!(text.contains("unknown field `intervl_secs`"), "{text}");
    assert!(text.contains("did you mean `interval_secs`?"), "{text}");
    assert_eq!(e.key_path(), Some("is_alive.intervl_secs"));
    let loc = e.location().expect("has a location");
    assert_eq!((loc.line, loc.column), (22, 1));
    assert!(loc
        .file
        .as_ref()
        .is_some_and(|f| f.ends_with("typo_key.toml")));
}

#[test]
fn typo_value_suggests_the_right_variant() {
    let e = load_error("typo_value.toml");
    let text = e.to_string();
    assert!(text.contains("unknown variant `automatc`"), "{text}");
    assert!(text.contains("did you mean `automatic`?"), "{text}");
    assert_eq!(e.key_path(), Some("switchover.mode"));
}

#[test]
fn out_of_range_port_names_the_key() {
    let e = load_error("port_out_of_range.toml");
    assert_eq!(e.key_path(), Some("master.port"));
    assert!(e.to_string().contains(":6:8:"), "{e}");
    assert!(e.to_string().contains("70000"), "{e}");
}

#[test]
fn excluded_system_volume_is_an_error() {
    let v = validate_fixture("excluded_system.toml");
    assert_error(
        &v,
        "volumes[1].exclude",
        &["system volume", "never be excluded"],
    );
    assert_eq!(v.errors().count(), 1, "{v}");
}

#[test]
fn two_system_volumes_is_an_error() {
    let v = validate_fixture("two_system.toml");
    assert_error(
        &v,
        "volumes[1].system",
        &["More than one volume", "system = true"],
    );
    assert_eq!(v.errors().count(), 1, "{v}");
}

#[test]
fn automatic_switchover_to_azure_is_an_error() {
    let v = validate_fixture("azure_automatic.toml");
    assert_error(&v, "switchover.mode", &["cloud switchover is manual"]);
    assert!(!v.is_ok());
}

#[test]
fn client_secret_is_refused() {
    let e = load_error("client_secret.toml");
    assert!(matches!(e, ScenarioError::Secret { .. }), "{e:?}");
    assert_eq!(e.key_path(), Some("replica.azure.client_secret"));
    let text = e.to_string();
    assert!(text.contains("client_secret.toml:12:1"), "{text}");
    assert!(
        text.contains("secrets never belong in scenario files"),
        "{text}"
    );
    assert!(text.contains("rha cloud account add"), "{text}");
    assert!(
        !text.contains("s3cr3t"),
        "the secret itself is never echoed: {text}"
    );
}

#[test]
fn secrets_are_found_anywhere() {
    let base = Scenario::template(Template::Local)
        .to_toml_string()
        .expect("serialises");
    for (extra, path) in [
        ("[vm.credentials]\nuser = \"a\"\n", "vm.credentials"),
        (
            "[[volumes]]\nid = \"E:\"\nencryption_key = \"x\"\n",
            "volumes[2].encryption_key",
        ),
        ("[network]\npassword = \"x\"\n", "network.password"),
    ] {
        // Appending a second [network] would be a TOML error, so replace it.
        let text = if extra.starts_with("[network]") {
            base.replace("[network]\n", extra)
        } else {
            format!("{base}\n{extra}")
        };
        let e = Scenario::from_toml_str(&text).expect_err("a secret is refused");
        assert_eq!(e.key_path(), Some(path), "{e}");
        assert!(e.to_string().contains("line "), "{e}");
    }
}

#[test]
fn timeout_below_interval_is_an_error() {
    let v = validate_fixture("timeout_below_interval.toml");
    assert_error(
        &v,
        "is_alive.timeout_secs",
        &["must be longer than the interval", "30 s", "60 s"],
    );
}

#[test]
fn bad_vm_name_is_an_error() {
    let v = validate_fixture("bad_vm_name.toml");
    assert_error(
        &v,
        "vm.name",
        &[
            "sql01_disaster_recovery",
            "limited to 15",
            "letters, digits and `-`",
        ],
    );
}

#[test]
fn bad_syntax_names_line_and_column() {
    let e = load_error("bad_syntax.toml");
    let text = e.to_string();
    assert!(text.contains("bad_syntax.toml:5:"), "{text}");
    assert!(matches!(e, ScenarioError::Parse { .. }));
}

#[test]
fn unknown_key_in_array_of_tables_and_tagged_check() {
    let base = Scenario::template(Template::Local)
        .to_toml_string()
        .expect("serialises");
    let text = base.replacen("system = true", "system = true\nexlude = true", 1);
    let e = Scenario::from_toml_str(&text).expect_err("typo");
    assert_eq!(e.key_path(), Some("volumes[0].exlude"), "{e}");
    assert!(e.to_string().contains("did you mean `exclude`?"), "{e}");

    let text = format!("{base}\n[[is_alive.checks]]\ntype = \"tcp\"\nhost = \"h\"\nprot = 1\n");
    let e = Scenario::from_toml_str(&text).expect_err("typo");
    assert!(e.to_string().contains("unknown field `prot`"), "{e}");
    assert!(e.to_string().contains("did you mean `port`?"), "{e}");
}

#[test]
fn unit_suffix_and_two_replicas() {
    let base = Scenario::template(Template::Local)
        .to_toml_string()
        .expect("serialises");
    let text = base.replacen("interval_secs", "interval", 1);
    let e = Scenario::from_toml_str(&text).expect_err("no unit");
    assert!(
        e.to_string().contains("did you mean `interval_secs`?"),
        "{e}"
    );

    let text = base.replacen("[replica.local]", "[replica.azure]\n[replica.local]", 1);
    let e = Scenario::from_toml_str(&text).expect_err("two replicas");
    assert_eq!(e.key_path(), Some("replica"));
    assert!(e.to_string().contains("exactly one replica"), "{e}");
}

#[test]
fn missing_field_is_reported() {
    let text = "name = \"x\"\nproduct = \"ha\"\n[master]\nhost = \"h\"\n";
    let e = Scenario::from_toml_str(text).expect_err("incomplete");
    assert!(e.to_string().contains("missing field `os`"), "{e}");
    assert_eq!(e.key_path(), Some("master"));

    // A missing top-level key belongs to no key (not to the first one).
    let text = Scenario::template(Template::Local)
        .to_toml_string()
        .expect("serialises")
        .replacen("name = \"web01-ha\"\n", "", 1);
    let e = Scenario::from_toml_str(&text).expect_err("no name");
    assert!(e.to_string().contains("missing field `name`"), "{e}");
    assert_eq!(e.key_path(), None, "{e}");
}

#[test]
fn read_error_names_the_file() {
    let e = Scenario::load(fixture("does-not-exist.toml")).expect_err("missing file");
    assert!(matches!(e, ScenarioError::Read { .. }));
    assert!(e.to_string().contains("does-not-exist.toml"), "{e}");
}

#[test]
fn many_mistakes_are_reported_at_once() {
    let v = validate_fixture("many_mistakes.toml");
    let errors = [
        ("name", "not allowed"),
        ("master.host", "empty"),
        ("master.port", "Port 0"),
        ("replica.azure.region", "programmatic name"),
        ("replica.azure.resource_group", "not ending with `.`"),
        ("replica.azure.storage_account", "3 to 24 lower-case"),
        ("volumes[0].exclude", "never be excluded"),
        ("volumes[1].id", "listed twice"),
        ("volumes[2].system", "More than one volume"),
        ("sync.block_size", "4096"),
        ("is_alive.interval_secs", "at least 1 second"),
        ("is_alive.timeout_secs", "longer than the interval"),
        ("is_alive.checks[0].port", "Port 0"),
        ("is_alive.checks[1].program", "empty"),
        ("switchover.mode", "cloud switchover is manual"),
        ("vm.name", "only digits"),
        ("vm.size", "Standard_D2s_v3"),
        ("vm.storage_account_type", "Premium_LRS"),
        ("network.virtual_network", "virtual network"),
        ("network.subnet", "subnet"),
        ("network.private_ip", "not an IP address"),
    ];
    for (path, needle) in errors {
        assert_error(&v, path, &[needle]);
    }
    let warnings = [
        ("journal.max_size_mb", "64 MiB"),
        ("is_alive.enabled", "replication-only"),
        ("is_alive.checks[0]", "NAT"),
        ("is_alive.checks[1]", "NAT"),
        ("switchover.wait_for_journal", "lost"),
    ];
    for (path, needle) in warnings {
        assert_warning(&v, path, needle);
    }
    assert_eq!(v.errors().count(), errors.len(), "{v}");
    assert_eq!(v.warnings().count(), warnings.len(), "{v}");

    // Errors come first, and Display lists every finding on its own line.
    let first_warning = v
        .findings()
        .iter()
        .position(|f| f.severity == Severity::Warning)
        .expect("has warnings");
    assert!(v.findings()[..first_warning]
        .iter()
        .all(|f| f.severity == Severity::Error));
    let text = v.to_string();
    assert_eq!(text.lines().count(), errors.len() + warnings.len());
    assert!(
        text.contains("error: volumes[0].exclude: The system volume"),
        "{text}"
    );
    assert!(
        text.contains("warning: switchover.wait_for_journal:"),
        "{text}"
    );
}

#[test]
fn other_warnings() {
    let mut s = Scenario::template(Template::Local);
    s.is_alive.enabled = false;
    s.switchover.mode = rha_core::scenario::SwitchoverMode::Manual;
    let v = s.validate();
    assert!(v.is_ok(), "{v}");
    assert_warning(&v, "is_alive.enabled", "never detected");

    let mut s = Scenario::template(Template::Local);
    s.is_alive.enabled = false;
    let v = s.validate();
    assert_error(&v, "switchover.mode", &["needs is-alive"]);

    let mut s = Scenario::template(Template::Local);
    s.volumes.clear();
    assert_error(&s.validate(), "volumes", &["no volumes"]);

    let mut s = Scenario::template(Template::Local);
    s.volumes[0].system = false;
    assert_error(&s.validate(), "volumes", &["No volume is marked"]);

    let mut s = Scenario::template(Template::Local);
    s.replica = Replica::Local(rha_core::scenario::LocalReplica {
        appliance: "a".into(),
        port: 25000,
        data_dir: PathBuf::new(),
    });
    assert_error(&s.validate(), "replica.local.data_dir", &["data directory"]);
}

#[test]
fn vm_os_type_must_match_master() {
    let mut s = Scenario::template(Template::Azure);
    s.vm.os_type = Some(rha_core::scenario::Os::Linux);
    let v = s.validate();
    assert!(v.is_ok(), "{v}");
    assert_warning(
        &v,
        "vm.os_type",
        "declared as linux but the master runs windows",
    );
}

#[test]
fn linux_azure_vm_names_may_be_longer() {
    let mut s = Scenario::template(Template::Azure);
    s.master.os = rha_core::scenario::Os::Linux;
    s.vm.os_type = None;
    s.vm.name = "a-rather-long-linux-vm-name.with.dots".into();
    assert!(s.validate().is_clean(), "{}", s.validate());
    s.master.os = rha_core::scenario::Os::Windows;
    assert_error(&s.validate(), "vm.name", &["limited to 15"]);
}

#[test]
fn hyper_v_generation_must_be_1_or_2() {
    let text = Scenario::template(Template::Azure)
        .to_toml_string()
        .expect("serialises")
        .replace("generation = 2", "generation = 3");
    let e = Scenario::from_toml_str(&text).expect_err("generation 3");
    assert_eq!(e.key_path(), Some("vm.generation"), "{e}");
    assert!(e.to_string().contains("use 1 (BIOS) or 2 (UEFI)"), "{e}");
}

#[test]
fn templates_validate_clean_and_round_trip() {
    for t in [Template::Local, Template::Azure] {
        let s = Scenario::template(t);
        assert!(s.validate().is_clean(), "{t:?}: {}", s.validate());
        let text = s.to_toml_string().expect("serialises");
        assert_eq!(Scenario::from_toml_str(&text).expect("parses"), s);
    }
}

#[test]
fn samples_round_trip() {
    for name in ["local-ha.toml", "azure-ha.toml"] {
        let s = Scenario::load(sample(name)).expect("loads");
        let text = s.to_toml_string().expect("serialises");
        assert_eq!(Scenario::from_toml_str(&text).expect("parses"), s, "{text}");
    }
}

#[test]
fn serde_json_round_trip() {
    let s = Scenario::template(Template::Azure);
    let json = serde_json::to_string(&s).expect("serialises");
    let back: Scenario = serde_json::from_str(&json).expect("parses");
    assert_eq!(back, s);
}

fn text() -> impl Strategy<Value = String> {
    // Printable text, quotes and backslashes included, to exercise escaping.
    "[ -~é]{0,12}"
}

proptest! {
    #[test]
    fn round_trip_arbitrary_settings(
        name in text(),
        host in text(),
        port in any::<u16>(),
        azure in any::<bool>(),
        ids in proptest::collection::vec((text(), any::<bool>(), any::<bool>(), proptest::option::of(any::<u32>())), 0..4),
        interval in 0u64..100_000,
        timeout in 0u64..100_000,
        bw in proptest::option::of(1u64..1_000_000),
        sat in "[A-Za-z_]{0,16}",
        args in proptest::collection::vec(text(), 0..3),
    ) {
        let mut s = Scenario::template(if azure { Template::Azure } else { Template::Local });
        s.name = name;
        s.master.host = host.clone();
        s.master.port = port;
        s.volumes = ids
            .into_iter()
            .map(|(id, system, exclude, size)| rha_core::scenario::VolumeSpec {
                id,
                system,
                exclude,
                size_bytes: size.map(u64::from),
                path: None,
            })
            .collect();
        s.is_alive.interval_secs = interval;
        s.is_alive.timeout_secs = timeout;
        s.is_alive.checks.push(Check::Command { program: host, args });
        s.sync.bandwidth_limit_kbps = bw;
        s.vm.storage_account_type = Some(StorageAccountType::from(sat));
        let text = s.to_toml_string().expect("serialises");
        let back = Scenario::from_toml_str(&text);
        prop_assert!(back.is_ok(), "{:?}\n{}", back, text);
        prop_assert_eq!(back.expect("checked"), s);
        // Validation never panics, whatever the settings.
        let _ = Scenario::from_toml_str(&text).map(|s| s.validate().to_string());
    }
}

type Mutation = fn(&mut Scenario);

fn local_replica(s: &mut Scenario) -> &mut rha_core::scenario::LocalReplica {
    match &mut s.replica {
        Replica::Local(r) => r,
        Replica::Azure(_) => panic!("local template"),
    }
}

fn azure_replica(s: &mut Scenario) -> &mut rha_core::scenario::AzureReplica {
    match &mut s.replica {
        Replica::Azure(r) => r,
        Replica::Local(_) => panic!("azure template"),
    }
}

/// One template mutation per validation rule, and the single finding it must cause.
#[test]
fn every_rule_reports_its_own_finding() {
    use rha_core::scenario::{CommandSpec, FsyncPolicy, Product, SwitchoverMode};
    use Severity::{Error, Warning};
    use Template::{Azure, Local};
    let cases: Vec<(Template, Mutation, &str, Severity, &str)> = vec![
        (Local, |s| s.name.clear(), "name", Error, "name is empty"),
        (
            Local,
            |s| s.name = ".hidden".into(),
            "name",
            Error,
            "not starting with",
        ),
        (
            Local,
            |s| s.name = "x".repeat(65),
            "name",
            Error,
            "up to 64",
        ),
        (
            Local,
            |s| local_replica(s).appliance.clear(),
            "replica.local.appliance",
            Error,
            "appliance address is empty",
        ),
        (
            Local,
            |s| local_replica(s).port = 0,
            "replica.local.port",
            Error,
            "Port 0",
        ),
        (
            Local,
            |s| s.vm.name = "web 01".into(),
            "vm.name",
            Error,
            "QEMU",
        ),
        (
            Local,
            |s| s.vm.name.clear(),
            "vm.name",
            Error,
            "VM name is empty",
        ),
        (
            Local,
            |s| s.vm.cpus = None,
            "vm.cpus",
            Error,
            "needs a CPU count",
        ),
        (
            Local,
            |s| s.vm.cpus = Some(0),
            "vm.cpus",
            Error,
            "at least one CPU",
        ),
        (
            Local,
            |s| s.vm.memory_mb = None,
            "vm.memory_mb",
            Error,
            "needs memory",
        ),
        (
            Local,
            |s| s.vm.memory_mb = Some(256),
            "vm.memory_mb",
            Error,
            "at least 512",
        ),
        (
            Local,
            |s| s.vm.size = Some("Standard_D2s_v3".into()),
            "vm.size",
            Warning,
            "ignored for a local replica",
        ),
        (
            Local,
            |s| s.vm.resource_group = Some("rg".into()),
            "vm.resource_group",
            Warning,
            "ignored",
        ),
        (
            Local,
            |s| s.network.private_ip = Some("fe80::1::2".into()),
            "network.private_ip",
            Error,
            "not an IP address",
        ),
        (
            Local,
            |s| s.volumes[1].id.clear(),
            "volumes[1].id",
            Error,
            "volume id is empty",
        ),
        (
            Local,
            |s| s.volumes[1].size_bytes = Some(0),
            "volumes[1].size_bytes",
            Error,
            "0 bytes",
        ),
        (
            Local,
            |s| s.sync.bandwidth_limit_kbps = Some(0),
            "sync.bandwidth_limit_kbps",
            Error,
            "stop replication",
        ),
        (
            Local,
            |s| s.journal.directory = "".into(),
            "journal.directory",
            Error,
            "journal directory is empty",
        ),
        (
            Local,
            |s| s.journal.max_size_mb = 0,
            "journal.max_size_mb",
            Error,
            "0 MiB",
        ),
        (
            Local,
            |s| {
                s.journal.fsync = FsyncPolicy::Interval;
                s.journal.fsync_interval_ms = 0;
            },
            "journal.fsync_interval_ms",
            Error,
            "0 ms",
        ),
        (
            Local,
            |s| s.journal.fsync = FsyncPolicy::Never,
            "journal.fsync",
            Warning,
            "power failure",
        ),
        (
            Local,
            |s| {
                s.journal.fsync = FsyncPolicy::Interval;
                s.journal.max_size_mb = 512;
                s.journal.memory_mb = 512;
            },
            "journal.memory_mb",
            Warning,
            "overflows",
        ),
        (
            Local,
            |s| s.is_alive.checks.clear(),
            "is_alive.checks",
            Error,
            "no checks",
        ),
        (
            Local,
            |s| {
                s.is_alive.checks = vec![Check::Tcp {
                    host: String::new(),
                    port: 1,
                }]
            },
            "is_alive.checks[0].host",
            Error,
            "host is empty",
        ),
        (
            Local,
            |s| {
                s.switchover.disable_master_network = Some(CommandSpec {
                    program: " ".into(),
                    args: vec![],
                })
            },
            "switchover.disable_master_network.program",
            Error,
            "remove `[switchover.disable_master_network]`",
        ),
        (
            Local,
            |s| {
                s.product = Product::Replication;
                s.is_alive.enabled = false;
            },
            "switchover.mode",
            Error,
            "replication-only scenario never switches over",
        ),
        (
            Local,
            |s| {
                s.master.nat = true;
                s.is_alive.checks.truncate(1);
                s.switchover.mode = SwitchoverMode::Manual;
                s.master.port = 1;
            },
            "",
            Error,
            "",
        ),
        (
            Azure,
            |s| azure_replica(s).appliance.clear(),
            "replica.azure.appliance",
            Error,
            "appliance address is empty",
        ),
        (
            Azure,
            |s| azure_replica(s).port = 0,
            "replica.azure.port",
            Error,
            "Port 0",
        ),
        (
            Azure,
            |s| azure_replica(s).account.clear(),
            "replica.azure.account",
            Error,
            "rha cloud account add",
        ),
        (
            Azure,
            |s| azure_replica(s).region.clear(),
            "replica.azure.region",
            Error,
            "region is empty",
        ),
        (
            Azure,
            |s| azure_replica(s).resource_group = "x".repeat(91),
            "replica.azure.resource_group",
            Error,
            "1 to 90",
        ),
        (
            Azure,
            |s| azure_replica(s).container = "a--b".into(),
            "replica.azure.container",
            Error,
            "single hyphens",
        ),
        (
            Azure,
            |s| azure_replica(s).container = "ab".into(),
            "replica.azure.container",
            Error,
            "3 to 63",
        ),
        (
            Azure,
            |s| s.vm.size = None,
            "vm.size",
            Error,
            "needs a size",
        ),
        (
            Azure,
            |s| s.vm.size = Some("Standard_".into()),
            "vm.size",
            Error,
            "does not look like",
        ),
        (
            Azure,
            |s| s.vm.resource_group = Some("rg!".into()),
            "vm.resource_group",
            Error,
            "resource group",
        ),
        (
            Azure,
            |s| s.vm.cpus = Some(4),
            "vm.cpus",
            Warning,
            "VM size decides",
        ),
        (
            Azure,
            |s| s.vm.name = "sql01-".into(),
            "vm.name",
            Error,
            "must not end with",
        ),
        (
            Azure,
            |s| s.vm.name.clear(),
            "vm.name",
            Error,
            "VM name is empty",
        ),
        (
            Azure,
            |s| s.network.subnet = Some("  ".into()),
            "network.subnet",
            Error,
            "needs a subnet",
        ),
        (
            Azure,
            |s| s.network.virtual_network = None,
            "network.virtual_network",
            Error,
            "virtual network",
        ),
    ];
    for (template, mutate, path, severity, needle) in cases {
        let mut s = Scenario::template(template);
        mutate(&mut s);
        let v = s.validate();
        if path.is_empty() {
            // NAT with a heartbeat-only check is fine.
            assert!(v.is_clean(), "{v}");
            continue;
        }
        assert_eq!(v.findings().len(), 1, "{template:?} {path}: {v}");
        let f = &v.findings()[0];
        assert_eq!((f.path.as_str(), f.severity), (path, severity), "{v}");
        assert!(
            f.message.contains(needle),
            "{path}: {:?} lacks {needle:?}",
            f.message
        );
        assert!(
            f.message.ends_with('.'),
            "a finding is a sentence: {:?}",
            f.message
        );
    }
}

/// A local template with `[sync]` replaced by `sync_toml`.
fn with_sync(sync_toml: &str) -> Result<Scenario, ScenarioError> {
    let mut s = Scenario::template(Template::Local);
    s.sync = Default::default();
    let text = s.to_toml_string().expect("serialises");
    // Drop the serialised `[sync]` table and write ours at the end.
    let start = text.find("[sync]\n").expect("has a [sync] table");
    let end = text[start + 1..]
        .find("\n[")
        .map_or(text.len(), |i| start + 1 + i + 1);
    let text = format!("{}{}\n[sync]\n{sync_toml}\n", &text[..start], &text[end..]);
    Scenario::from_toml_str(&text)
}

#[test]
fn sample_has_an_office_hours_schedule() {
    use rha_core::scenario::{Weekday, WireCompression};
    let local = Scenario::load(sample("local-ha.toml")).expect("loads");
    assert_eq!(local.sync.compression, WireCompression::None);
    let [w] = local.sync.bandwidth_schedule.as_slice() else {
        panic!("one window: {:?}", local.sync.bandwidth_schedule)
    };
    assert_eq!((w.from_hour, w.to_hour, w.limit_kbps), (8, 18, Some(20000)));
    assert_eq!(w.days, Weekday::ALL[..5].to_vec());
    assert!(w.covers(Weekday::Fri, 17));
    assert!(!w.covers(Weekday::Fri, 18));
    assert!(!w.covers(Weekday::Sat, 10));
}

#[test]
fn compression_and_days_are_keywords() {
    use rha_core::scenario::WireCompression;
    let s = with_sync("compression = \"zstd\"").expect("loads");
    assert_eq!(s.sync.compression, WireCompression::Zstd);
    assert_eq!(
        with_sync("").expect("loads").sync.compression,
        WireCompression::None
    );

    let e = with_sync("compression = \"lz5\"").expect_err("unknown compression");
    assert!(e.to_string().contains("lz5"), "{e}");
    let e = "zstdd".parse::<WireCompression>().expect_err("typo");
    assert_eq!(e.suggestion, Some("zstd"));

    let e =
        with_sync("[[sync.bandwidth_schedule]]\ndays = [\"monday\"]\nfrom_hour = 1\nto_hour = 2")
            .expect_err("unknown day");
    assert!(e.to_string().contains("monday"), "{e}");
    let e = with_sync("[[sync.bandwidth_schedule]]\nfrom_hour = 1\nto_hour = 2\nlimit = 5")
        .expect_err("unknown key");
    assert!(e.to_string().contains("limit_kbps"), "{e}");
}

#[test]
fn bandwidth_schedule_checks() {
    let s = with_sync(
        "[[sync.bandwidth_schedule]]\nfrom_hour = 25\nto_hour = 30\nlimit_kbps = 0\n\
         [[sync.bandwidth_schedule]]\nfrom_hour = 18\nto_hour = 8\n\
         [[sync.bandwidth_schedule]]\ndays = [\"sat\"]\nfrom_hour = 0\nto_hour = 24\nlimit_kbps = 1000\n\
         [[sync.bandwidth_schedule]]\ndays = [\"sun\", \"sat\"]\nfrom_hour = 10\nto_hour = 12",
    )
    .expect("loads");
    let v = s.validate();
    assert_error(
        &v,
        "sync.bandwidth_schedule[0].from_hour",
        &["Hour 25", "0 to 23"],
    );
    assert_error(
        &v,
        "sync.bandwidth_schedule[0].to_hour",
        &["Hour 30", "1 to 24"],
    );
    assert_error(
        &v,
        "sync.bandwidth_schedule[0].limit_kbps",
        &["0 would stop"],
    );
    assert_error(
        &v,
        "sync.bandwidth_schedule[1].to_hour",
        &["before it starts", "two windows"],
    );
    assert_warning(
        &v,
        "sync.bandwidth_schedule[3]",
        "overlaps sync.bandwidth_schedule[2] on `sat`",
    );
    assert_eq!(v.errors().count(), 4, "{v}");
    assert_eq!(v.warnings().count(), 1, "{v}");

    // Disjoint windows, and the same hours on different days, are clean.
    let s = with_sync(
        "[[sync.bandwidth_schedule]]\ndays = [\"mon\"]\nfrom_hour = 8\nto_hour = 18\nlimit_kbps = 100\n\
         [[sync.bandwidth_schedule]]\ndays = [\"tue\"]\nfrom_hour = 8\nto_hour = 18\n\
         [[sync.bandwidth_schedule]]\nfrom_hour = 18\nto_hour = 24\nlimit_kbps = 5000",
    )
    .expect("loads");
    let v = s.validate();
    assert!(v.is_clean(), "{v}");
    let again = Scenario::from_toml_str(&s.to_toml_string().expect("serialises")).expect("reloads");
    assert_eq!(again, s);
}

/// A local template scenario with `[capture] method = "nbd"` and these volumes.
fn nbd_scenario(volumes: Vec<rha_core::scenario::VolumeSpec>) -> Scenario {
    let mut s = Scenario::template(Template::Local);
    s.capture.method = rha_core::scenario::CaptureMethod::Nbd;
    s.journal.fsync = rha_core::scenario::FsyncPolicy::Interval;
    s.volumes = volumes;
    s
}

fn volume(id: &str, system: bool, path: Option<&str>) -> rha_core::scenario::VolumeSpec {
    rha_core::scenario::VolumeSpec {
        id: id.into(),
        system,
        exclude: false,
        size_bytes: None,
        path: path.map(PathBuf::from),
    }
}

#[test]
fn nbd_capture_names_exports_by_file_stem() {
    let s = nbd_scenario(vec![
        volume("/", true, Some("/srv/vm/system.img")),
        volume("/data", false, Some("/dev/vg0/data")),
    ]);
    let v = s.validate();
    assert!(v.is_ok(), "{v}");
    assert_eq!(
        s.volumes[0].nbd_export_name(&s.name).as_deref(),
        Some(format!("{}/system", s.name).as_str())
    );
    assert_eq!(
        s.volumes[1].nbd_export_name(&s.name),
        Some(format!("{}/data", s.name))
    );
    // The method is a keyword of the scenario file.
    let text = s.to_toml_string().unwrap();
    assert!(text.contains("method = \"nbd\""), "{text}");
    assert_eq!(Scenario::from_toml_str(&text).unwrap(), s);
}

#[test]
fn nbd_capture_needs_a_path_and_distinct_stems() {
    let v = nbd_scenario(vec![volume("/", true, None)]).validate();
    assert_error(
        &v,
        "volumes[0].path",
        &["capture.method = \"nbd\"", "needs `path`"],
    );
    let v = nbd_scenario(vec![
        volume("/", true, Some("/a/disk.img")),
        volume("/data", false, Some("/b/disk.raw")),
    ])
    .validate();
    assert_error(&v, "volumes[1].path", &["both be NBD export", "/disk`"]);
    // The system volume rule still holds.
    let v = nbd_scenario(vec![volume("/data", false, Some("/b/data.img"))]).validate();
    assert_error(&v, "volumes", &["system volume"]);
    let mut s = nbd_scenario(vec![volume("/", true, Some("/a/disk.img"))]);
    s.journal.fsync = rha_core::scenario::FsyncPolicy::Always;
    assert_warning(&s.validate(), "journal.fsync", "every guest write waits");
}
