"""`python -m tests.platform.testapp [--port N] [--migrate]`: serve the test app."""

import argparse

from fusion_prime.platform.runner import run_service
from tests.platform.testapp import SPEC

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, default=None)
parser.add_argument("--migrate", action="store_true")
args = parser.parse_args()
run_service(SPEC, port=args.port, migrate=args.migrate)
