"""Parses a metrics exposition on stdin with the official Prometheus Python
client's parsers (`prometheus` text format 0.0.4, or `openmetrics`), as a
scraper would, and prints its samples as JSON: [{family, type, name, labels,
value}]. A malformed exposition raises (exit code 1, the parser's message)."""
import json
import sys

if sys.argv[1] == "openmetrics":
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
else:
    from prometheus_client.parser import text_string_to_metric_families

out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append({"family": family.name, "type": family.type, "name": s.name, "labels": s.labels, "value": s.value})
json.dump(out, sys.stdout)
