"""`python -m tests.platform.bus.consumerapp [--port N]`: serve the test consumer."""

import argparse

from fusion_prime.platform.runner import run_service
from tests.platform.bus.consumerapp import SPEC

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, default=None)
parser.add_argument("--migrate", action="store_true")
args = parser.parse_args()
run_service(SPEC, port=args.port, migrate=args.migrate)
