#!/usr/bin/env python3
"""Validates every manifest under deploy/ offline against the Kubernetes schemas.

Every YAML document under deploy/ is one of:
  - a Kubernetes resource: validated strictly (unknown fields are errors) against the
    schemas kubernetes-validate ships, for KUBERNETES_VERSION;
  - a resource of a known CRD group (Istio, the Prometheus operator) or a Kustomization: no
    schema ships for it;
    listed, and checked structurally by tests/e2e/deploy.rs;
  - a file that is not a resource at all (Envoy's bootstrap, Helm values, a patch): listed
    in NOT_RESOURCES with the reason.
Anything else fails. Then each overlay is built the way kustomize would for the patches
this repository uses (`$patch: delete`, strategic merges of maps, JSON 6902 patches on a
target kind and name, ConfigMap generators),
and every resource it yields is validated strictly too, so a patch that breaks a
Deployment fails here rather than at `kubectl apply`.
"""
import copy
import sys
from pathlib import Path

import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.33.0"
ROOT = Path(__file__).resolve().parent
CRD_GROUPS = (
    "networking.istio.io/",
    "extensions.istio.io/",
    "kustomize.config.k8s.io/",
    "monitoring.coreos.com/",
)
NOT_RESOURCES = {
    "kubernetes/envoy-bootstrap.yaml": "Envoy's bootstrap, loaded by `make validate`'s Envoy",
    "istio/egressgateway-values.yaml": "Helm values for istio/gateway",
    "istio/egressgateway-env-patch.yaml": "a strategic-merge patch for kubectl patch",
    "observability/prometheus/bridle-rules.yaml": "Prometheus rule groups, for rule_files",
}
OVERLAYS = ["kubernetes", "istio", "replicas"]


def docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def validate(doc, where, errors):
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        return True
    except kubernetes_validate.ValidationError as e:
        errors.append(f"{where}: {e.message} at {'/'.join(map(str, e.path))}")
    except kubernetes_validate.SchemaNotFoundError:
        errors.append(f"{where}: no Kubernetes schema for {doc.get('apiVersion')} {doc.get('kind')}")
    return False


def pointer(path):
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def json_patch(doc, ops):
    for op in ops:
        *parents, last = pointer(op["path"])
        node = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if op["op"] == "remove":
            del node[int(last) if isinstance(node, list) else last]
        elif isinstance(node, list):
            if last == "-":
                node.append(op["value"])
            elif op["op"] == "add":
                node.insert(int(last), op["value"])
            else:
                node[int(last)] = op["value"]
        elif op["op"] in ("add", "replace"):
            if op["op"] == "replace" and last not in node:
                raise KeyError(f"replace of missing {op['path']}")
            node[last] = op["value"]
        else:
            raise ValueError(f"unsupported op {op['op']}")


def merge(doc, patch):
    """A strategic merge of maps (the only kind used here: labels); lists are replaced."""
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            merge(doc[key], value)
        else:
            doc[key] = value


def build(directory):
    """The resources a kustomization yields, for the patch kinds used here."""
    k = docs(directory / "kustomization.yaml")[0]
    out = []
    for r in k.get("resources", []):
        p = directory / r
        out += build(p) if p.is_dir() else [copy.deepcopy(d) for d in docs(p)]
    for gen in k.get("configMapGenerator", []):
        data = {}
        for f in gen.get("files", []):
            key, _, rel = f.rpartition("=")
            data[key or Path(rel).name] = (directory / rel).read_text()
        out.append({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": gen["name"]}, "data": data})
    for patch in k.get("patches", []):
        body = yaml.safe_load(patch["patch"])
        if isinstance(body, dict) and body.get("$patch") == "delete":
            gone = (body["kind"], body["metadata"]["name"])
            before = len(out)
            out = [d for d in out if (d["kind"], d["metadata"]["name"]) != gone]
            if len(out) == before:
                raise KeyError(f"{directory}: deletes {gone}, which no resource is")
        elif isinstance(body, list):
            target = patch["target"]
            hits = [d for d in out if d["kind"] == target["kind"]
                    and d["metadata"]["name"] == target["name"]]
            if not hits:
                raise KeyError(f"{directory}: patches {target}, which no resource is")
            for d in hits:
                json_patch(d, body)
        elif isinstance(body, dict) and "kind" in body:
            hits = [d for d in out if (d["kind"], d["metadata"]["name"])
                    == (body["kind"], body["metadata"]["name"])]
            if not hits:
                raise KeyError(f"{directory}: patches {body['kind']} {body['metadata']['name']}, which no resource is")
            for d in hits:
                merge(d, {k: v for k, v in body.items() if k not in ("apiVersion", "kind", "metadata")})
                merge(d["metadata"], {k: v for k, v in body["metadata"].items() if k != "namespace"})
        else:
            raise ValueError(f"{directory}: a patch kind this check does not build")
    namespace = k.get("namespace")
    for d in out:
        if namespace and d["kind"] != "Namespace":
            d.setdefault("metadata", {})["namespace"] = namespace
    return out


def main():
    errors, resources, skipped = [], 0, []
    for path in sorted(ROOT.rglob("*.yaml")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in NOT_RESOURCES:
            skipped.append(f"{rel} ({NOT_RESOURCES[rel]})")
            continue
        for i, d in enumerate(docs(path)):
            where = f"{rel}#{i}"
            api = str(d.get("apiVersion", ""))
            if not api or "kind" not in d:
                errors.append(f"{where}: not a resource, and not listed in NOT_RESOURCES")
            elif api.startswith(CRD_GROUPS):
                skipped.append(f"{where} ({d['kind']}: no schema ships for {api})")
            elif validate(d, where, errors):
                resources += 1
    built = 0
    for overlay in OVERLAYS:
        try:
            for d in build(ROOT / overlay):
                if not str(d.get("apiVersion", "")).startswith(CRD_GROUPS):
                    built += validate(d, f"{overlay} (built) {d['kind']}/{d['metadata']['name']}", errors)
        except (KeyError, ValueError, IndexError, TypeError) as e:
            errors.append(f"{overlay}: cannot build: {e}")
    if skipped:
        print("not validated against Kubernetes schemas (no schema ships for them):")
        for s in skipped:
            print(f"  {s}")
    for e in errors:
        print(f"INVALID {e}", file=sys.stderr)
    print(f"{resources} resources and {built} built from {len(OVERLAYS)} overlays valid "
          f"against Kubernetes {KUBERNETES_VERSION} (strict); {len(errors)} invalid")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
