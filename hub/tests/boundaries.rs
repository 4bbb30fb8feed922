//! Architecture boundary: the hub and the agent share only `keyfleet-proto`. Neither may depend on
//! the other, not even as a dev-dependency (ARCHITECTURE.md, "Boundaries").

use std::process::Command;

fn dependencies_of(metadata: &serde_json::Value, package: &str) -> Vec<String> {
    metadata["packages"]
        .as_array()
        .expect("packages array")
        .iter()
        .find(|candidate| candidate["name"] == package)
        .unwrap_or_else(|| panic!("{package} is a workspace member"))["dependencies"]
        .as_array()
        .expect("dependencies array")
        .iter()
        .map(|dependency| dependency["name"].as_str().expect("dependency name").to_owned())
        .collect()
}

#[test]
fn hub_and_agent_do_not_depend_on_each_other() {
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).expect("metadata json");

    let hub = dependencies_of(&metadata, "keyfleet-hub");
    let agent = dependencies_of(&metadata, "keyfleet-agent");
    assert!(
        hub.contains(&"keyfleet-proto".to_owned()),
        "the hub speaks the proto: {hub:?}"
    );
    assert!(
        agent.contains(&"keyfleet-proto".to_owned()),
        "the agent speaks the proto: {agent:?}"
    );
    assert!(
        !hub.contains(&"keyfleet-agent".to_owned()),
        "keyfleet-hub must not depend on keyfleet-agent: {hub:?}"
    );
    assert!(
        !agent.contains(&"keyfleet-hub".to_owned()),
        "keyfleet-agent must not depend on keyfleet-hub: {agent:?}"
    );
}
