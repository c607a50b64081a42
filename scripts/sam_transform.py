"""Runs the SAM transform (aws-sam-translator, which AWS's own transform is built
from) on template.yaml with the given parameter values, as `sam deploy` would have
CloudFormation do, and fails with the translator's message if it refuses the template.

Usage: python sam_transform.py template.yaml Name=Value ...
"""
import json
import os
import sys

import boto3
from samtranslator.parser.parser import Parser
from samtranslator.translator.managed_policy_translator import ManagedPolicyLoader
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse


class NoManagedPolicies(ManagedPolicyLoader):
    """The template names no managed policies (a test holds that); no IAM calls."""

    def __init__(self):
        pass

    def load(self):
        return {}


def main():
    path, *pairs = sys.argv[1:]
    parameters = dict(p.split("=", 1) for p in pairs)
    with open(path) as f:
        template = yaml_parse(f.read())
    # As `sam package` leaves it: code in S3.
    template["Globals"]["Function"]["CodeUri"] = "s3://packaged/statefun-lambda.zip"
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    boto3.setup_default_session(region_name="us-east-1")
    out = transform(template, parameters, NoManagedPolicies(), Parser())
    functions = [n for n, r in out["Resources"].items() if r["Type"] == "AWS::Lambda::Function"]
    print(f"{path} {' '.join(pairs)}: transformed; {len(out['Resources'])} resources, "
          f"functions {', '.join(sorted(functions))}")
    json.dumps(out)


if __name__ == "__main__":
    main()
