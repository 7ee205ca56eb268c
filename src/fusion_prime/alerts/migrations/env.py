from fusion_prime.platform.migrations import run_env

run_env()
