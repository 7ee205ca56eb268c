"""`fusion-prime audit`: the static checks that would have caught the incident.

Modules: model (rules, findings), credentials, pycode (Python via ast), deploy (Cloud Build
YAML and shell via PyYAML and shlex), terraform (python-hcl2), engine (file walk and the
cross-file rules), report (table, JSON, SARIF), cli.
"""
