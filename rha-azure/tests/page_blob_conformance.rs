//! The shared Volume and ReplicaSink conformance suites, run against page
//! blobs on Azurite (started by the tests, in memory).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod page_blob_support;

use std::sync::atomic::{AtomicU32, Ordering};

use page_blob_support::{init_log, store};
use rha_azure::{PageBlobSink, PageBlobVolume, SinkConfig};
use rha_core::conformance::run_sink_suite;
use rha_core::conformance::volume::run_volume_suite;
use rha_core::sink::ReplicaSink;
use rha_core::volume::Volume;

#[test]
fn page_blob_volume_conforms() {
    init_log();
    let store = store("volume");
    let n = AtomicU32::new(0);
    run_volume_suite(&mut |size| -> Box<dyn Volume> {
        let name = format!("v{}.vhd", n.fetch_add(1, Ordering::SeqCst));
        let (v, report) = PageBlobVolume::create(&store, &name, size, None).unwrap();
        assert!(!report.was_rounded());
        Box::new(v)
    });
}

#[test]
fn leased_reopened_page_blob_volume_conforms() {
    init_log();
    let store = store("volume-leased");
    let lease = rha_azure::lease_id_for("conformance");
    let n = AtomicU32::new(0);
    run_volume_suite(&mut |size| -> Box<dyn Volume> {
        let name = format!("v{}.vhd", n.fetch_add(1, Ordering::SeqCst));
        drop(PageBlobVolume::create(&store, &name, size, Some(lease)).unwrap());
        let v = PageBlobVolume::open(&store, &name, Some(lease), false).unwrap();
        assert_eq!(v.size(), size);
        Box::new(v)
    });
}

#[test]
fn page_blob_sink_conforms() {
    init_log();
    let store = store("sink");
    let config = SinkConfig::new("scenario-a", "appliance-1");
    let (s1, s2) = (store.clone(), store.clone());
    let (c1, c2) = (config.clone(), config.clone());
    run_sink_suite(
        &mut |sizes| Box::new(PageBlobSink::create(&s1, &c1, sizes).unwrap()),
        Some(&mut |old: Box<dyn ReplicaSink>| {
            drop(old);
            Box::new(PageBlobSink::open(&s2, &c2).unwrap())
        }),
    );
}

/// The suite again, the sink handed over between two appliances: the first
/// closes it (releasing its leases) and the second opens it.
#[test]
fn page_blob_sink_conforms_across_a_clean_handover() {
    init_log();
    let store = store("sink-handover");
    let (s1, s2) = (store.clone(), store.clone());
    run_sink_suite(
        &mut |sizes| {
            Box::new(
                PageBlobSink::create(&s1, &SinkConfig::new("x", "appliance-1"), sizes).unwrap(),
            )
        },
        Some(&mut |old: Box<dyn ReplicaSink>| {
            // The suite's sink is a `dyn ReplicaSink`: reopen it as the same
            // owner to close it (releasing the leases), then the second
            // appliance opens it without a takeover.
            drop(old);
            let same = PageBlobSink::open(&s2, &SinkConfig::new("x", "appliance-1")).unwrap();
            same.close().unwrap();
            Box::new(PageBlobSink::open(&s2, &SinkConfig::new("x", "appliance-2")).unwrap())
        }),
    );
}
