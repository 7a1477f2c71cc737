#!/usr/bin/env python3
"""Checks rendered Kubernetes manifests (one multi-document YAML file per
argument) for what every Huitou workload must have: gRPC probes on the
services, resource requests and limits, and a locked-down securityContext.
Exits 1 listing every problem."""

import sys

import yaml

WORKLOADS = {"Deployment", "StatefulSet", "Job"}


def pod_spec(obj):
    spec = obj["spec"]["template"]["spec"]
    return spec


def check(obj, problems):
    kind, name = obj["kind"], obj["metadata"]["name"]
    where = f"{kind}/{name}"
    spec = pod_spec(obj)
    psc = spec.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True:
        problems.append(f"{where}: pod securityContext.runAsNonRoot must be true")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{where}: pod seccompProfile must be RuntimeDefault")
    if spec.get("automountServiceAccountToken") is not False:
        problems.append(f"{where}: automountServiceAccountToken must be false")
    huitou = obj["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "huitou"
    for c in spec["containers"]:
        cw = f"{where} container {c['name']}"
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{cw}: allowPrivilegeEscalation must be false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{cw}: readOnlyRootFilesystem must be true")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{cw}: capabilities must drop ALL")
        res = c.get("resources", {})
        for part in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in res.get(part, {}):
                    problems.append(f"{cw}: resources.{part}.{r} missing")
        if kind == "Deployment" and huitou:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if "grpc" not in c.get(probe, {}):
                    problems.append(f"{cw}: {probe} must be a native gRPC probe")
            if "preStop" not in c.get("lifecycle", {}):
                problems.append(f"{cw}: a preStop hook must cover endpoint removal")
            if spec.get("terminationGracePeriodSeconds", 30) < 26:
                problems.append(f"{where}: terminationGracePeriodSeconds must exceed the 25 s drain")
        elif kind == "StatefulSet":
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in c:
                    problems.append(f"{cw}: {probe} missing")


def main():
    problems, seen = [], 0
    for path in sys.argv[1:]:
        with open(path, encoding="utf-8") as f:
            for obj in yaml.safe_load_all(f):
                if obj and obj.get("kind") in WORKLOADS:
                    seen += 1
                    check(obj, problems)
    if seen == 0:
        problems.append("no workloads found")
    for p in problems:
        print(f"FAIL: {p}")
    if problems:
        sys.exit(1)
    print(f"{seen} workloads: probes, resources and securityContext in order")


if __name__ == "__main__":
    main()
