//! Regenerates `src/gen/` from `keyfleet/v1/*.proto` with the vendored protoc and fails when the
//! committed code differs. On a mismatch the fresh code is written into `src/gen/`, so the fix is
//! to rerun this test once and commit: `cargo test -p keyfleet-proto --test bootstrap`.

use std::path::{Path, PathBuf};

#[test]
fn generated_code_is_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let protos: Vec<PathBuf> = ["types", "sync", "enrollment", "admin"]
        .iter()
        .map(|name| root.join(format!("keyfleet/v1/{name}.proto")))
        .collect();
    let out = tempfile::tempdir().expect("create a temporary directory");

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path().expect("vendored protoc"));
    let wkt = protoc_bin_vendored::include_path().expect("vendored well-known types");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(out.path())
        .compile_with_config(config, &protos, &[root.to_path_buf(), wkt])
        .expect("compile keyfleet/v1/*.proto");

    let name = "keyfleet.v1.rs";
    let fresh = std::fs::read_to_string(out.path().join(name)).expect("read generated code");
    let committed_path = root.join("src/gen").join(name);
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    if fresh != committed {
        std::fs::write(&committed_path, &fresh).expect("write regenerated code");
        panic!(
            "proto/src/gen/{name} was stale: it has now been regenerated from keyfleet/v1/*.proto. \
             Review it and commit it (regenerate with `cargo test -p keyfleet-proto --test bootstrap`)."
        );
    }
}
