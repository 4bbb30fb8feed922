//! Many simulated clusters per process must be cheap: the loadtest runs thousands. Its own test
//! binary (one test), so the resident-set measurement is not disturbed by other tests.

use keyfleet_testkit::kube::{Config, FakeKube, Object};

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS value");
    kib * 1024
}

#[tokio::test]
async fn ten_thousand_empty_clusters_fit_in_a_few_kib_each() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kube = FakeKube::start(Config::default()).await.expect("start");
    const CLUSTERS: u64 = 10_000;
    let before = resident_bytes();
    for i in 0..CLUSTERS {
        kube.add_cluster(&format!("cluster-{i:05}")).expect("add cluster");
    }
    let after = resident_bytes();
    let per_cluster = after.saturating_sub(before) / CLUSTERS;
    eprintln!("fake kube: {CLUSTERS} empty clusters, {per_cluster} bytes resident per cluster");
    assert_eq!(kube.cluster_count(), CLUSTERS as usize + 1);
    assert!(per_cluster < 16 * 1024, "{per_cluster} bytes per empty cluster");

    // Each is independent and usable: a write in one is invisible in another.
    let one = kube.cluster("cluster-00001").expect("cluster");
    let two = kube.cluster("cluster-00002").expect("cluster");
    one.put_secret(Object::new_secret("default", "s").with_data("k", b"v"), "tester")
        .expect("put");
    assert!(one.get_secret("default", "s").is_some());
    assert!(two.get_secret("default", "s").is_none());
    assert_ne!(one.token(), two.token());
}
