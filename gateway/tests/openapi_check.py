"""Checks real admin API answers against gateway/openapi/admin.json.

Usage: openapi_check.py DOCUMENT ANSWERS, where ANSWERS is a JSON list of
{method, path, status, body}. Each answer's status must be documented for its
operation and its body must validate against that response's schema (JSON Schema
2020-12, as OpenAPI 3.1 uses). Exit 1 with one line per mismatch.
"""

import json
import sys

import jsonschema


def main(document_path, answers_path):
    with open(document_path) as f:
        document = json.load(f)
    with open(answers_path) as f:
        answers = json.load(f)
    problems = []
    for answer in answers:
        where = f"{answer['method'].upper()} {answer['path']} → {answer['status']}"
        operation = document["paths"].get(answer["path"], {}).get(answer["method"])
        if operation is None:
            problems.append(f"{where}: operation not documented")
            continue
        response = operation["responses"].get(str(answer["status"]))
        if response is None:
            problems.append(f"{where}: status not documented")
            continue
        schema = dict(response["content"]["application/json"]["schema"])
        schema["components"] = document["components"]
        validator = jsonschema.Draft202012Validator(schema)
        for error in validator.iter_errors(answer["body"]):
            problems.append(f"{where}: {error.json_path}: {error.message}")
    for problem in problems:
        print(problem)
    print(f"{len(answers)} answers checked, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
