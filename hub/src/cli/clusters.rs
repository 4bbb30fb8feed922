//! `keyfleet cluster …`: register clusters and issue their enrollment tokens, list and show them
//! with their sync state, label and revoke them. **Invariant:** an enrollment token is printed once,
//! to the operator who asked for it, and is the only secret this client prints.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use keyfleet_proto::v1;
use serde_json::{Value, json};

use super::output::{
    dash, labels_text, secret_status_json, timestamp, timestamp_json, write_listing, write_secret_statuses,
    write_structured, yes_no,
};
use super::selector::parse_selector;
use super::{CliError, Client, call, missing_field};
use crate::config::{ClusterCommand, LabelChange, OutputFormat};
use crate::grpc::convert::selector_to_proto;

/// `keyfleet cluster add|list|show|label|revoke|token`.
pub(super) async fn cluster(
    client: &mut Client,
    command: ClusterCommand,
    hub_url: &str,
    input: &mut (dyn Read + Send),
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    match command {
        ClusterCommand::Add {
            name,
            labels,
            file,
            reissue_pending,
            token_ttl,
            agent_hub_url,
            output,
        } => {
            let agent_hub_url = agent_hub_url.as_deref().unwrap_or(hub_url);
            let Some(name) = name else {
                let Some(file) = file else {
                    return Err(CliError::Usage("give a cluster name or -f FILE".to_owned()));
                };
                let options = super::bulk::Options {
                    reissue_pending,
                    token_ttl_seconds: ttl_seconds(token_ttl),
                    agent_hub_url,
                    output,
                };
                return super::bulk::add_from_file(client, &file, &options, input, out).await;
            };
            let request = v1::CreateClusterRequest {
                name: name.clone(),
                labels: labels.into_iter().collect(),
                token_ttl_seconds: ttl_seconds(token_ttl),
            };
            let response = call(format!("create cluster {name:?}"), client.create_cluster(request)).await?;
            let token = response
                .token
                .ok_or_else(|| missing_field("create cluster", "token"))?;
            if output != OutputFormat::Table {
                let labels = response.cluster.map(|cluster| cluster.labels).unwrap_or_default();
                let mut value = token_json(&token, agent_hub_url);
                value["outcome"] = json!("created");
                value["labels"] = json!(labels.iter().collect::<BTreeMap<_, _>>());
                return write_structured(&value, output, out);
            }
            writeln!(out, "cluster/{name} created")?;
            write_enrollment(&token, agent_hub_url, out)
        }
        ClusterCommand::List { selector, output } => {
            let selector = selector
                .as_deref()
                .map(parse_selector)
                .transpose()
                .map_err(CliError::Usage)?;
            let request = v1::ListClustersRequest {
                selector: selector.as_ref().map(selector_to_proto),
            };
            let response = call("list clusters".to_owned(), client.list_clusters(request)).await?;
            write_listing(
                &response.clusters,
                output,
                cluster_json,
                &["NAME", "STATE", "CONNECTED", "AGENT", "LAST SEEN", "LABELS"],
                |cluster| {
                    vec![
                        cluster.name.clone(),
                        cluster.state.clone(),
                        yes_no(cluster.connected),
                        dash(&cluster.agent_version),
                        timestamp(cluster.last_seen.as_ref()),
                        labels_text(&cluster.labels),
                    ]
                },
                out,
            )
        }
        ClusterCommand::Show { name, output } => {
            let request = v1::GetClusterRequest { name: name.clone() };
            let response = call(format!("get cluster {name:?}"), client.get_cluster(request)).await?;
            let cluster = response
                .cluster
                .ok_or_else(|| missing_field("get cluster", "cluster"))?;
            if output != OutputFormat::Table {
                let mut value = cluster_json(&cluster);
                value["secrets"] = Value::Array(response.secrets.iter().map(secret_status_json).collect());
                return write_structured(&value, output, out);
            }
            writeln!(out, "Name:        {}", cluster.name)?;
            writeln!(out, "Id:          {}", cluster.id)?;
            writeln!(out, "State:       {}", cluster.state)?;
            let connection = if cluster.connected {
                format!("yes (replica {})", cluster.connected_replica)
            } else {
                "no".to_owned()
            };
            writeln!(out, "Connected:   {connection}")?;
            writeln!(out, "Agent:       {}", dash(&cluster.agent_version))?;
            writeln!(out, "Last seen:   {}", timestamp(cluster.last_seen.as_ref()))?;
            writeln!(out, "Created:     {}", timestamp(cluster.created.as_ref()))?;
            writeln!(out, "Labels:      {}", labels_text(&cluster.labels))?;
            writeln!(out)?;
            if response.secrets.is_empty() {
                writeln!(out, "No FleetSecret targets this cluster.")?;
                return Ok(());
            }
            write_secret_statuses(
                "FLEETSECRET",
                &response.secrets,
                |secret| &secret.fleet_secret,
                out,
            )
        }
        ClusterCommand::Label { name, changes } => {
            let mut set = std::collections::HashMap::new();
            let mut remove = Vec::new();
            for change in changes {
                match change {
                    LabelChange::Set(key, value) => {
                        set.insert(key, value);
                    }
                    LabelChange::Remove(key) => remove.push(key),
                }
            }
            let request = v1::LabelClusterRequest {
                name: name.clone(),
                set,
                remove,
            };
            let cluster = call(format!("label cluster {name:?}"), client.label_cluster(request)).await?;
            writeln!(out, "cluster/{name} labeled: {}", labels_text(&cluster.labels))?;
            Ok(())
        }
        ClusterCommand::Revoke { name } => {
            let request = v1::RevokeClusterRequest { name: name.clone() };
            call(format!("revoke cluster {name:?}"), client.revoke_cluster(request)).await?;
            writeln!(out, "cluster/{name} revoked")?;
            Ok(())
        }
        ClusterCommand::Token {
            name,
            token_ttl,
            agent_hub_url,
            output,
        } => {
            let request = v1::IssueEnrollmentTokenRequest {
                name: name.clone(),
                token_ttl_seconds: ttl_seconds(token_ttl),
            };
            let token = call(
                format!("issue an enrollment token for cluster {name:?}"),
                client.issue_enrollment_token(request),
            )
            .await?;
            let agent_hub_url = agent_hub_url.as_deref().unwrap_or(hub_url);
            if output != OutputFormat::Table {
                return write_structured(&token_json(&token, agent_hub_url), output, out);
            }
            write_enrollment(&token, agent_hub_url, out)
        }
    }
}

/// A one-time enrollment token as `-o json|yaml` prints it (its only structured printing):
/// `name`, `token`, `expires` (RFC 3339) and `hubUrl` (what the agent dials).
pub(super) fn token_json(token: &v1::EnrollmentToken, agent_hub_url: &str) -> Value {
    json!({
        "name": token.cluster_name,
        "token": token.token,
        "expires": timestamp_json(token.expires.as_ref()),
        "hubUrl": agent_hub_url,
    })
}

/// Seconds for the wire; out-of-range values saturate and the hub names the field.
pub(super) fn ttl_seconds(ttl: Duration) -> u32 {
    u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX)
}

/// The one-time enrollment token and how to install the agent with it (its only printing).
fn write_enrollment(
    token: &v1::EnrollmentToken,
    hub_url: &str,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    writeln!(
        out,
        "Enrollment token for cluster {} (shown once, single use, expires {}):",
        token.cluster_name,
        timestamp(token.expires.as_ref())
    )?;
    writeln!(out, "  {}", token.token)?;
    writeln!(
        out,
        "Install the agent in the cluster with its Helm chart (docs/agent.md; add \
         --set image.repository=<your registry>/keyfleet-agent):"
    )?;
    writeln!(out, "  kubectl create namespace keyfleet-system")?;
    writeln!(
        out,
        "  kubectl -n keyfleet-system create secret generic keyfleet-agent-enrollment --from-literal=token={}",
        token.token
    )?;
    writeln!(
        out,
        "  kubectl -n keyfleet-system create configmap keyfleet-hub-ca --from-file=ca.crt=hub-ca.pem"
    )?;
    writeln!(
        out,
        "  helm install keyfleet-agent deploy/charts/keyfleet-agent -n keyfleet-system --set hub.url={hub_url}"
    )?;
    writeln!(out, "Or run it as a process with a kubeconfig:")?;
    writeln!(
        out,
        "  KEYFLEET_AGENT_HUB_URL={hub_url} KEYFLEET_AGENT_ENROLLMENT_TOKEN={} keyfleet-agent",
        token.token
    )?;
    Ok(())
}

/// A cluster as `-o json|yaml` prints it.
fn cluster_json(cluster: &v1::Cluster) -> Value {
    json!({
        "id": cluster.id,
        "name": cluster.name,
        "labels": cluster.labels.iter().collect::<BTreeMap<_, _>>(),
        "state": cluster.state,
        "connected": cluster.connected,
        "connectedReplica": cluster.connected_replica,
        "agentVersion": cluster.agent_version,
        "lastSeen": timestamp_json(cluster.last_seen.as_ref()),
        "created": timestamp_json(cluster.created.as_ref()),
    })
}
