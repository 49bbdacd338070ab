"""The Kubernetes manifests in deploy/ are valid and cannot drift from the code they run.

Every YAML document parses; core objects build into the official `kubernetes` client's models with no field the
models do not know; the InferencePool and HTTPRoute carry the fields of the API versions deploy/README.md names;
every `reg` command line parses with the CLI itself (and each flag is in its `--help`); the tokens Secret is a
tokens file `server/tokens.py` loads, holding the hash of each client token with the roles its user needs; probes,
ports and metric annotations point at routes and services the servers really have.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import typer
import yaml

kubernetes_models = pytest.importorskip("kubernetes.client.models", reason="the `kubernetes` client (dev extra)")

from cli.main import app as reg_app
from cli.main import main as reg_main
from registry.remote.rpc import pb as registry_pb
from server.auth import OPEN_ROUTES, ROLE_FOR_ROUTE
from server.metrics import KV_CACHE_USAGE_METRIC, LORA_INFO_METRIC, METRICS_PATH, QUEUED_REQUESTS_METRIC
from server.tokens import load_tokens_file

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
YAML_FILES = sorted(DEPLOY.rglob("*.yaml"))
KUSTOMIZATIONS = [path for path in YAML_FILES if path.name == "kustomization.yaml"]
OVERLAYS = sorted(path.parent for path in KUSTOMIZATIONS if path.parent.parent.name == "overlays")
MANIFESTS = [path for path in YAML_FILES if path.name != "kustomization.yaml"]
# The objects themselves; an overlay's files are patches of them (and its namespace).
OBJECT_FILES = [path for path in MANIFESTS if "overlays" not in path.relative_to(DEPLOY).parts]

# The API versions deploy/README.md says the router manifests target, and the fields each spec may hold
# (InferencePool: gateway-api-inference-extension api/v1/inferencepool_types.go, release v1.0).
INFERENCE_POOL_API = "inference.networking.k8s.io/v1"
INFERENCE_POOL_SPEC_KEYS = {"selector", "targetPorts", "appProtocol", "endpointPickerRef"}
INFERENCE_POOL_REQUIRED = {"selector", "targetPorts", "endpointPickerRef"}
ENDPOINT_PICKER_REF_KEYS = {"group", "kind", "name", "port", "failureMode"}
HTTP_ROUTE_API = "gateway.networking.k8s.io/v1"
HTTP_ROUTE_SPEC_KEYS = {"parentRefs", "hostnames", "rules"}
CUSTOM_KINDS = {"InferencePool": INFERENCE_POOL_API, "HTTPRoute": HTTP_ROUTE_API}
GPU = "nvidia.com/gpu"
REGISTRY_SERVICE = registry_pb.DESCRIPTOR.services_by_name["Registry"].full_name
# Each client token (a key of loradock-client-tokens) -> the roles its user needs.
CLIENT_TOKEN_ROLES = {"inference-replica": {"read", "push"}, "worker": {"worker", "read", "push"},
                      "client": {"infer"}}
# The client's type names for scalars (`bytes`: Secret.data, base64 text in YAML; `datetime`: RFC 3339 text).
PRIMITIVES = {"str": str, "bytes": str, "datetime": str, "int": int, "float": (int, float), "bool": bool}


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def all_objects() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in OBJECT_FILES for doc in documents(path)]


def objects_of(kind: str) -> list[dict]:
    return [doc for _, doc in all_objects() if doc["kind"] == kind]


def named(kind: str, name: str) -> dict:
    matches = [doc for doc in objects_of(kind) if doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name!r} in deploy/, found {len(matches)}"
    return matches[0]


def build_model(data, type_name: str, where: str):
    """`data` as the client's model `type_name`, refusing any key the model does not declare (the client's own
    `deserialize` drops unknown keys silently, so a typo such as `readinesProbe` would pass it)."""
    if data is None:
        return None
    # The client has spelt its container types both ways: `List[str]`/`Dict[str, str]` and `list[str]`/`dict[str, str]`.
    if (item_type := re.fullmatch(r"[Ll]ist\[(.*)\]", type_name)):
        assert isinstance(data, list), f"{where}: expected a list, got {data!r}"
        return [build_model(item, item_type.group(1), f"{where}[{i}]") for i, item in enumerate(data)]
    if (value_type := re.fullmatch(r"[Dd]ict\[str, (.*)\]", type_name)):
        assert isinstance(data, dict), f"{where}: expected a mapping, got {data!r}"
        return {key: build_model(value, value_type.group(1), f"{where}.{key}") for key, value in data.items()}
    if type_name == "object":
        return data  # IntOrString and quantities: the API server parses these
    if type_name in PRIMITIVES:
        assert isinstance(data, PRIMITIVES[type_name]), f"{where}: expected {type_name}, got {data!r}"
        return data
    model = getattr(kubernetes_models, type_name)
    assert isinstance(data, dict), f"{where}: expected an object ({type_name}), got {data!r}"
    by_json_name = {json_name: attr for attr, json_name in model.attribute_map.items()}
    unknown = sorted(set(data) - set(by_json_name))
    assert not unknown, f"{where}: {type_name} has no field(s) {unknown}"
    kwargs = {by_json_name[key]: build_model(value, model.openapi_types[by_json_name[key]], f"{where}.{key}")
              for key, value in data.items()}
    return model(**kwargs)  # the model's setters raise on a missing required field


def model_name(doc: dict) -> str:
    version = doc["apiVersion"].rpartition("/")[2]
    return f"{version[0].upper()}{version[1:]}{doc['kind']}"


def containers() -> list[tuple[str, dict]]:
    return [(doc["metadata"]["name"], container) for doc in objects_of("Deployment")
            for container in doc["spec"]["template"]["spec"]["containers"]]


def reg_containers() -> list[tuple[str, dict]]:
    return [(name, c) for name, c in containers() if (c.get("command") or [None])[0] == "reg"]


def option_value(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{argv}: no {flag}"
    return argv[argv.index(flag) + 1]


def reg_command_tree():
    """The `reg` group as typer builds it (its own vendored click), the tree `reg --help` prints."""
    return typer.main.get_command(reg_app)


def cli_envvars(command) -> set[str]:
    names = {p.envvar for p in command.params if isinstance(p.envvar, str)}
    for sub in getattr(command, "commands", {}).values():
        names |= cli_envvars(sub)
    return names


def test_deploy_ships_base_overlays_and_router():
    assert (DEPLOY / "README.md").is_file()
    assert (DEPLOY / "base" / "kustomization.yaml").is_file()
    assert OVERLAYS, "deploy/overlays/ holds no overlay"


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_document_parses_as_an_object(path):
    docs = documents(path)
    assert docs, f"{path}: no YAML document"
    for doc in docs:
        assert isinstance(doc, dict) and doc.get("apiVersion") and doc.get("kind"), f"{path}: {doc!r}"
        if path.name != "kustomization.yaml":
            assert doc.get("metadata", {}).get("name"), f"{path}: a {doc['kind']} without metadata.name"


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_core_objects_build_into_the_clients_models_with_no_unknown_field(path):
    for doc in documents(path):
        if doc["kind"] in CUSTOM_KINDS:
            continue
        where = f"{path.relative_to(DEPLOY)}: {doc['kind']} {doc['metadata']['name']}"
        assert hasattr(kubernetes_models, model_name(doc)), f"{where}: no client model {model_name(doc)}"
        build_model(doc, model_name(doc), where)


def test_kustomizations_name_files_and_objects_that_exist():
    names = {(doc["kind"], doc["metadata"]["name"]) for _, doc in all_objects()}
    for kustomization in KUSTOMIZATIONS:
        spec, folder = documents(kustomization)[0], kustomization.parent
        for entry in spec.get("resources", []):
            target = folder / entry
            assert target.is_file() or (target / "kustomization.yaml").is_file(), f"{kustomization}: {entry} missing"
        for patch in spec.get("patches", []):
            patched = documents(folder / patch["path"])[0]
            assert (patched["kind"], patched["metadata"]["name"]) in names, f"{kustomization}: {patch} patches nothing"
        for replica in spec.get("replicas", []):
            assert ("Deployment", replica["name"]) in names, f"{kustomization}: no Deployment {replica['name']}"
        used_images = {c["image"].partition(":")[0] for _, c in containers()}
        for image in spec.get("images", []):
            assert image["name"] in used_images, f"{kustomization}: image {image['name']} is used by no container"
    listed = {(k.parent / entry).resolve() for k in KUSTOMIZATIONS for entry in documents(k)[0].get("resources", [])}
    listed |= {(k.parent / p["path"]).resolve() for k in KUSTOMIZATIONS for p in documents(k)[0].get("patches", [])}
    unlisted = [str(p.relative_to(DEPLOY)) for p in MANIFESTS if p.resolve() not in listed]
    assert not unlisted, f"manifests no kustomization lists: {unlisted}"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (for `kubectl kustomize`) is not installed")
@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_each_overlay_renders_into_valid_objects(overlay):
    rendered = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, check=False)
    assert rendered.returncode == 0, rendered.stderr
    docs = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    namespace = documents(overlay / "kustomization.yaml")[0]["namespace"]
    for doc in docs:
        where = f"{overlay.name}: {doc['kind']} {doc['metadata']['name']}"
        if doc["kind"] not in CUSTOM_KINDS:
            build_model(doc, model_name(doc), where)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, where


def test_inference_pool_targets_the_inference_pods_and_an_endpoint_picker():
    [pool] = objects_of("InferencePool")
    assert pool["apiVersion"] == INFERENCE_POOL_API
    spec = pool["spec"]
    assert INFERENCE_POOL_REQUIRED <= set(spec) <= INFERENCE_POOL_SPEC_KEYS, sorted(spec)
    inference = named("Deployment", "loradock-inference")
    assert spec["selector"]["matchLabels"] == inference["spec"]["template"]["metadata"]["labels"]
    [port] = spec["targetPorts"]
    [container] = inference["spec"]["template"]["spec"]["containers"]
    assert port["number"] == int(option_value(container["command"], "--http-port"))
    picker = spec["endpointPickerRef"]
    assert set(picker) <= ENDPOINT_PICKER_REF_KEYS and picker.get("kind", "Service") == "Service"
    assert picker["failureMode"] in ("FailOpen", "FailClose")
    service = named("Service", picker["name"])
    assert picker["port"]["number"] in [p["port"] for p in service["spec"]["ports"]]
    epp = named("Deployment", picker["name"])
    assert service["spec"]["selector"] == epp["spec"]["template"]["metadata"]["labels"]
    assert option_value(epp["spec"]["template"]["spec"]["containers"][0]["args"], "--pool-name") == pool["metadata"]["name"]


def test_endpoint_picker_scrapes_the_metrics_port_for_the_gauges_a_server_exports():
    """The picker's metric flags name what server/metrics.py exports (tests/test_server_metrics.py scrapes a real
    server's --metrics-port for them), on the replicas' --metrics-port."""
    [epp] = named("Deployment", "loradock-epp")["spec"]["template"]["spec"]["containers"]
    [replica] = named("Deployment", "loradock-inference")["spec"]["template"]["spec"]["containers"]
    args = epp["args"]
    assert option_value(args, "--model-server-metrics-port") == option_value(replica["command"], "--metrics-port")
    assert option_value(args, "--total-queued-requests-metric") == QUEUED_REQUESTS_METRIC
    assert option_value(args, "--kv-cache-usage-percentage-metric") == KV_CACHE_USAGE_METRIC
    assert option_value(args, "--lora-info-metric") == LORA_INFO_METRIC


def test_http_route_sends_openai_paths_to_the_pool():
    [route] = objects_of("HTTPRoute")
    assert route["apiVersion"] == HTTP_ROUTE_API
    assert set(route["spec"]) <= HTTP_ROUTE_SPEC_KEYS and route["spec"]["parentRefs"]
    [pool] = objects_of("InferencePool")
    backends = [ref for rule in route["spec"]["rules"] for ref in rule["backendRefs"]]
    assert backends == [{"group": INFERENCE_POOL_API.partition("/")[0], "kind": "InferencePool",
                         "name": pool["metadata"]["name"]}]
    prefixes = [m["path"]["value"] for rule in route["spec"]["rules"] for m in rule["matches"]]
    assert all(route_key.split(" ")[1].startswith(tuple(prefixes)) for route_key in ROLE_FOR_ROUTE
               if route_key.split(" ")[1].startswith("/v1/"))


@pytest.mark.parametrize("deployment,container", [pytest.param(*pair, id=pair[0]) for pair in reg_containers()])
def test_every_reg_command_parses_with_the_cli(deployment, container):
    """Parse each command line with the real click tree (an unknown flag or a bad value fails here), then look
    for each flag in `reg VERB --help`, the same text a user reads."""
    argv = container["command"][1:] + container.get("args", [])
    group = reg_command_tree()
    verb_at = next((i for i, word in enumerate(argv) if word in group.commands), None)
    assert verb_at is not None, f"{deployment}: {argv} names no reg command"
    with group.make_context("reg", argv[:verb_at + 1]) as ctx:  # with the verb: a bare `reg` only prints help
        verb = argv[verb_at]
        with group.commands[verb].make_context(verb, argv[verb_at + 1:], parent=ctx):
            pass


@pytest.mark.parametrize("deployment,container", [pytest.param(*pair, id=pair[0]) for pair in reg_containers()])
def test_every_flag_appears_in_its_help(deployment, container, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich wraps help to the terminal; wide enough to keep each flag whole
    argv = container["command"][1:]
    verb_at = next(i for i, word in enumerate(argv) if word in reg_command_tree().commands)
    for help_args, words in ([], argv[:verb_at]), ([argv[verb_at]], argv[verb_at + 1:]):
        capsys.readouterr()
        assert reg_main([*help_args, "--help"]) == 0
        text = capsys.readouterr().out
        for flag in (word for word in words if word.startswith("--")):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), f"{deployment}: {flag} not in reg {help_args} --help"


def test_environment_names_are_ones_the_cli_reads():
    known = cli_envvars(reg_command_tree())
    config = named("ConfigMap", "loradock-config")
    names = set(config["data"])
    for _, container in reg_containers():
        names |= {env["name"] for env in container.get("env", [])}
    assert names <= known, f"not read by any reg option: {sorted(names - known)}"


def test_registry_url_in_config_is_the_registry_service():
    service = named("Service", "loradock-registry")
    url = named("ConfigMap", "loradock-config")["data"]["LORADOCK_REGISTRY"]
    assert url == f"grpc://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    for name, container in reg_containers():
        if "--registry" in container["command"]:
            assert option_value(container["command"], "--registry") == url, name


def test_registry_keeps_its_home_on_a_volume_claim_and_probes_grpc_health():
    registry = named("Deployment", "loradock-registry")
    pod = registry["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert registry["spec"]["replicas"] == 1 and registry["spec"]["strategy"]["type"] == "Recreate"
    home = option_value(container["command"], "--home")
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == home]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    named("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    port = int(option_value(container["command"], "--port"))
    for probe in (container["readinessProbe"], container["livenessProbe"]):
        assert probe["grpc"] == {"port": port, "service": REGISTRY_SERVICE}


def test_inference_replicas_request_a_gpu_probe_health_and_are_scraped():
    inference = named("Deployment", "loradock-inference")
    template = inference["spec"]["template"]
    [container] = template["spec"]["containers"]
    http_port = int(option_value(container["command"], "--http-port"))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == http_port and ports["grpc"] == int(option_value(container["command"], "--port"))
    for probe in (container["readinessProbe"], container["startupProbe"]):
        assert f"GET {probe['httpGet']['path']}" in OPEN_ROUTES and probe["httpGet"]["port"] == "http"
    annotations = template["metadata"]["annotations"]
    metrics_port = int(option_value(container["command"], "--metrics-port"))
    assert ports["metrics"] == metrics_port != http_port  # scraped where no token is asked (server.metrics)
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == metrics_port
    assert annotations["prometheus.io/path"] == METRICS_PATH
    assert option_value(container["command"], "--auth-tokens").startswith(
        next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "auth-tokens"))


@pytest.mark.parametrize("name", ["loradock-inference", "loradock-worker"])
def test_gpu_pods_request_and_limit_one_gpu(name):
    [container] = named("Deployment", name)["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["requests"][GPU] == "1" and container["resources"]["limits"][GPU] == "1"


def test_tokens_secret_is_a_tokens_file_holding_each_client_tokens_hash(tmp_path):
    path = tmp_path / "tokens.yaml"
    path.write_text(named("Secret", "loradock-auth-tokens")["stringData"]["tokens.yaml"])
    entries = {entry.sha256: entry for entry in load_tokens_file(path)}
    clients = named("Secret", "loradock-client-tokens")["stringData"]
    assert set(clients) == set(CLIENT_TOKEN_ROLES)
    for key, token in clients.items():
        entry = entries.get(hashlib.sha256(token.encode()).hexdigest())
        assert entry is not None, f"client token {key!r} has no hash in the tokens file"
        assert all(entry.allows(role) for role in CLIENT_TOKEN_ROLES[key]), f"{key}: roles {sorted(entry.roles)}"
    for name, container in reg_containers():
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == "loradock-client-tokens" and ref["key"] in clients, name


def test_the_registry_pod_may_create_and_watch_the_jobs_the_kubernetes_executor_makes():
    """The executor (trainer/jobs/executors/kubernetes.py) creates, reads and deletes Jobs and lists their Pods; the
    registry pod, where `reg job submit --executor kubernetes` runs, has a ServiceAccount bound to exactly that."""
    [registry_pod] = [named("Deployment", "loradock-registry")["spec"]["template"]["spec"]]
    account = registry_pod["serviceAccountName"]
    named("ServiceAccount", account)
    [binding] = [b for b in objects_of("RoleBinding") if {"kind": "ServiceAccount", "name": account} in b["subjects"]]
    role = named("Role", binding["roleRef"]["name"])
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    needed = {("batch", "jobs", verb) for verb in ("create", "get", "delete")} | {("", "pods", "list")}
    assert needed <= granted, sorted(needed - granted)
    assert {resource for _, resource, _ in granted} == {"jobs", "pods"}  # nothing more
