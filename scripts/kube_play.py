#!/usr/bin/env python3
"""`podman kube play` of deploy/k8s/overlays/cpu, then a batch through it.

Renders the overlay with `kubectl kustomize` and changes only what podman
(4.3, Debian bookworm) cannot do as a cluster would, each change printed:

* StatefulSet: podman has none. The coordinator's becomes a Deployment with
  the same pod template, its volumeClaimTemplate a PersistentVolumeClaim
  (podman makes a named volume of it).
* Services: podman has no cluster DNS. The coordinator's and the store's
  ports are published on the host (hostPort), and the names that pointed at
  their Services point at the host (host.containers.internal) instead.
* The workers' model cache: a read-only hostPath of this machine's cache,
  since the containers cannot reach PyPI through this sandbox's proxy.
* Secrets: podman 4.3's kube play stores a Secret as YAML and then fails to
  read it back (it expects a JSON object of base64 values), so each Secret is
  made with `podman secret create` in that form and left out of the play.
  The Secrets deploy/k8s/bootstrap.sh makes (TLS, tokens, the CA) are made
  the same way, and a Secret mounted as a volume (podman 4.3's kube play
  crashes on those) becomes a read-only hostPath of its files. The
  certificate also names host.containers.internal (STYLEFARM_EXTRA_HOSTS).
* ServiceAccount and PodDisruptionBudget: dropped (nothing here reads them).

Everything else (images, args, env and envFrom from the ConfigMaps and the
Secret, securityContext with a read-only root, emptyDirs, the preStop drain,
two worker replicas) is played as rendered. Then a batch is submitted from
this machine and must succeed on the two workers; `podman kube down` ends it.
"""
import argparse
import base64
import json
import os
import subprocess
import sys
import time

import yaml

COORD_PORT = 15251
S3_PORT = 15290
HOST = "host.containers.internal"


def sh(*args, **kw):
    return subprocess.run(list(args), check=True, text=True, **kw)


def adapt(objects, weights_dir, secret_dirs):
    out, notes = [], []
    for o in objects:
        kind, name = o["kind"], o["metadata"]["name"]
        if kind in ("ServiceAccount", "PodDisruptionBudget", "Service"):
            notes.append(f"dropped {kind} {name}")
            continue
        if kind == "Secret":
            notes.append(f"Secret {name}: made with podman secret create (kube play 4.3 cannot read its own)")
            out.append(o)
            continue
        if kind == "StatefulSet":
            spec = o["spec"]
            for claim in spec.pop("volumeClaimTemplates", []):
                pvc_name = f"{name}-{claim['metadata']['name']}"
                out.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": pvc_name}, "spec": claim["spec"]})
                spec["template"]["spec"].setdefault("volumes", []).append(
                    {"name": claim["metadata"]["name"], "persistentVolumeClaim": {"claimName": pvc_name}})
                notes.append(f"StatefulSet {name}: claim template {claim['metadata']['name']} -> PersistentVolumeClaim {pvc_name}")
            spec.pop("serviceName", None)
            o = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": o["metadata"], "spec": spec}
            notes.append(f"StatefulSet {name} -> Deployment (same pod template)")
        if kind == "ConfigMap":
            data = o.get("data", {})
            for key, value in list(data.items()):
                new = value.replace("https://stylefarm-coordinator:50051", f"https://{HOST}:{COORD_PORT}") \
                           .replace("http://stylefarm-s3:9000", f"http://{HOST}:{S3_PORT}")
                if new != value:
                    data[key] = new
                    notes.append(f"ConfigMap {name}: {key}={new} (was {value}: a Service name)")
        if o["kind"] == "Deployment":
            pod = o["spec"]["template"]["spec"]
            for c in pod["containers"]:
                if name == "stylefarm-worker" and c.pop("ports", None):
                    notes.append(f"{name}: ports dropped (podman 4.3 publishes each containerPort on the host, so two replicas collide; the probes name the port number)")
                for port in c.get("ports", []):
                    host_port = {"grpc": COORD_PORT, "s3": S3_PORT}.get(port.get("name"))
                    if host_port:
                        port["hostPort"] = host_port
                        notes.append(f"{name}: containerPort {port['containerPort']} published as hostPort {host_port} (for its Service)")
            for v in pod.get("volumes", []):
                if "secret" in v:
                    secret = v.pop("secret")["secretName"]
                    v["hostPath"] = {"path": secret_dirs[secret], "type": "Directory"}
                    notes.append(f"{name}: volume {v['name']} (Secret {secret}) -> read-only hostPath of its files (kube play 4.3 crashes on Secret volumes)")
                if name == "stylefarm-worker" and v["name"] == "cache":
                    v.pop("emptyDir", None)
                    v["hostPath"] = {"path": weights_dir, "type": "Directory"}
                    notes.append(f"{name}: volume cache -> read-only hostPath {weights_dir} (the weights; no PyPI from a container here)")
                    for c in pod["containers"]:
                        for m in c.get("volumeMounts", []):
                            if m["name"] == "cache":
                                m["readOnly"] = True
        out.append(o)
    return out, notes


def create_secret(secret):
    """Makes the podman secret a Secret's env references read: podman 4.3 reads
    a JSON object of base64-encoded values (and stores what kube play makes
    from a Secret as YAML, which it then cannot read)."""
    data = {k: base64.b64encode(v.encode()).decode() for k, v in secret.get("stringData", {}).items()}
    data.update(secret.get("data", {}))
    subprocess.run(["podman", "secret", "create", secret["metadata"]["name"], "-"], input=json.dumps(data), text=True, check=True,
                   capture_output=True)


def client(args, *rest, capture=True, quiet=False):
    cmd = [args.client, "--coordinator", f"https://localhost:{COORD_PORT}", "--tls-ca", args.tls_ca, "--token-file", args.token_file, *rest]
    out = subprocess.PIPE if capture else (subprocess.DEVNULL if quiet else None)
    return subprocess.run(cmd, check=True, text=True, stdout=out).stdout


HEALTH = {"stylefarm-coordinator": ["stylefarm-coordinator", "health"], "stylefarm-worker": ["stylefarm-worker", "health"]}


def serving(line):
    """A running container that answers what its gRPC probes would ask
    (podman 4.3 runs no gRPC probes and no image HEALTHCHECK under kube play,
    so the same gRPC health check runs through `podman exec`)."""
    name, status = line.split(" ", 1)
    if not status.startswith("Up"):
        return False
    command = next((c for prefix, c in HEALTH.items() if name.startswith(prefix + "-")), None)
    return command is None or subprocess.run(["podman", "exec", name, *command], capture_output=True).returncode == 0


def wait_healthy(expected, seconds):
    """Waits until a serving container exists for each name in `expected`
    (repeated names: that many)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        r = subprocess.run(["podman", "ps", "--format", "{{.Names}} {{.Status}}"], text=True, capture_output=True)
        lines = [l for l in r.stdout.splitlines() if l.startswith("stylefarm-")]
        ready = [l for l in lines if serving(l)]
        if all(sum(1 for l in ready if l.startswith(n + "-")) >= expected.count(n) for n in set(expected)):
            return lines
        time.sleep(2)
    sys.exit("kube play: not serving within %d s:\n%s" % (seconds, r.stdout))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--overlay", default="deploy/k8s/overlays/cpu")
    p.add_argument("--weights", required=True, help="the model cache with weights/ in it")
    p.add_argument("--work", required=True)
    p.add_argument("--samples", default=".samples")
    p.add_argument("--client", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "debug", "stylefarm"))
    args = p.parse_args()
    os.makedirs(args.work, exist_ok=True)
    cache = os.path.dirname(os.path.abspath(args.weights.rstrip("/")))

    rendered = sh("kubectl", "kustomize", args.overlay, capture_output=True).stdout
    objects = [o for o in yaml.safe_load_all(rendered) if o]
    # as an operator would: deploy/k8s/bootstrap.sh makes the Secrets (here with
    # this checkout's stylefarm-coordinator; nothing is applied: no cluster)
    boot = os.path.join(args.work, "bootstrap")
    bin_dir = os.path.dirname(os.path.abspath(args.client))
    env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""), STYLEFARM_EXTRA_HOSTS=f"{HOST},localhost")
    sh("bash", "deploy/k8s/bootstrap.sh", "--dry-run", "--namespace", "default", "--out", boot, env=env, capture_output=True)
    boot_secrets = [o for o in yaml.safe_load_all(open(os.path.join(boot, "secrets.yaml"))) if o]
    secret_dirs = {}
    for secret in boot_secrets:
        name = secret["metadata"]["name"]
        secret_dirs[name] = os.path.join(args.work, "secret-files", name)
        os.makedirs(secret_dirs[name], exist_ok=True)
        for key, value in secret.get("data", {}).items():
            path = os.path.join(secret_dirs[name], key)
            with open(path, "wb") as f:
                f.write(base64.b64decode(value))
            os.chmod(path, 0o644)  # the containers' user reads them (this test's host files are root's)
    args.tls_ca = os.path.join(boot, "admin", "ca.crt")
    played, notes = adapt(objects, cache, secret_dirs)
    print(f"rendered {args.overlay}: " + ", ".join(f"{o['kind']} {o['metadata']['name']}" for o in objects))
    for n in notes:
        print("  adapted: " + n)
    # as an operator would: the Secrets first (bootstrap.sh, above), then the
    # coordinator and the store, then the workers
    workers = [o for o in played if o["metadata"]["name"] == "stylefarm-worker"]
    store_cm = [o for o in played if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "stylefarm-store"]
    first = os.path.join(args.work, "coordinator-and-store.yaml")
    second = os.path.join(args.work, "workers.yaml")
    secrets = [o for o in played if o["kind"] == "Secret"]
    with open(first, "w") as f:
        yaml.safe_dump_all([o for o in played if o not in workers and o not in secrets], f, sort_keys=False)

    def down():
        for manifest in (second, first):
            if os.path.exists(manifest):
                subprocess.run(["podman", "kube", "down", manifest], capture_output=True)
        # pods a failed play left behind
        subprocess.run("podman pod ls --format '{{.Name}}' | grep -E '^stylefarm-(coordinator|s3|worker)-pod-' | xargs -r podman pod rm -f -t 5",
                       shell=True, capture_output=True)
        for name in ("stylefarm-coordinator-state", "stylefarm-s3-data"):
            subprocess.run(["podman", "volume", "rm", "-f", name], capture_output=True)
        for name in ["stylefarm-s3"] + list(secret_dirs):
            subprocess.run(["podman", "secret", "rm", name], capture_output=True)

    down()
    try:
        start = time.time()
        for secret in secrets + boot_secrets:
            create_secret(secret)
        sh("podman", "kube", "play", first, capture_output=True)
        lines = wait_healthy(["stylefarm-coordinator", "stylefarm-s3"], 120)
        coord = next(l.split()[0] for l in lines if "stylefarm-coordinator" in l)

        # a submit token made in the coordinator's pod (the workers' came from bootstrap.sh)
        submit = sh("podman", "exec", coord, "stylefarm-coordinator", "token", "create", "--role", "submit", "--name", "kube-play",
                    capture_output=True).stdout.strip()
        args.token_file = os.path.join(args.work, "submit.token")
        with open(args.token_file, "w") as f:
            f.write(submit + "\n")
        with open(second, "w") as f:
            yaml.safe_dump_all(store_cm + workers, f, sort_keys=False)
        sh("podman", "kube", "play", second, capture_output=True)
        lines = wait_healthy(["stylefarm-coordinator", "stylefarm-s3", "stylefarm-worker", "stylefarm-worker"], 180)
        print(f"kube play: coordinator, store and two workers up and healthy in {time.time() - start:.0f} s:")
        for l in lines:
            print("  " + l)
        s = args.samples
        start = time.time()
        batch = client(args, "submit", "--name", "kube-play", "--content", f"{s}/chelsea.png", f"{s}/coffee.png",
                       "--style", f"{s}/ihc.png", "--size", "128", "--iterations", "30", "--preset", "gatys", "--init", "content").strip()
        client(args, "watch", batch, capture=False, quiet=True)
        status = json.loads(client(args, "status", batch, "--json"))
        on = sorted({j["worker_id"] for j in status["jobs"]})
        print(f"batch {batch}: {status['batch']['state']} in {time.time() - start:.0f} s, jobs on workers {on}")
        if status["batch"]["state"] != "succeeded":
            sys.exit(f"kube play: batch {batch} ended {status['batch']['state']}")
        fetched = os.path.join(args.work, "fetched")
        client(args, "fetch", batch, "--out", fetched)
        outputs = [d for d in os.listdir(fetched) if os.path.getsize(os.path.join(fetched, d, "output.png")) > 1024]
        if len(outputs) != 2:
            sys.exit(f"kube play: fetched {outputs}")
        print(f"kube play: {len(outputs)} outputs fetched through the coordinator from the store pod")
    except subprocess.CalledProcessError as e:
        subprocess.run("podman ps -a --format '{{.Names}}' | grep stylefarm- | grep -v infra | xargs -rn1 podman logs --tail 15", shell=True)
        sys.exit(f"kube play: {e.cmd} failed: {e.stderr or ''}")
    finally:
        down()

if __name__ == "__main__":
    main()
