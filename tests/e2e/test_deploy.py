"""The deployment files (deploy/, docs/deploy.md) parse, and agree with the programs they run:
every `moela serve` command line is accepted by the real binary's argument parser, every router
command line by the router's own, the probes hit `/health` on the served port, and each grace
period covers the drain. (No container engine or cluster here: this is what can be checked.)
"""

import re
import shlex
import subprocess

import pytest
import yaml

from conftest import ROOT, binary

DEPLOY = ROOT / "deploy"


def load(name: str) -> list:
    return list(yaml.safe_load_all((DEPLOY / name).read_text()))


def flag(args: list, name: str) -> str:
    return args[args.index(name) + 1]


def moela_serve(args: list) -> list:
    """Checks `moela ARGS` (a `serve` command line) against the real parser: with a model that
    does not exist it must fail on the model (exit 1), not on the arguments (clap exits 2)."""
    assert args[0] == "serve", args
    missing = str(ROOT / "no-such-model")
    r = subprocess.run([binary(), *args, "--model", missing], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "no-such-model" in r.stderr, (args, r.returncode, r.stderr)
    return args


def router_args(args: list):
    """The router's own parser over ARGS (argparse exits on an unknown or invalid option)."""
    try:
        from sglang_router.launch_router import parse_router_args
    except ImportError:
        pytest.fail("sglang-router is not installed: pip install -r tests/e2e/requirements.txt")
    try:
        return parse_router_args(args)
    except SystemExit:
        pytest.fail(f"the router rejects {args}")


def pinned_router() -> str:
    pins = [line for line in (ROOT / "tests/e2e/requirements.txt").read_text().splitlines()
            if line.startswith("sglang-router==")]
    assert len(pins) == 1
    return pins[0]


def test_router_image_runs_the_tested_router():
    assert f"pip install --no-cache-dir {pinned_router()}" in (DEPLOY / "router.Dockerfile").read_text()


def test_compose_file():
    (compose,) = load("compose.yaml")
    services = compose["services"]
    replicas = {name: s for name, s in services.items() if s.get("image") == "moela:local"}
    assert sorted(replicas) == ["moela-1", "moela-2"]
    for s in replicas.values():
        args = moela_serve(s["command"])
        port = flag(args, "--port")
        assert s["healthcheck"]["test"][-1] == f"http://127.0.0.1:{port}/health"
        assert s["stop_signal"] == "SIGTERM"
        grace = int(s["stop_grace_period"].removesuffix("s"))
        assert grace > int(flag(args, "--drain-timeout"))
    router = services["router"]
    ra = router_args(router["command"])
    assert ra.policy == "cache_aware"
    assert sorted(ra.worker_urls) == sorted(f"http://{n}:{flag(s['command'], '--port')}" for n, s in replicas.items())
    assert all(router["depends_on"][n]["condition"] == "service_healthy" for n in replicas)
    scrape = {job["job_name"]: job["static_configs"][0]["targets"] for job in load("prometheus.yml")[0]["scrape_configs"]}
    assert scrape["moela"] == [url.removeprefix("http://") for url in ra.worker_urls]
    assert scrape["moela-router"] == [f"router:{ra.prometheus_port}"]


def test_kubernetes_manifest():
    docs = load("k8s.yaml")
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert {d["metadata"].get("namespace", "moela") for d in docs} == {"moela"}
    moela = by[("Deployment", "moela")]["spec"]["template"]
    (c,) = moela["spec"]["containers"]
    args = moela_serve(c["args"])
    port = int(flag(args, "--port"))
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == port
    probe = c["readinessProbe"]["httpGet"]
    assert probe["path"] == "/health" and ports[probe["port"]] == port
    assert moela["spec"]["terminationGracePeriodSeconds"] >= int(flag(args, "--drain-timeout"))
    notes = moela["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true" and int(notes["prometheus.io/port"]) == port
    assert notes["prometheus.io/path"] == "/metrics"

    router = by[("Deployment", "moela-router")]["spec"]["template"]
    (rc,) = router["spec"]["containers"]
    ra = router_args(rc["args"])
    assert ra.policy == "cache_aware" and ra.service_discovery
    assert ra.service_discovery_port == port and ra.service_discovery_namespace == "moela"
    assert ra.selector.items() <= moela["metadata"]["labels"].items()
    notes = router["metadata"]["annotations"]
    assert int(notes["prometheus.io/port"]) == ra.prometheus_port
    # The router may read the pods it discovers.
    account = router["spec"]["serviceAccountName"]
    binding = by[("RoleBinding", account)]
    assert binding["subjects"][0]["name"] == account
    (rule,) = by[("Role", binding["roleRef"]["name"])]["rules"]
    assert rule["resources"] == ["pods"] and {"list", "watch"} <= set(rule["verbs"])
    service = by[("Service", "moela-router")]["spec"]
    assert service["selector"].items() <= router["metadata"]["labels"].items()


def shell_commands(text: str) -> list:
    """The command lines of the ```sh blocks of a Markdown file (`\\` continuations joined)."""
    out = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip().rstrip("&").strip()
            if line and not line.startswith("#"):
                out.append(shlex.split(line))
    return out


def test_deploy_doc_command_lines():
    commands = shell_commands((ROOT / "docs/deploy.md").read_text())
    serves = [c[2:] for c in commands if c[:2] == ["moela", "serve"]]
    routers = [c[3:] for c in commands if c[:3] == ["python", "-m", "sglang_router.launch_router"]]
    assert serves and routers
    for args in serves:
        if "--model" in args:  # a placeholder: moela_serve supplies a path of its own
            i = args.index("--model")
            args = args[:i] + args[i + 2:]
        moela_serve(["serve", *args])
    for args in routers:
        assert router_args(args).policy == "cache_aware"
    assert any(c[:3] == ["pip", "install", pinned_router()] for c in commands)
