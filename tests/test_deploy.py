"""deploy/kubernetes: untested on a cluster, so checked here against the server itself: its
arguments parse, the probes ask the health service it serves, the ports agree."""
from __future__ import annotations

import pytest

from server.app import SERVICE_NAME, build_parser
from tests.conftest import ROOT

yaml = pytest.importorskip("yaml")

MANIFEST = ROOT / "deploy" / "kubernetes" / "trademark-search.yaml"


@pytest.fixture(scope="module")
def docs() -> dict[str, dict]:
    loaded = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    by_kind = {d["kind"]: d for d in loaded}
    assert len(by_kind) == len(loaded)  # one of each kind
    return by_kind


def test_the_server_accepts_the_containers_arguments(docs):
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "server"]
    args = build_parser().parse_args(container["args"])  # exits on an unknown flag
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[str(args.index)]["readOnly"] is True
    assert args.host == "0.0.0.0" and args.watch and args.watch > 0 and args.mmap
    assert str(args.token_file.parent) in mounts
    volumes = {v["name"] for v in pod["volumes"]}
    assert {m["name"] for m in container["volumeMounts"]} <= volumes
    # The pod is given longer to stop than the server gives its calls.
    assert pod["terminationGracePeriodSeconds"] > args.grace
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": args.port, "metrics": args.metrics_port}


def test_probes_ask_the_servers_health_service(docs):
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    args = build_parser().parse_args(container["args"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc_probe = container[probe]["grpc"]
        assert grpc_probe["port"] == args.port
        assert grpc_probe.get("service", "") in ("", SERVICE_NAME)  # server.app.add_health
    assert container["readinessProbe"]["grpc"]["service"] == SERVICE_NAME


def test_the_service_is_headless_and_selects_the_replicas(docs):
    service, deployment = docs["Service"], docs["Deployment"]
    assert service["spec"]["clusterIP"] == "None"  # DNS lists every replica: client-side balancing
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert docs["PodDisruptionBudget"]["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    claim = docs["PersistentVolumeClaim"]["metadata"]["name"]
    assert {v.get("persistentVolumeClaim", {}).get("claimName") for v in
            deployment["spec"]["template"]["spec"]["volumes"]} >= {claim}
