//! `deploy/` checked without a cluster: every kustomize overlay (gpu, pools, cpu) renders with
//! the machine's kubectl, and every object it renders validates against the
//! Kubernetes API schema (k8s-openapi's types for Kubernetes 1.33: an object
//! must read back exactly as written, so a misspelt or misplaced field fails);
//! KEDA's ScaledObject against its CRD's fields. Then the rules that tie the
//! objects together (selectors, ports, probes, grace periods against the drain
//! timeout), and the systemd units through `systemd-analyze verify`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, PodSpec, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use stylefarm_coordinator_tests::{repo_root, workspace_bin};

/// KEDA 2.x `ScaledObject` (keda.sh/v1alpha1), the fields of its CRD schema
/// this project may use; anything else is refused.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ScaledObject {
    api_version: String,
    kind: String,
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec: ScaledObjectSpec,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ScaledObjectSpec {
    scale_target_ref: ScaleTarget,
    #[serde(skip_serializing_if = "Option::is_none")]
    polling_interval: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cooldown_period: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    initial_cooldown_period: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_replica_count: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_replica_count: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_replica_count: Option<i32>,
    triggers: Vec<Trigger>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ScaleTarget {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Trigger {
    #[serde(rename = "type")]
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    authentication_ref: Option<AuthenticationRef>,
    /// The CRD types it as a map of strings: numbers must be quoted.
    metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metric_type: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AuthenticationRef {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
}

/// KEDA 2.x `TriggerAuthentication`: parameters read from Secrets.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TriggerAuthentication {
    api_version: String,
    kind: String,
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec: TriggerAuthenticationSpec,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TriggerAuthenticationSpec {
    secret_target_ref: Vec<SecretTargetRef>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SecretTargetRef {
    parameter: String,
    name: String,
    key: String,
}

fn kustomize(overlay: &str) -> Vec<Value> {
    let dir = repo_root().join("deploy/k8s/overlays").join(overlay);
    let out = Command::new("kubectl").arg("kustomize").arg(&dir).output().expect("kubectl (preinstalled; `make setup` checks for it)");
    assert!(out.status.success(), "kubectl kustomize {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    serde_yaml::Deserializer::from_slice(&out.stdout).map(|doc| serde_json::to_value(Value::deserialize(doc).unwrap()).unwrap()).collect()
}

/// Where `a` and `b` differ (a field the type does not know, or a value it
/// read as something else), as JSON paths.
fn differences(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                match y.get(k) {
                    Some(w) => differences(&format!("{path}.{k}"), v, w, out),
                    None => out.push(format!("{path}.{k}: not a field of this kind")),
                }
            }
            // k8s-openapi writes apiVersion and kind on embedded objects (a claim template): not a finding
            for k in y.keys().filter(|k| !x.contains_key(*k) && *k != "apiVersion" && *k != "kind") {
                out.push(format!("{path}.{k}: added on reading"));
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                differences(&format!("{path}[{i}]"), v, w, out);
            }
        }
        _ if a == b => {}
        _ => out.push(format!("{path}: {a} reads back as {b}")),
    }
}

/// Reads `object` as `T` and insists it reads back unchanged.
fn strict<T: DeserializeOwned + Serialize>(object: &Value) -> T {
    let name = format!("{} {}", object["kind"], object["metadata"]["name"]);
    let typed: T = serde_json::from_value(object.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    let mut diff = Vec::new();
    differences("", object, &back, &mut diff);
    assert!(diff.is_empty(), "{name} does not validate against its schema:\n  {}", diff.join("\n  "));
    typed
}

#[derive(Default)]
struct Rendered {
    statefulsets: Vec<StatefulSet>,
    deployments: Vec<Deployment>,
    services: Vec<Service>,
    pdbs: Vec<PodDisruptionBudget>,
    configmaps: Vec<ConfigMap>,
    secrets: Vec<Secret>,
    scaled: Vec<ScaledObject>,
    trigger_auths: Vec<TriggerAuthentication>,
    kinds: Vec<String>,
}

fn validate(objects: &[Value]) -> Rendered {
    let mut r = Rendered::default();
    for object in objects {
        let kind = object["kind"].as_str().unwrap_or_default().to_string();
        match (object["apiVersion"].as_str().unwrap_or_default(), kind.as_str()) {
            ("apps/v1", "StatefulSet") => r.statefulsets.push(strict(object)),
            ("apps/v1", "Deployment") => r.deployments.push(strict(object)),
            ("v1", "Service") => r.services.push(strict(object)),
            ("v1", "ConfigMap") => r.configmaps.push(strict(object)),
            ("v1", "ServiceAccount") => drop(strict::<ServiceAccount>(object)),
            ("v1", "Namespace") => drop(strict::<Namespace>(object)),
            ("v1", "Secret") => r.secrets.push(strict(object)),
            ("v1", "PersistentVolumeClaim") => drop(strict::<PersistentVolumeClaim>(object)),
            ("policy/v1", "PodDisruptionBudget") => r.pdbs.push(strict(object)),
            ("keda.sh/v1alpha1", "ScaledObject") => r.scaled.push(strict(object)),
            ("keda.sh/v1alpha1", "TriggerAuthentication") => r.trigger_auths.push(strict(object)),
            (api, kind) => panic!("{api} {kind}: a kind this test does not know how to validate"),
        }
        r.kinds.push(kind);
    }
    r
}

impl Rendered {
    fn deployment(&self, name: &str) -> &Deployment {
        self.deployments.iter().find(|d| d.metadata.name.as_deref() == Some(name)).unwrap_or_else(|| panic!("Deployment {name}"))
    }

    fn configmap(&self, name: &str) -> BTreeMap<String, String> {
        self.configmaps.iter().find(|m| m.metadata.name.as_deref() == Some(name)).and_then(|m| m.data.clone()).unwrap_or_else(|| panic!("ConfigMap {name}"))
    }
}

/// The names of the ConfigMaps and Secrets a container takes its environment from.
fn env_sources(c: &k8s_openapi::api::core::v1::Container) -> Vec<String> {
    c.env_from
        .iter()
        .flatten()
        .flat_map(|e| e.config_map_ref.as_ref().map(|r| r.name.clone()).into_iter().chain(e.secret_ref.as_ref().map(|r| r.name.clone())))
        .collect()
}

fn s3_pod_labels(d: &Deployment) -> &BTreeMap<String, String> {
    d.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.as_ref().unwrap()
}

fn pod(spec: &Option<PodSpec>) -> &PodSpec {
    spec.as_ref().expect("pod spec")
}

fn labels_match(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The rules every overlay keeps.
/// The path a container sees `secret`'s `key` at, if it mounts that Secret.
fn secret_path(pod: &PodSpec, container: &k8s_openapi::api::core::v1::Container, secret: &str, key: &str) -> Option<String> {
    let volume = pod.volumes.as_ref()?.iter().find(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some(secret))?;
    let mount = container.volume_mounts.as_ref()?.iter().find(|m| m.name == volume.name)?;
    Some(format!("{}/{key}", mount.mount_path))
}

/// Closed by default: no --insecure anywhere, every call needs a token, TLS
/// from the Secrets bootstrap.sh makes (mounted, not optional), workers and
/// KEDA trust the coordinator by the CA and workers hold their token.
fn check_closed(r: &Rendered, overlay: &str) {
    let coordinator = r.statefulsets.iter().find(|s| s.metadata.name.as_deref() == Some("stylefarm-coordinator")).unwrap();
    let cpod = pod(&coordinator.spec.as_ref().unwrap().template.spec);
    let c = &cpod.containers[0];
    let env = r.configmap("stylefarm-coordinator");
    for container in cpod.containers.iter().chain(r.deployments.iter().flat_map(|d| pod(&d.spec.as_ref().unwrap().template.spec).containers.iter())) {
        let args = container.args.clone().unwrap_or_default();
        assert!(!args.iter().any(|a| a == "--insecure"), "{overlay} {}: --insecure", container.name);
    }
    assert_eq!(env.get("STYLEFARM_AUTH").map(String::as_str), Some("required"), "{overlay}: every call needs a token");
    assert_eq!(env.get("STYLEFARM_TLS_CERT"), secret_path(cpod, c, "stylefarm-coordinator-tls", "tls.crt").as_ref(), "{overlay}: TLS certificate");
    assert_eq!(env.get("STYLEFARM_TLS_KEY"), secret_path(cpod, c, "stylefarm-coordinator-tls", "tls.key").as_ref(), "{overlay}: TLS key");
    assert_eq!(env.get("STYLEFARM_TLS_CA"), secret_path(cpod, c, "stylefarm-coordinator-tls", "ca.crt").as_ref(), "{overlay}: the health check's CA");
    let tokens = secret_path(cpod, c, "stylefarm-coordinator-tokens", "x").map(|p| p.trim_end_matches("/x").to_string());
    assert_eq!(env.get("STYLEFARM_TOKENS_FROM"), tokens.as_ref(), "{overlay}: tokens imported from their Secret");
    for volume in cpod.volumes.iter().flatten().filter_map(|v| v.secret.as_ref()) {
        assert_ne!(volume.optional, Some(true), "{overlay}: the coordinator never starts without its TLS and tokens");
    }
    let wenv = r.configmap("stylefarm-worker");
    for d in &r.deployments {
        let name = d.metadata.name.clone().unwrap_or_default();
        if !name.starts_with("stylefarm-worker") {
            continue;
        }
        let wpod = pod(&d.spec.as_ref().unwrap().template.spec);
        let w = &wpod.containers[0];
        assert_eq!(
            wenv.get("STYLEFARM_TLS_CA"),
            secret_path(wpod, w, "stylefarm-ca", "ca.crt").as_ref(),
            "{overlay} {name}: the CA is mounted where the worker looks"
        );
        let token = w.env.iter().flatten().find(|e| e.name == "STYLEFARM_TOKEN").and_then(|e| e.value_from.as_ref()).and_then(|v| v.secret_key_ref.as_ref());
        let token = token.unwrap_or_else(|| panic!("{overlay} {name}: a token from a Secret"));
        assert_eq!((token.name.as_str(), token.key.as_str(), token.optional), ("stylefarm-worker-token", "token", None), "{overlay} {name}: required");
    }
    for so in &r.scaled {
        for trigger in &so.spec.triggers {
            let auth = trigger.authentication_ref.as_ref().unwrap_or_else(|| panic!("{overlay}: KEDA reaches the scaler over TLS"));
            let ta = r.trigger_auths.iter().find(|t| t.metadata.name.as_deref() == Some(auth.name.as_str())).expect("its TriggerAuthentication");
            assert!(ta.spec.secret_target_ref.iter().any(|s| s.parameter == "caCert" && s.name == "stylefarm-ca" && s.key == "ca.crt"), "{overlay}");
        }
    }
}

fn check_wiring(r: &Rendered, overlay: &str) {
    let coordinator = r.statefulsets.iter().find(|s| s.metadata.name.as_deref() == Some("stylefarm-coordinator")).expect("coordinator StatefulSet");
    let worker = r.deployment("stylefarm-worker");
    let service = r.services.iter().find(|s| s.metadata.name.as_deref() == Some("stylefarm-coordinator")).expect("coordinator Service");

    // the coordinator: one replica with its state on a claim, reached through the Service, probed over gRPC
    let cs = coordinator.spec.as_ref().unwrap();
    assert_eq!(cs.replicas, Some(1), "{overlay}: one SQLite writer");
    let claims = cs.volume_claim_templates.as_ref().expect("a PersistentVolumeClaim for the state");
    let c = &pod(&cs.template.spec).containers[0];
    let state_mount = c.volume_mounts.as_ref().unwrap().iter().find(|m| m.name == claims[0].metadata.name.clone().unwrap()).expect("the claim is mounted");
    let env = r.configmap("stylefarm-coordinator");
    assert_eq!(env.get("STYLEFARM_DATA_DIR"), Some(&state_mount.mount_path), "{overlay}: the data dir is the mounted claim");
    let grpc_port = c.ports.as_ref().unwrap().iter().find(|p| p.name.as_deref() == Some("grpc")).unwrap().container_port;
    assert!(env["STYLEFARM_LISTEN"].ends_with(&format!(":{grpc_port}")), "{overlay}: listens on the declared port");
    for probe in [&c.startup_probe, &c.readiness_probe, &c.liveness_probe] {
        // over TLS: the image's health check (the kubelet's grpc probe has no TLS)
        let command = probe.as_ref().and_then(|p| p.exec.as_ref()).and_then(|e| e.command.clone());
        assert_eq!(command, Some(vec!["stylefarm-coordinator".to_string(), "health".to_string()]), "{overlay}: coordinator probes use its gRPC health");
    }
    let selector = service.spec.as_ref().unwrap().selector.clone().unwrap();
    assert!(labels_match(&selector, cs.template.metadata.as_ref().unwrap().labels.as_ref().unwrap()), "{overlay}: the Service selects the coordinator");
    check_closed(r, overlay);

    // workers: reach the Service, probed on their health port, and get longer than their drain to stop
    let ws = worker.spec.as_ref().unwrap();
    let wp = pod(&ws.template.spec);
    let w = &wp.containers[0];
    let args = w.args.clone().unwrap_or_default();
    let flag = |name: &str| args.iter().position(|a| a == name).map(|i| args[i + 1].clone());
    let drain_s: i64 = flag("--drain-timeout-s").expect("--drain-timeout-s is explicit").parse().unwrap();
    let grace = wp.termination_grace_period_seconds.expect("terminationGracePeriodSeconds");
    assert!(grace > drain_s, "{overlay}: grace {grace} s must exceed the drain timeout {drain_s} s");
    let pre_stop =
        w.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()).and_then(|h| h.exec.as_ref()).expect("a preStop that drains").command.clone().unwrap();
    assert_eq!(pre_stop[..2], ["stylefarm-worker".to_string(), "drain".to_string()], "{overlay}");
    let wait: i64 = pre_stop[pre_stop.iter().position(|a| a == "--timeout-s").unwrap() + 1].parse().unwrap();
    assert!(wait >= drain_s && wait < grace, "{overlay}: preStop waits {wait} s: at least the drain ({drain_s} s), less than the grace ({grace} s)");
    let health: std::net::SocketAddr = flag("--health-listen").expect("--health-listen").parse().unwrap();
    let health_port = w.ports.as_ref().unwrap().iter().find(|p| p.name.as_deref() == Some("health")).unwrap().container_port;
    assert_eq!(health.port() as i32, health_port);
    for probe in [&w.startup_probe, &w.liveness_probe] {
        assert_eq!(probe.as_ref().and_then(|p| p.grpc.as_ref()).map(|g| g.port), Some(health_port), "{overlay}: worker probes use its gRPC health");
    }
    let wenv = r.configmap("stylefarm-worker");
    let service_port = service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port;
    assert_eq!(wenv["STYLEFARM_COORDINATOR"], format!("https://stylefarm-coordinator:{service_port}"), "{overlay}: workers reach the Service over TLS");
    let pdb = &r.pdbs[0];
    let pdb_selector = pdb.spec.as_ref().unwrap().selector.as_ref().unwrap().match_labels.clone().unwrap();
    assert!(labels_match(&pdb_selector, ws.template.metadata.as_ref().unwrap().labels.as_ref().unwrap()), "{overlay}: the PDB covers the workers");
    assert!(labels_match(ws.selector.match_labels.as_ref().unwrap(), ws.template.metadata.as_ref().unwrap().labels.as_ref().unwrap()));
    // both read the same store and its credentials
    let store = r.configmap("stylefarm-store");
    assert!(store["STYLEFARM_STORE"].starts_with("s3://"), "{overlay}: workers in other pods need a shared store, not the coordinator's disk");
    for c in [w, c] {
        let sources = env_sources(c);
        assert!(sources.contains(&"stylefarm-store".to_string()) && sources.contains(&"stylefarm-s3".to_string()), "{overlay} {}: {sources:?}", c.name);
    }
    for c in wp.containers.iter().chain(pod(&cs.template.spec).containers.iter()) {
        let sc = c.security_context.as_ref().expect("securityContext");
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{overlay} {}", c.name);
        assert!(c.image.as_deref().is_some_and(|i| i.contains(':')), "{overlay} {}: a pinned image tag", c.name);
    }
}

#[test]
fn every_overlay_renders_and_validates_against_the_api_schema() {
    // gpu: GPU nodes, nvidia.com/gpu limits, KEDA scaling to zero on the coordinator's queue
    let gpu = validate(&kustomize("gpu"));
    check_wiring(&gpu, "gpu");
    let w = pod(&gpu.deployment("stylefarm-worker").spec.as_ref().unwrap().template.spec);
    let limits = w.containers[0].resources.as_ref().unwrap().limits.clone().unwrap();
    assert_eq!(limits.get("nvidia.com/gpu").map(|q| q.0.as_str()), Some("1"));
    assert!(w.tolerations.as_ref().unwrap().iter().any(|t| t.key.as_deref() == Some("nvidia.com/gpu")));
    assert!(w.node_selector.as_ref().unwrap().contains_key("nvidia.com/gpu.present"));
    let so = &gpu.scaled[0];
    assert_eq!(so.spec.scale_target_ref.name, "stylefarm-worker");
    assert_eq!(so.spec.min_replica_count, Some(0), "scales to zero");
    let trigger = &so.spec.triggers[0];
    assert_eq!(trigger.kind, "external");
    let address = &trigger.metadata["scalerAddress"];
    let port = gpu.services[0].spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port;
    assert!(address.starts_with("stylefarm-coordinator.stylefarm.svc") && address.ends_with(&format!(":{port}")), "{address}");
    assert!(gpu.kinds.contains(&"Namespace".to_string()));

    assert!(gpu.secrets.is_empty(), "the gpu overlay ships no credentials");

    // cpu: two workers, no GPU asked for, no autoscaler, its own S3 store
    let cpu = validate(&kustomize("cpu"));
    check_wiring(&cpu, "cpu");
    let workers = cpu.deployment("stylefarm-worker");
    assert_eq!(workers.spec.as_ref().unwrap().replicas, Some(2));
    let limits = pod(&workers.spec.as_ref().unwrap().template.spec).containers[0].resources.as_ref().unwrap().limits.clone().unwrap();
    assert!(!limits.contains_key("nvidia.com/gpu"));
    assert!(cpu.scaled.is_empty());
    let s3 = cpu.deployment("stylefarm-s3");
    let s3_pod = pod(&s3.spec.as_ref().unwrap().template.spec);
    let s3_port = s3_pod.containers[0].ports.as_ref().unwrap()[0].container_port;
    let s3_service = cpu.services.iter().find(|s| s.metadata.name.as_deref() == Some("stylefarm-s3")).expect("the store's Service");
    assert!(labels_match(s3_service.spec.as_ref().unwrap().selector.as_ref().unwrap(), s3_pod_labels(s3)));
    let store = cpu.configmap("stylefarm-store");
    let service_port = s3_service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port;
    assert_eq!(store["AWS_ENDPOINT"], format!("http://stylefarm-s3:{service_port}"), "workers and coordinator reach the store's Service");
    assert_eq!(service_port, s3_port);
    let buckets = s3_pod.containers[0].env.iter().flatten().find(|e| e.name == "S3_BUCKETS").and_then(|e| e.value.clone()).unwrap();
    assert_eq!(format!("s3://{buckets}/"), store["STYLEFARM_STORE"], "the store serves the bucket STYLEFARM_STORE names");
    let keys: Vec<String> = cpu.secrets[0].string_data.clone().unwrap().into_keys().collect();
    assert_eq!(keys, ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]);
}

/// A Deployment's pod template labels.
fn template_labels(d: &Deployment) -> &BTreeMap<String, String> {
    d.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.as_ref().unwrap()
}

#[test]
fn the_pools_overlay_scales_two_gpu_pools_each_on_its_own_queue() {
    let pools = validate(&kustomize("pools"));
    check_wiring(&pools, "pools");
    let names = ["stylefarm-worker", "stylefarm-worker-render"];
    let deployments: Vec<&Deployment> = names.iter().map(|n| pools.deployment(n)).collect();
    let mut seen_pools = Vec::new();
    for (i, d) in deployments.iter().enumerate() {
        let name = names[i];
        let other = deployments[1 - i];
        let spec = d.spec.as_ref().unwrap();
        let selector = spec.selector.match_labels.clone().unwrap();
        assert!(labels_match(&selector, template_labels(d)), "{name} selects its own pods");
        assert!(!labels_match(&selector, template_labels(other)), "{name} must not select the other pool's pods");
        let w = &pod(&spec.template.spec).containers[0];
        assert_eq!(w.resources.as_ref().unwrap().limits.as_ref().unwrap().get("nvidia.com/gpu").map(|q| q.0.as_str()), Some("1"), "{name}: a GPU pool");
        // the labels the workers carry, as the worker parses them
        let text = w.env.iter().flatten().find(|e| e.name == "STYLEFARM_LABELS").and_then(|e| e.value.clone()).expect("STYLEFARM_LABELS");
        let labels = stylefarm_core::labels::parse_labels(&text).unwrap();
        seen_pools.push(labels["pool"].clone());
        // its ScaledObject asks for the demand of exactly those labels
        let so = pools.scaled.iter().find(|s| s.spec.scale_target_ref.name == name).unwrap_or_else(|| panic!("a ScaledObject for {name}"));
        assert_eq!(so.spec.min_replica_count, Some(0), "{name} scales to zero");
        let trigger = &so.spec.triggers[0];
        let asked = stylefarm_core::labels::parse_labels(&trigger.metadata["labels"]).unwrap();
        assert_eq!(asked, labels, "{name}: the trigger's labels are its workers'");
        // exactly one PodDisruptionBudget covers its pods (two would block every eviction)
        let covering = pools
            .pdbs
            .iter()
            .filter(|p| labels_match(p.spec.as_ref().unwrap().selector.as_ref().unwrap().match_labels.as_ref().unwrap(), template_labels(d)))
            .count();
        assert_eq!(covering, 1, "{name}: one PodDisruptionBudget");
    }
    seen_pools.sort();
    assert_eq!(seen_pools, ["render", "studio-b"]);
    assert_eq!(pools.statefulsets.len(), 1, "one coordinator for both pools");
}

#[test]
fn the_schema_check_catches_a_misplaced_field() {
    // the check itself can fail: a field one level too deep, and a number where a string belongs
    let mut objects = kustomize("cpu");
    let worker = objects.iter_mut().find(|o| o["kind"] == "Deployment").unwrap();
    worker["spec"]["template"]["spec"]["containers"][0]["terminationGracePeriodSeconds"] = 30.into();
    let result = std::panic::catch_unwind(|| validate(&objects));
    let Err(panic) = result else { panic!("a Deployment with a misplaced field validated") };
    let message = *panic.downcast::<String>().unwrap();
    assert!(message.contains("containers[0].terminationGracePeriodSeconds"), "{message}");

    let so: Value = serde_json::json!({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "x"},
        "spec": {"scaleTargetRef": {"name": "w"}, "triggers": [{"type": "external", "metadata": {"jobsPerWorker": 1}}]}});
    assert!(serde_json::from_value::<ScaledObject>(so).is_err(), "trigger metadata values are strings");
}

/// The JSON-array ENTRYPOINT of a Dockerfile in deploy/docker.
fn entrypoint(dockerfile: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join("deploy/docker").join(dockerfile)).unwrap();
    let line = text.lines().rfind(|l| l.starts_with("ENTRYPOINT ")).unwrap_or_else(|| panic!("{dockerfile}: no ENTRYPOINT"));
    serde_json::from_str(&line["ENTRYPOINT ".len()..]).unwrap_or_else(|e| panic!("{dockerfile}: ENTRYPOINT is not a JSON array: {e}"))
}

/// Runs `argv` (its first word one of this workspace's binaries, as the image
/// names it) with `--help` after the given flags: clap refuses an unknown,
/// repeated or malformed flag before it gets to `--help`.
fn accepts(context: &str, argv: &[String]) {
    let package = if argv[0] == "stylefarm-coordinator" { "stylefarm-coordinator" } else { "stylefarm-worker" };
    let mut command = Command::new(workspace_bin(package, &argv[0]));
    command.args(&argv[1..]).arg("--help");
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("STYLEFARM_")) {
        command.env_remove(key);
    }
    let out = command.output().unwrap();
    assert!(out.status.success(), "{context}: `{}` is refused: {}", argv.join(" "), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_images_accept_the_command_lines_the_manifests_give_them() {
    let images = [("stylefarm-coordinator", "coordinator.Dockerfile"), ("stylefarm-worker", "worker.Dockerfile")];
    for (_, dockerfile) in images {
        // settings the image bakes in are ENV, so that args can add to or override them
        assert_eq!(entrypoint(dockerfile).len(), 1, "{dockerfile}: flags in the ENTRYPOINT cannot be overridden by args");
    }
    for overlay in ["gpu", "pools", "cpu"] {
        let objects = kustomize(overlay);
        for object in objects.iter().filter(|o| o["kind"] == "Deployment" || o["kind"] == "StatefulSet") {
            let name = object["metadata"]["name"].as_str().unwrap();
            let Some((_, dockerfile)) = images.iter().find(|(n, _)| *n == name) else { continue };
            let container = &object["spec"]["template"]["spec"]["containers"][0];
            let args: Vec<String> = serde_json::from_value(container["args"].clone()).unwrap_or_default();
            accepts(&format!("{overlay} {name}"), &[entrypoint(dockerfile), args].concat());
            if let Some(hook) = container["lifecycle"]["preStop"]["exec"]["command"].as_array() {
                let hook: Vec<String> = hook.iter().map(|a| a.as_str().unwrap().to_string()).collect();
                accepts(&format!("{overlay} {name} preStop"), &hook);
            }
        }
    }
    let compose: Value = serde_yaml::from_str(&std::fs::read_to_string(repo_root().join("deploy/compose.yaml")).unwrap()).unwrap();
    for (service, dockerfile) in [("init", "coordinator.Dockerfile"), ("coordinator", "coordinator.Dockerfile"), ("worker", "worker.Dockerfile")] {
        let command: Vec<String> = serde_json::from_value(compose["services"][service]["command"].clone()).unwrap_or_default();
        accepts(&format!("compose {service}"), &[entrypoint(dockerfile), command].concat());
    }
    for unit in ["stylefarm-coordinator.service", "stylefarm-worker.service"] {
        let text = std::fs::read_to_string(repo_root().join("deploy/systemd").join(unit)).unwrap();
        let exec = text.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap_or_else(|| panic!("{unit}: ExecStart"));
        let mut argv: Vec<String> = exec.split_whitespace().map(|a| a.replace("%d", "/run/credentials/x")).collect();
        argv[0] = argv[0].rsplit('/').next().unwrap().to_string();
        accepts(unit, &argv);
    }
    // the check can fail: the image's old ENTRYPOINT with the manifest's --work-dir
    let twice = ["stylefarm-worker", "--work-dir", "/var/lib/stylefarm", "--work-dir", "/work"].map(String::from);
    assert!(std::panic::catch_unwind(|| accepts("repeated flag", &twice)).is_err());
}

/// A root for `systemd-analyze verify --root`: the units where systemd looks
/// for them, the binaries where they name them, and the host's own system units.
fn systemd_root(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    let units = root.join("etc/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    for unit in ["stylefarm-coordinator.service", "stylefarm-worker.service"] {
        std::fs::copy(repo_root().join("deploy/systemd").join(unit), units.join(unit)).unwrap();
    }
    let bin = root.join("opt/stylefarm/bin");
    std::fs::create_dir_all(&bin).unwrap();
    for (package, name) in [("stylefarm-coordinator", "stylefarm-coordinator"), ("stylefarm-worker", "stylefarm-worker")] {
        std::fs::copy(workspace_bin(package, name), bin.join(name)).unwrap();
    }
    std::fs::create_dir_all(root.join("etc/stylefarm")).unwrap();
    for f in ["worker.env", "coordinator.env"] {
        std::fs::copy(repo_root().join("deploy/systemd").join(f), root.join("etc/stylefarm").join(f)).unwrap();
    }
    std::fs::write(root.join("etc/stylefarm/worker.token"), "sf1_0_x\n").unwrap();
    std::fs::create_dir_all(root.join("usr/lib/systemd")).unwrap();
    let status = Command::new("cp").arg("-a").arg("/usr/lib/systemd/system").arg(root.join("usr/lib/systemd/")).status().unwrap();
    assert!(status.success(), "copying the host's system units");
    std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
    root
}

fn verify(root: &Path, unit: &str) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", root.display()))
        .arg(root.join("etc/systemd/system").join(unit))
        .output()
        .expect("systemd-analyze (Debian package systemd; `make setup` installs it)");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout))
}

#[test]
fn the_systemd_units_verify_and_outlast_the_drain() {
    let dir = tempfile::tempdir().unwrap();
    let root = systemd_root(dir.path());
    for unit in ["stylefarm-coordinator.service", "stylefarm-worker.service"] {
        let (ok, said) = verify(&root, unit);
        // systemd-analyze exits 0 on unknown keys; anything it says is a finding
        assert!(ok && said.trim().is_empty(), "systemd-analyze verify {unit}:\n{said}");
    }
    let worker = std::fs::read_to_string(root.join("etc/systemd/system/stylefarm-worker.service")).unwrap();
    let value = |key: &str| worker.lines().find_map(|l| l.strip_prefix(&format!("{key}="))).unwrap_or_else(|| panic!("{key} is set")).to_string();
    assert_eq!(value("KillSignal"), "SIGTERM");
    let stop: u64 = value("TimeoutStopSec").parse().unwrap();
    let exec = value("ExecStart");
    let drain: u64 = exec.split_whitespace().skip_while(|w| *w != "--drain-timeout-s").nth(1).expect("--drain-timeout-s in ExecStart").parse().unwrap();
    assert!(stop > drain, "TimeoutStopSec {stop} must exceed the drain timeout {drain}");

    // and the check can fail: a misspelt key is reported
    let units = root.join("etc/systemd/system");
    std::fs::write(units.join("stylefarm-worker.service"), worker.replace("TimeoutStopSec=", "TimeoutStopSek=")).unwrap();
    let (_, said) = verify(&root, "stylefarm-worker.service");
    assert!(said.contains("TimeoutStopSek"), "{said}");
}

/// The value between `start` and the next `end` on the first line holding
/// `start`, in the repo file `path`.
fn pinned(path: &str, start: &str, end: char) -> String {
    let text = std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    let at = text.find(start).unwrap_or_else(|| panic!("{path}: no `{start}`"));
    let rest = &text[at + start.len()..];
    rest[..rest.find(end).unwrap_or(rest.len())].trim().to_string()
}

#[test]
fn every_way_of_getting_ffmpeg_takes_the_same_wheel() {
    // `make setup` pins (and hash-checks) the wheel; the images and the bundle's
    // install.sh fetch it themselves and must ask for the same version
    let version = pinned("scripts/setup.sh", "imageio_ffmpeg_version=\"", '"');
    assert!(version.split('.').count() == 3 && version.split('.').all(|p| p.parse::<u32>().is_ok()), "setup.sh pins `{version}`");
    for dockerfile in ["deploy/docker/coordinator.Dockerfile", "deploy/docker/worker.Dockerfile"] {
        assert_eq!(pinned(dockerfile, "ARG IMAGEIO_FFMPEG_VERSION=", '\n'), version, "{dockerfile}");
    }
    assert_eq!(pinned("deploy/dist/install.sh", "\"imageio-ffmpeg==", '"'), version, "install.sh's pip download");
    assert_eq!(pinned("deploy/dist/install.sh", "(imageio-ffmpeg ", ','), version, "install.sh's log line");
}

/// `deploy/k8s/bootstrap.sh --dry-run` writes the four Secrets the manifests
/// mount, valid against the API schema, holding one worker token for both
/// sides, and the same ones again on a second run.
#[test]
fn bootstrap_makes_the_secrets_the_manifests_mount() {
    let dir = tempfile::tempdir().unwrap();
    let bin = workspace_bin("stylefarm-coordinator", "stylefarm-coordinator");
    let path = format!("{}:{}", bin.parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    let run = || {
        let out = Command::new("bash")
            .arg(repo_root().join("deploy/k8s/bootstrap.sh"))
            .args(["--dry-run", "--namespace", "stylefarm", "--out"])
            .arg(dir.path())
            .env("PATH", &path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::read_to_string(dir.path().join("secrets.yaml")).unwrap()
    };
    let text = run();
    let objects: Vec<Value> = serde_yaml::Deserializer::from_str(&text).map(|d| Value::deserialize(d).unwrap()).filter(|v| !v.is_null()).collect();
    let secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>> = validate(&objects)
        .secrets
        .into_iter()
        .map(|s| (s.metadata.name.clone().unwrap(), s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect()))
        .collect();
    let keys = |name: &str| secrets[name].keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys("stylefarm-coordinator-tls"), ["ca.crt", "tls.crt", "tls.key"]);
    assert_eq!(keys("stylefarm-coordinator-tokens"), ["admin.ops", "worker.workers"]);
    assert_eq!(secrets["stylefarm-worker-token"]["token"], secrets["stylefarm-coordinator-tokens"]["worker.workers"], "one worker token on both sides");
    assert_eq!(secrets["stylefarm-ca"]["ca.crt"], secrets["stylefarm-coordinator-tls"]["ca.crt"]);
    let certificate = String::from_utf8(secrets["stylefarm-coordinator-tls"]["tls.crt"].clone()).unwrap();
    assert!(certificate.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(std::fs::read_to_string(dir.path().join("admin/token")).unwrap().starts_with("sf1_"), "the admin token stays with the operator");
    assert!(objects.iter().all(|o| o["metadata"]["namespace"] == "stylefarm"));
    assert_eq!(run(), text, "a second run keeps the same tokens and certificate");
}

/// The compose file is closed by default: `init` makes the CA, certificate and
/// tokens; the coordinator requires tokens and serves TLS with init's files;
/// workers reach it over TLS and see only their own token and the CA.
#[test]
fn the_compose_file_starts_closed() {
    let compose: Value = serde_yaml::from_str(&std::fs::read_to_string(repo_root().join("deploy/compose.yaml")).unwrap()).unwrap();
    let service = |name: &str| compose["services"][name].clone();
    let command = |name: &str| serde_json::from_value::<Vec<String>>(service(name)["command"].clone()).unwrap_or_default();
    let flag = |name: &str, flag: &str| command(name).iter().position(|a| a == flag).map(|i| command(name)[i + 1].clone());
    for name in compose["services"].as_object().unwrap().keys() {
        assert!(!command(name).contains(&"--insecure".to_string()), "{name}: --insecure");
    }
    let init_out = flag("init", "--out").expect("init --out");
    let worker_out = flag("init", "--worker-out").expect("init --worker-out");
    assert_eq!(flag("coordinator", "--auth").as_deref(), Some("required"));
    assert_eq!(flag("coordinator", "--tokens-from"), Some(format!("{init_out}/coordinator/tokens")));
    let env = service("coordinator")["environment"].clone();
    assert_eq!(env["STYLEFARM_TLS_CERT"].as_str(), Some(format!("{init_out}/coordinator/tls/server.crt").as_str()));
    assert_eq!(env["STYLEFARM_TLS_KEY"].as_str(), Some(format!("{init_out}/coordinator/tls/server.key").as_str()));
    assert_eq!(service("coordinator")["depends_on"]["init"]["condition"], "service_completed_successfully");
    let mounts = |name: &str| serde_json::from_value::<Vec<String>>(service(name)["volumes"].clone()).unwrap();
    let volume_at =
        |name: &str, target: &str| mounts(name).into_iter().find(|m| m.split(':').nth(1) == Some(target)).map(|m| m.split(':').next().unwrap().to_string());
    assert_eq!(volume_at("coordinator", &init_out), volume_at("init", &init_out), "the coordinator reads init's files");
    let wenv = service("worker")["environment"].clone();
    assert!(wenv["STYLEFARM_COORDINATOR"].as_str().unwrap().starts_with("https://"));
    assert_eq!(wenv["STYLEFARM_TLS_CA"].as_str(), Some(format!("{worker_out}/ca.crt").as_str()));
    assert_eq!(flag("worker", "--token-file"), Some(format!("{worker_out}/token")));
    assert_eq!(volume_at("worker", &worker_out), volume_at("init", &worker_out), "workers read init's worker folder");
    assert!(
        volume_at("worker", &init_out).is_none() && !mounts("worker").iter().any(|m| m.starts_with(&format!("{}:", volume_at("init", &init_out).unwrap()))),
        "workers never see the admin token or the CA key"
    );
}

/// The release bundle's `install.sh coordinator` (into temporary dirs) makes
/// the CA, certificate and tokens, and the coordinator it installs, run with
/// the settings it wrote, serves beyond loopback closed: TLS, a token needed.
#[test]
fn install_sh_installs_a_closed_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    std::fs::create_dir_all(bundle.join("bin")).unwrap();
    std::fs::copy(workspace_bin("stylefarm-coordinator", "stylefarm-coordinator"), bundle.join("bin/stylefarm-coordinator")).unwrap();
    // an ffmpeg beside the binaries: install.sh then fetches none
    std::fs::write(bundle.join("bin/ffmpeg"), "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::create_dir_all(bundle.join("systemd")).unwrap();
    for f in ["coordinator.env", "stylefarm-coordinator.service"] {
        std::fs::copy(repo_root().join("deploy/systemd").join(f), bundle.join("systemd").join(f)).unwrap();
    }
    std::fs::copy(repo_root().join("deploy/dist/install.sh"), bundle.join("install.sh")).unwrap();
    let (prefix, etc, units) = (dir.path().join("opt"), dir.path().join("etc"), dir.path().join("units"));
    let installed = Command::new("bash")
        .arg(bundle.join("install.sh"))
        .args(["coordinator", "--no-start", "--no-user", "--hosts", "farm.example", "--prefix"])
        .arg(&prefix)
        .arg("--etc")
        .arg(&etc)
        .arg("--units")
        .arg(&units)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&installed.stderr);
    assert!(installed.status.success(), "{log}");
    assert!(log.contains("your admin token"), "{log}");
    let settings: Vec<(String, String)> = std::fs::read_to_string(etc.join("coordinator.env"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).unwrap())
        .collect();
    assert!(settings.iter().any(|(k, v)| k == "STYLEFARM_AUTH" && v == "required"));
    let mut coordinator = Command::new(prefix.join("bin/stylefarm-coordinator"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("STYLEFARM_")) {
        coordinator.env_remove(key);
    }
    let mut child = coordinator
        .envs(settings)
        .env("STYLEFARM_LISTEN", "0.0.0.0:0")
        .env("STYLEFARM_DATA_DIR", dir.path().join("state"))
        .env("STYLEFARM_METRICS_LISTEN", "127.0.0.1:0")
        .env("STYLEFARM_HTTP_LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    // kept open to the end: the coordinator prints more lines (the metrics and dashboard addresses)
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let port = line.trim().strip_prefix("listening on ").map(|a| a.rsplit(':').next().unwrap().to_string());
    let client = |token: Option<&Path>| {
        let mut command = Command::new(workspace_bin("stylefarm-client", "stylefarm"));
        command.args(["--coordinator", &format!("https://localhost:{}", port.clone().unwrap_or_default()), "--tls-ca"]).arg(etc.join("bootstrap/admin/ca.crt"));
        if let Some(token) = token {
            command.arg("--token-file").arg(token);
        }
        command.env_remove("STYLEFARM_TOKEN").arg("workers").output().unwrap()
    };
    let (with, without) = (client(Some(&etc.join("bootstrap/admin/token"))), client(None));
    let _ = child.kill();
    let _ = child.wait();
    drop(stdout);
    let stderr = {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut text);
        text
    };
    assert!(port.is_some(), "the installed coordinator did not start: {line} {stderr}");
    assert!(with.status.success(), "the admin token install.sh made: {}\n{stderr}", String::from_utf8_lossy(&with.stderr));
    assert_eq!(without.status.code(), Some(7), "no token: refused");
    let worker_token = std::fs::read_to_string(etc.join("bootstrap/worker/token")).unwrap();
    assert!(worker_token.starts_with("sf1_") && etc.join("bootstrap/worker/ca.crt").is_file(), "what a worker needs is ready");
}
