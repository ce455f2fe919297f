"""Validates the objects `helm template` rendered, for deploy/helm/check.

Built-in kinds go through the `kubernetes-validate` CLI (strict, the given Kubernetes
version). Custom resources are validated with jsonschema against the schemas in
--schemas, found by apiVersion and kind; a custom resource without one is an error.
Prints one line: the objects rendered, by kind. Exit status 1 on any invalid object.
"""

import argparse
import collections
import json
import os
import subprocess
import sys

import jsonschema
import yaml

BUILTIN_GROUPS = {"v1", "apps/v1", "policy/v1", "networking.k8s.io/v1", "batch/v1"}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kube-version", required=True)
    parser.add_argument("--schemas", required=True)
    parser.add_argument("rendered")
    args = parser.parse_args()

    with open(args.rendered) as f:
        objects = [o for o in yaml.safe_load_all(f) if o]
    if not objects:
        print("nothing rendered", file=sys.stderr)
        return 1

    ok = True
    builtins, custom = [], []
    for o in objects:
        (builtins if o.get("apiVersion") in BUILTIN_GROUPS else custom).append(o)

    # Named after the rendered file, so errors say which values file it came from.
    builtin_file = args.rendered.removesuffix(".yaml") + ".builtin.yaml"
    with open(builtin_file, "w") as f:
        yaml.safe_dump_all(builtins, f)
    try:
        cli = os.path.join(os.path.dirname(sys.executable), "kubernetes-validate")
        result = subprocess.run(
            [cli, "--strict", "-k", args.kube_version, builtin_file],
            capture_output=True,
            text=True,
        )
        # It reports schema problems and missing schemas per object, one line each.
        lines = (result.stdout + result.stderr).splitlines()
        bad = [l for l in lines if not l.startswith("INFO")]
        if result.returncode != 0 or bad:
            ok = False
            print("\n".join(bad), file=sys.stderr)
    finally:
        os.unlink(builtin_file)

    for o in custom:
        group_version, kind = o.get("apiVersion", ""), o.get("kind", "")
        path = os.path.join(
            args.schemas, f"ours-{group_version.replace('/', '-')}-{kind}.json"
        )
        name = f"{kind}/{o.get('metadata', {}).get('name')}"
        if not os.path.exists(path):
            ok = False
            print(f"{name}: no schema for {group_version} {kind}", file=sys.stderr)
            continue
        with open(path) as f:
            schema = json.load(f)
        errors = sorted(
            jsonschema.Draft202012Validator(schema).iter_errors(o), key=lambda e: e.path
        )
        for e in errors:
            ok = False
            where = "/".join(str(p) for p in e.absolute_path)
            print(f"{name}: {where}: {e.message}", file=sys.stderr)

    kinds = collections.Counter(o["kind"] for o in objects)
    print(
        f"{len(objects)} objects ("
        + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
        + ")"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
